"""The kernel source leaves out the tracing pipeline's own traffic, over HTTP/1 and gRPC alike."""
from __future__ import annotations

from edge.model import Source, Span, SpanKind
from edge.sources.ebpf.config import EbpfSourceConfig
from edge.sources.ebpf.source import EbpfSource


def _span(path: str) -> Span:
    return Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name=path.rsplit("/", 1)[-1], start_ns=1, end_ns=2,
                kind=SpanKind.CLIENT, attributes={"url.path": path}, source=Source.EBPF)


def _grpc_span(service: str, method: str) -> Span:
    # As the HTTP/2 span builder makes them: the call named by rpc.service and rpc.method, no url.path
    return Span(trace_id=b"\x01" * 16, span_id=b"\x03" * 8, name=f"{service}/{method}", start_ns=1, end_ns=2,
                kind=SpanKind.SERVER, attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
                source=Source.EBPF)


def test_otlp_exports_over_grpc_and_http_are_not_traced_and_are_counted() -> None:
    got: list[Span] = []

    def sink(spans: list[Span], source: Source) -> int:
        got.extend(spans)
        return len(spans)

    src = EbpfSource(EbpfSourceConfig(), sink, own_pid=0)
    src._emit([_grpc_span("opentelemetry.proto.collector.trace.v1.TraceService", "Export"), _span("/v1/traces"),
               _grpc_span("inventory.Stock", "Get"), _span("/stock")])
    assert [s.name for s in got] == ["inventory.Stock/Get", "stock"]
    assert src.stats.ignored_own_traffic == 2


def test_the_timed_flush_reads_the_ring_buffer_first() -> None:
    # A record written before the flush's time but not yet read (the reader polls every 250 ms) can be the end of a
    # message the flush would otherwise settle by time: the flush reads the ring first, at a time taken before.
    import time

    calls: list[tuple[str, int]] = []

    class _Stream:
        def poll(self) -> int:
            calls.append(("poll", time.clock_gettime_ns(time.CLOCK_MONOTONIC)))
            return 0

    src = EbpfSource(EbpfSourceConfig(), lambda spans, source: len(spans), own_pid=0)
    src.stream = _Stream()  # type: ignore[assignment]

    class _Builder:
        def flush(self, now: int) -> list[Span]:
            calls.append(("flush", now))
            return []

    src.builder = _Builder()  # type: ignore[assignment]
    src.flush_expired()
    assert [c for c, _ in calls] == ["poll", "flush"] and calls[1][1] <= calls[0][1]
