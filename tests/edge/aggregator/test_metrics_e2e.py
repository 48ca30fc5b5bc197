"""RED metrics through the whole path: agent → MQTT uplink → gateway → OTLP metrics at the OTLP peer, exact."""
from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from bench._workload import realistic_spans
from edge.agent import Agent
from edge.codec.otlp import request_from_spans
from edge.codec.otlp_metrics import metrics_from_request
from edge.config import parse_config
from edge.demo.broker import Mosquitto, free_port
from edge.demo.otlp_peer import OtlpPeer
from edge.model import SpanKind, StatusCode
from uplink.gateway import Gateway


async def _until(pred, timeout: float = 20.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _red_from_peer(peer: OtlpPeer) -> dict[tuple[str, str], tuple[int, int, int, int]] | None:
    """From the newest metrics export: (requests, errors, histogram count, histogram sum in ns) per (service, kind)."""
    if not peer.metric_requests:
        return None
    batch = metrics_from_request(peer.metric_requests[-1])
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in batch.resources:
        svc = r.resource.service_name
        for m in r.metrics:
            if not m.name.startswith("helix.red."):
                continue
            for p in m.points:
                row = out[(svc, p.attributes["span.kind"])]
                if m.name == "helix.red.requests":
                    row[0] += p.value
                elif m.name == "helix.red.errors":
                    row[1] += p.value
                else:
                    row[2] += p.count
                    row[3] += round(p.sum * 1e9)
    return {k: tuple(v) for k, v in out.items()}  # type: ignore[misc]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_red_counts_reach_the_backend_exactly_with_sampling_on(mosquitto: Mosquitto, otlp_peer: OtlpPeer,
                                                                     protocol: str) -> None:
    http_port = free_port()
    cfg = parse_config({
        "node": {"id": "node-red"},
        "sources": {"mqtt": {"enabled": False}, "otlp": {"grpc_listen": "", "http_listen": f"127.0.0.1:{http_port}"},
                    "ebpf": {"enabled": False}},
        "uplink": {"broker": mosquitto.url, "batch_max_age": "200ms", "spool_dir": ""},
        "sampler": {"ratio": 0.1},  # RED must count everything, not the tenth that is kept
        "metrics": {"listen": "", "export_interval": "300ms"},
        "gateway": {"broker": mosquitto.url, "state_dir": "", "http_listen": "", "export_protocol": protocol,
                    "export_endpoint": otlp_peer.grpc_endpoint if protocol == "grpc" else otlp_peer.http_endpoint},
    })
    spans = realistic_spans(300, seed=21)
    expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for s in spans:
        kind = {SpanKind.SERVER: "server", SpanKind.CLIENT: "client"}.get(s.kind)
        if kind is None:
            continue
        row = expected[(s.resource.service_name, kind)]
        row[0] += 1
        row[1] += s.status_code == StatusCode.ERROR or s.attributes.get("http.response.status_code", 0) >= 500
        row[2] += 1
        row[3] += s.end_ns - s.start_ns
    want = {k: tuple(v) for k, v in expected.items()}

    stop = asyncio.Event()
    gateway = Gateway(cfg.gateway)
    agent = Agent(cfg)
    tasks = [asyncio.create_task(gateway.run(stop)), asyncio.create_task(agent.run(stop))]
    try:
        await asyncio.wait_for(gateway.ready.wait(), 15)
        await asyncio.wait_for(agent.started.wait(), 15)
        import aiohttp

        async with aiohttp.ClientSession() as http:
            for i in range(0, len(spans), 200):
                body = request_from_spans(spans[i:i + 200]).SerializeToString()
                async with http.post(f"http://127.0.0.1:{http_port}/v1/traces", data=body,
                                     headers={"Content-Type": "application/x-protobuf"}) as resp:
                    assert resp.status == 200
        await _until(lambda: _red_from_peer(otlp_peer) == want, what="exact RED metrics at the OTLP peer")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    assert sum(v[1] for v in want.values()) > 0
    assert gateway.metric_stats["exported"] >= 1 and gateway.metric_stats["malformed"] == 0
    # Far fewer spans reached the backend than the metrics counted: sampling and RED are independent.
    assert len(otlp_peer.spans()) < len(spans) / 2
    # The health metrics travelled too.
    names = {m.name for req in otlp_peer.metric_requests[-1:] for rm in req.resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert {"helix.agent.spans.accepted", "helix.agent.spans.dropped", "helix.agent.memory.rss"} <= names
