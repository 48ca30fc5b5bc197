"""Agreement end to end: an OpenTelemetry SDK app sampling at ratio r and an agent sampling at ratio r keep the same
traces, so the agent's own (kernel-observed) spans join exactly the traces the app exported.

The app uses the SDK's consistent sampler (`composite_sampler(composable_traceid_ratio_based(r))`) and exports only
what it sampled. For every request, sampled or not, the agent also receives a span observed in the kernel
(as the eBPF source hands it over), with the same trace id. With tail rules off, the backend must then hold exactly
the app's sampled traces, each with its kernel span, every span with the same `th`. With the error rule on, a failed
request the app did not sample is kept too, with `th` erased (its adjusted count is unknown).
"""
from __future__ import annotations

import asyncio
import random

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource as OtelResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace._sampling_experimental import composable_traceid_ratio_based, composite_sampler
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind as OtelKind

from edge.agent import Agent
from edge.config import parse_config
from edge.demo.broker import Mosquitto, free_port
from edge.demo.otlp_peer import OtlpPeer
from edge.model import Resource, Source, Span, SpanKind, StatusCode, new_span_id
from edge.sampler import encode_threshold, threshold_for_ratio
from uplink.gateway import Gateway

REQUESTS = 400


async def _until(pred, timeout: float = 20.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("ratio,tail", [(0.25, False), (0.1, True)])
async def test_agent_and_sdk_keep_the_same_traces(mosquitto: Mosquitto, otlp_peer: OtlpPeer, ratio: float,
                                                  tail: bool) -> None:
    grpc_port = free_port()
    cfg = parse_config({
        "node": {"id": "node-agree"},
        "sources": {"mqtt": {"enabled": False}, "otlp": {"grpc_listen": f"127.0.0.1:{grpc_port}", "http_listen": ""},
                    "ebpf": {"enabled": False}},
        "uplink": {"broker": mosquitto.url, "batch_max_age": "200ms", "spool_dir": ""},
        "sampler": {"ratio": ratio, "tail": tail, "new_route_traces": 0, "decision_wait": "300ms"},
        "metrics": {"listen": "", "export_interval": 0},
        "gateway": {"broker": mosquitto.url, "state_dir": "", "http_listen": "", "export_endpoint": otlp_peer.grpc_endpoint},
    })
    stop = asyncio.Event()
    gateway = Gateway(cfg.gateway)
    agent = Agent(cfg)
    tasks = [asyncio.create_task(gateway.run(stop)), asyncio.create_task(agent.run(stop))]
    try:
        await asyncio.wait_for(gateway.ready.wait(), 15)
        await asyncio.wait_for(agent.started.wait(), 15)

        provider = TracerProvider(sampler=composite_sampler(composable_traceid_ratio_based(ratio)),
                                  resource=OtelResource.create({"service.name": "shop"}))
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracer = provider.get_tracer("agreement")
        rng = random.Random(17)
        kernel: list[Span] = []
        failed: set[bytes] = set()
        for _ in range(REQUESTS):
            with tracer.start_as_current_span("GET /api/items/{id}", kind=OtelKind.SERVER) as root:
                ctx = root.get_span_context()
            tid = ctx.trace_id.to_bytes(16, "big")
            status = 503 if rng.random() < 0.05 else 200
            if status == 503:
                failed.add(tid)
            kernel.append(Span(tid, new_span_id(), "GET /api/items/{id}", 1_000, 2_000_000,
                               parent_span_id=ctx.span_id.to_bytes(8, "big"), kind=SpanKind.SERVER,
                               attributes={"http.route": "/api/items/{id}", "http.response.status_code": status},
                               resource=Resource.of({"service.name": "shop"}), source=Source.EBPF))
        sdk_spans = memory.get_finished_spans()
        sampled = {s.context.trace_id.to_bytes(16, "big") for s in sdk_spans}
        assert 0 < len(sampled) < REQUESTS and len(sdk_spans) == len(sampled)
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{grpc_port}", insecure=True)
        await asyncio.to_thread(exporter.export, sdk_spans)
        agent.submit(kernel, Source.EBPF)

        expected = sampled | (failed if tail else set())
        want = len(sdk_spans) + len(expected)
        await _until(lambda: len(otlp_peer.spans()) >= want, what=f"{want} spans at the OTLP peer")
        await asyncio.sleep(0.5)  # nothing more may come
        exporter.shutdown()
        provider.shutdown()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)

    got = otlp_peer.spans()
    assert len(got) == want
    got_kernel = [s for s in got if s.attributes.get("helix.source") == "ebpf"]
    assert {s.trace_id for s in got_kernel} == expected
    assert {s.trace_id for s in got if s.attributes.get("helix.source") != "ebpf"} == sampled
    th = encode_threshold(threshold_for_ratio(ratio))
    for s in got:
        if s.trace_id in sampled:
            assert s.trace_state == f"ot=th:{th}", "the agent writes the same threshold the SDK wrote"
        else:
            assert s.trace_id in failed and s.trace_state == "", "kept by the error rule: th erased"
    if tail:
        assert failed - sampled, "the run must include failed requests the SDK did not sample"
        assert agent.sampler.tail.stats.decisions["error"] == len(failed - sampled)
