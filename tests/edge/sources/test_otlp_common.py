"""Every OTLP request under max_request is taken, answered busy while the pipeline holds other spans, or refused as
too large with a non-retryable answer that says why: never a retryable refusal forever."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench._workload import realistic_spans
from edge.agent.inbox import SpanInbox
from edge.codec.otlp import request_from_spans
from edge.model import Source, Span
from edge.sources.otlp_common import OtlpIngest
from edge.sources.otlp_grpc import EXPORT_PATH, OtlpGrpcReceiver
from edge.sources.otlp_http import OtlpHttpReceiver

MiB = 1 << 20
# The inbox the governor plans at the default memory.limit (44 MiB): 12 % of ~18 MiB of headroom.
INBOX = int(2.1 * MiB)


def _fill(inbox: SpanInbox, leave: int) -> None:
    """Queue spans until only `leave` bytes are free."""
    spans = realistic_spans(200, seed=3)
    i = 0
    while inbox.max_bytes - inbox.bytes > leave:
        inbox.put([spans[i % len(spans)]], Source.SDK_MQTT)
        i += 1


def _ingest() -> tuple[OtlpIngest, SpanInbox]:
    inbox = SpanInbox(INBOX)
    return OtlpIngest(inbox.put, inbox.has_room, door=inbox, ceiling=lambda: INBOX), inbox


def _request(wire_bytes: int) -> bytes:
    spans = realistic_spans(wire_bytes // 2000 + 1, seed=11)
    out = b""
    n = 1
    while len(out) < wire_bytes and n <= len(spans):
        n = min(len(spans), n * 2 if not out else max(n + 1, int(n * wire_bytes / max(1, len(out)))))
        out = request_from_spans(spans[:n]).SerializeToString()
    return out


async def _post(port: int, body: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    out = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    return int(out.split(b" ", 2)[1]), out.split(b"\r\n\r\n", 1)[1]


async def test_a_request_over_the_estimate_is_taken_by_its_real_size_when_the_inbox_is_empty() -> None:
    ingest, inbox = _ingest()
    receiver = OtlpHttpReceiver(ingest, "127.0.0.1", 0, 4 * MiB)
    await receiver.start()
    try:
        body = _request(370_000)  # six times its wire size is over the inbox; its spans are not
        assert 6 * len(body) > INBOX
        status, _ = await _post(receiver.port, body)
        assert status == 200 and ingest.stats.spans > 0 and inbox.bytes <= INBOX
        # The same request while the inbox holds other spans and has too little room: busy, retryable (503).
        inbox.drain()
        _fill(inbox, 300_000)
        status, _ = await _post(receiver.port, body)
        assert status == 503 and ingest.stats.dropped["busy"] == 1
        inbox.drain()
        # One whose spans alone would overflow the inbox: 413, not retryable, and it says why.
        big = _request(1_200_000)
        status, answer = await _post(receiver.port, big)
        assert status == 413 and b"smaller batches" in answer and ingest.stats.dropped["oversize"] == 1
        assert inbox.bytes == 0
    finally:
        await receiver.stop()


async def test_the_opentelemetry_sdk_exporter_gives_up_at_once_on_a_413() -> None:
    # The exporter at its defaults retries 429/502/503/504 with backoff until its 10 s timeout; a 413 it drops at
    # once, after one request: the refusal a client cannot loop on.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult

    ingest, _ = _ingest()
    receiver = OtlpHttpReceiver(ingest, "127.0.0.1", 0, 4 * MiB)
    await receiver.start()
    try:
        provider = TracerProvider()
        tracer = provider.get_tracer("t")
        spans = []
        for i in range(512):  # a default batch (OTEL_BSP_MAX_EXPORT_BATCH_SIZE) of spans with big attributes
            with tracer.start_as_current_span(f"op-{i}", attributes={"payload": "x" * 8000}) as s:
                pass
            spans.append(s)
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.port}/v1/traces")
        t0 = time.monotonic()
        result = await asyncio.to_thread(exporter.export, spans)
        assert result == SpanExportResult.FAILURE and time.monotonic() - t0 < 2.0
        assert ingest.stats.requests == 1 and ingest.stats.dropped["oversize"] == 1
        exporter.shutdown()
    finally:
        await receiver.stop()


async def test_grpc_too_large_is_resource_exhausted_and_busy_is_unavailable() -> None:
    ingest, inbox = _ingest()
    receiver = OtlpGrpcReceiver(ingest, "127.0.0.1", 0, 4 * MiB, max_wait=0.2)
    await receiver.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as ch:
            export = ch.unary_unary(EXPORT_PATH, request_serializer=None, response_deserializer=None)
            assert await export(_request(370_000), timeout=10) is not None
            inbox.drain()
            _fill(inbox, 300_000)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await export(_request(370_000), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # the inbox holds other spans: retry later
            inbox.drain()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await export(_request(1_200_000), timeout=10)
            # RESOURCE_EXHAUSTED without RetryInfo: not retryable per the OTLP specification.
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "smaller batches" in e.value.details()
    finally:
        await receiver.stop()


def test_decoding_stops_at_the_cap_before_the_rest_is_read() -> None:
    from edge.codec.otlp_wire import decode_export_request
    from edge.errors import OverBudget

    body = _request(400_000)
    spans = decode_export_request(body)
    whole = sum(s.approx_size() for s in spans)
    assert len(decode_export_request(body, max_bytes=whole)) == len(spans)
    with pytest.raises(OverBudget) as e:
        decode_export_request(body, max_bytes=whole // 10)
    assert whole // 10 < e.value.size < whole // 10 + 10_000


def test_a_shrunk_inbox_answers_busy_not_too_large() -> None:
    # Under memory pressure the inbox is below its plan: a request that would fit the plan must be retried, not
    # refused for good.
    got: list[Span] = []
    inbox = SpanInbox(INBOX // 4)
    ingest = OtlpIngest(lambda spans, source: inbox.put(spans, source) or got.extend(spans) or len(spans),
                        inbox.has_room, door=inbox, ceiling=lambda: INBOX)
    from edge.codec.otlp_wire import decode_export_request

    body = _request(300_000)
    result = ingest.ingest(lambda errors, cap: decode_export_request(body, Source.SDK_OTLP, errors, cap), len(body))
    assert result.busy and not result.too_large and got == []
    ExportTraceServiceRequest.FromString(body)  # a valid request all along
