"""Nothing is acknowledged that the uplink cannot keep: with the gateway unreachable and the spool full, the agent's
pipeline waits on the uplink, its inbox fills and OTLP clients are answered busy (503), and every span that was
answered 200 reaches the backend once the gateway is back. Real agent, real gateway, OTLP/HTTP as an SDK sends it."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from bench._workload import realistic_spans
from edge.agent import Agent
from edge.codec.otlp import request_from_spans
from edge.config import parse_config
from edge.demo.broker import free_port
from edge.demo.otlp_peer import OtlpPeer
from uplink.gateway import Gateway

from ...uplink._helpers import until


async def test_a_full_spool_makes_the_door_busy_and_loses_nothing_acknowledged(otlp_peer: OtlpPeer,
                                                                               tmp_path: Path) -> None:
    http_port, gw_port = free_port(), free_port()
    cfg = parse_config({
        "node": {"id": "node-full"},
        "sources": {"mqtt": {"enabled": False}, "otlp": {"grpc_listen": "", "http_listen": f"127.0.0.1:{http_port}"},
                    "ebpf": {"enabled": False}},
        "assembler": {"window": "100ms"},
        # No table-set learning: its sample and sets count against the memory plan, which this test process is far
        # over, and would shrink the queue so that the door answers busy before the spool is full.
        "uplink": {"transport": "http", "url": f"http://127.0.0.1:{gw_port}/v1/batches", "batch_max_age": "50ms",
                   "spool_dir": str(tmp_path / "spool"), "spool_max_bytes": "64KiB", "queue_max_bytes": "64KiB",
                   "retry_max_backoff": "200ms", "learn_interval": "0s"},
        "gateway": {"mqtt_enabled": False, "state_dir": "", "http_listen": f"127.0.0.1:{gw_port}",
                    "export_endpoint": otlp_peer.grpc_endpoint},
    })
    traces: dict[bytes, list] = {}
    for s in realistic_spans(3000, seed=91):
        traces.setdefault(s.trace_id, []).append(s)
    groups = list(traces.values())
    acked: set[bytes] = set()
    busy = 0
    stop, stop_gw = asyncio.Event(), asyncio.Event()
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run(stop))
    gw_task: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(agent.started.wait(), 15)
        url = f"http://127.0.0.1:{http_port}/v1/traces"
        async with aiohttp.ClientSession() as s:
            for i in range(0, len(groups), 20):
                spans = [sp for g in groups[i:i + 20] for sp in g]
                body = request_from_spans(spans, source_attribute=False).SerializeToString()
                async with s.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}) as resp:
                    if resp.status == 200:
                        acked.update(sp.span_id for sp in spans)
                    else:
                        assert resp.status == 503
                        busy += 1
                        if busy >= 3:
                            break
                        await asyncio.sleep(0.5)
        assert busy >= 3, "the door never answered busy"
        st = agent.uplink.stats
        assert st.spool_blocked == 1 and not agent.uplink.can_accept(1024)
        assert st.dropped_queue_full == st.dropped_spool_error == st.spool_evicted_spans == 0
        gw_task = asyncio.create_task(Gateway(cfg.gateway).run(stop_gw))
        # Every span answered 200 goes through the sampler (which, in this test process far over the agent's memory
        # limit, samples harder: the governor's first step) and each one it kept reaches the backend.
        sampler = agent.sampler.stats
        await until(lambda: sampler.kept + sampler.dropped == len(acked), timeout=60, what="every span decided")
        await until(lambda: len(acked & {sp.span_id for sp in otlp_peer.spans()}) == sampler.kept, timeout=90,
                    what="every span kept at the backend")
        await until(lambda: agent.uplink.stats.spans_confirmed == sampler.kept > 0, timeout=30,
                    what="every batch confirmed")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)
        stop_gw.set()
        if gw_task is not None:
            await asyncio.wait_for(asyncio.gather(gw_task, return_exceptions=True), 15)
    # No span answered 200 was then dropped in the agent (a partial refusal would show here).
    assert sum(agent.inbox.stats.dropped_full.values()) == 0
