"""The OTLP exporter against a real OTLP peer: retries, Retry-After, partial success, an endpoint that comes up late."""
from __future__ import annotations

import asyncio
import time

import pytest

from bench._workload import realistic_spans
from edge.aggregator import RedAggregator
from edge.config import GatewayConfig
from edge.demo.broker import free_port
from edge.demo.otlp_peer import OtlpPeer, Refusal
from edge.model import MetricBatch
from uplink.gateway.otlp_export import OtlpExporter


def _cfg(protocol: str, endpoint: str, **kw: object) -> GatewayConfig:
    args: dict[str, object] = {"export_timeout": 2.0, "retry_max_elapsed": 10.0, **kw}
    return GatewayConfig(export_protocol=protocol, export_endpoint=endpoint, **args)  # type: ignore[arg-type]


def _endpoint(peer: OtlpPeer, protocol: str) -> str:
    return peer.grpc_endpoint if protocol == "grpc" else peer.http_endpoint


async def test_http_429_retry_after_is_honoured(otlp_peer: OtlpPeer) -> None:
    otlp_peer.refuse(1, Refusal(http_status=429, retry_after_s=1))
    exporter = OtlpExporter(_cfg("http", otlp_peer.http_endpoint + "/v1/traces"))
    spans = realistic_spans(2, seed=1)
    t0 = time.monotonic()
    res = await exporter.export(spans)
    elapsed = time.monotonic() - t0
    await exporter.close()
    assert res.ok and res.attempts == 2 and otlp_peer.attempts == 2
    assert elapsed >= 0.95, f"retried after {elapsed:.2f}s despite Retry-After: 1"
    assert len(otlp_peer.spans()) == len(spans)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_partial_success_is_counted_not_retried(otlp_peer: OtlpPeer, protocol: str) -> None:
    otlp_peer.refuse(1, Refusal(rejected_spans=2))
    exporter = OtlpExporter(_cfg(protocol, _endpoint(otlp_peer, protocol)))
    spans = realistic_spans(1, seed=2)
    res = await exporter.export(spans)
    await exporter.close()
    assert res.ok and res.rejected == 2 and res.exported == len(spans) - 2
    assert "refused by the test peer" in res.error
    assert otlp_peer.attempts == 1 and exporter.stats.spans.rejected == 2


@pytest.mark.parametrize("protocol,refusal", [("grpc", Refusal("INVALID_ARGUMENT")), ("http", Refusal(http_status=400)),
                                              ("grpc", Refusal("RESOURCE_EXHAUSTED"))])
async def test_non_retryable_errors_drop_and_count(otlp_peer: OtlpPeer, protocol: str, refusal: Refusal) -> None:
    otlp_peer.refuse(1, refusal)
    exporter = OtlpExporter(_cfg(protocol, _endpoint(otlp_peer, protocol)))
    spans = realistic_spans(1, seed=3)
    res = await exporter.export(spans)
    await exporter.close()
    assert not res.ok and not res.retryable and otlp_peer.attempts == 1
    assert exporter.stats.spans.dropped == len(spans)


@pytest.mark.parametrize("protocol,refusal", [("grpc", Refusal("UNAVAILABLE")), ("grpc", Refusal("DEADLINE_EXCEEDED")),
                                              ("http", Refusal(http_status=503)), ("http", Refusal(http_status=502))])
async def test_retryable_errors_are_retried(otlp_peer: OtlpPeer, protocol: str, refusal: Refusal) -> None:
    otlp_peer.refuse(2, refusal)
    exporter = OtlpExporter(_cfg(protocol, _endpoint(otlp_peer, protocol)))
    res = await exporter.export(realistic_spans(1, seed=4))
    await exporter.close()
    assert res.ok and res.attempts == 3 and len(otlp_peer.requests) == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_endpoint_that_comes_up_late_gets_the_data(protocol: str) -> None:
    port = free_port()
    kw = {"grpc_port": port} if protocol == "grpc" else {"http_port": port}
    exporter = OtlpExporter(_cfg(protocol, f"http://127.0.0.1:{port}"))
    spans = realistic_spans(2, seed=5)
    task = asyncio.create_task(exporter.export(spans))
    await asyncio.sleep(0.6)
    assert not task.done()
    peer = await OtlpPeer(**kw).start()  # type: ignore[arg-type]
    try:
        res = await asyncio.wait_for(task, 10)
        assert res.ok and res.attempts >= 2
        assert {s.span_id for s in peer.spans()} == {s.span_id for s in spans}
    finally:
        await exporter.close()
        await peer.stop()


async def test_retry_budget_exhausted_is_reported_retryable() -> None:
    exporter = OtlpExporter(_cfg("http", f"http://127.0.0.1:{free_port()}", retry_max_elapsed=0.3))
    res = await exporter.export(realistic_spans(1, seed=6))
    await exporter.close()
    assert not res.ok and res.retryable and res.attempts >= 2 and "unreachable" in res.error


def _metrics(n_spans: int = 30) -> MetricBatch:
    agg = RedAggregator()
    agg.consume(realistic_spans(n_spans, seed=8))
    return MetricBatch("node-m", 1, 0, 1, agg.resource_metrics())


@pytest.mark.parametrize("protocol,refusal", [("grpc", Refusal("UNAVAILABLE")), ("http", Refusal(http_status=503))])
async def test_metrics_take_the_same_retry_path_and_counters(otlp_peer: OtlpPeer, protocol: str, refusal: Refusal,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    otlp_peer.metric_refusals.extend([refusal, refusal])
    exporter = OtlpExporter(_cfg(protocol, _endpoint(otlp_peer, protocol)))
    batch = _metrics()
    with caplog.at_level("WARNING", logger="uplink.gateway.otlp_export"):
        res = await exporter.export_metrics(batch)
    await exporter.close()
    assert res.ok and res.attempts == 3 and otlp_peer.metric_attempts == 3 and len(otlp_peer.metric_requests) == 1
    assert exporter.stats.retries == 2 and exporter.stats.failed_attempts == 2 and exporter.stats.metric_exports == 1
    assert exporter.stats.points.exported == batch.point_count() and exporter.stats.spans.exported == 0
    assert "OTLP metrics export to" in caplog.text and "retrying" in caplog.text


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_metrics_partial_success_and_refusal_are_counted_in_points(otlp_peer: OtlpPeer, protocol: str) -> None:
    otlp_peer.metric_refusals.extend([Refusal(rejected_spans=3), Refusal("INVALID_ARGUMENT", http_status=400)])
    exporter = OtlpExporter(_cfg(protocol, _endpoint(otlp_peer, protocol)))
    batch = _metrics()
    n = batch.point_count()
    partial = await exporter.export_metrics(batch)
    refused = await exporter.export_metrics(batch)
    await exporter.close()
    assert partial.ok and partial.rejected == 3 and partial.exported == n - 3
    assert not refused.ok and not refused.retryable
    st = exporter.stats.as_dict()
    assert (st["points_exported"], st["points_rejected"], st["points_dropped"], st["spans_dropped"]) == (n - 3, 3, n, 0)
