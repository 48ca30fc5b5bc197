"""The agent with kernel sampling on: RED totals count every request although the kernel held most of them back.

A real Agent (ebpf enabled, head sampling at 0.25) while curl calls a real HTTP/1.1 server: the server's and
curl's exchanges that the kernel samples out never reach userspace as records, yet the aggregator's series, fed
from spans and from the kernel's aggregates, hold exactly the number of requests made, with the same series keys
as the span path would give them.
"""
from __future__ import annotations

import asyncio
import random
import shutil
import sys
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.config import Config, parse_config
from edge.demo.broker import Mosquitto
from edge.sampler.consistent import threshold_for_ratio

from .conftest import AGENT_START_GUARD_S, AGENT_STOP_GUARD_S, bpf_unavailable, running_agent
from .test_kernel_sampling import PAHO_SUB, App, curl, publish_traced, tp, trace_id

pytestmark = pytest.mark.bpf


def agent_config(mosquitto: Mosquitto, tmp_path: Path) -> Config:
    """The kernel source alone, sampling at 0.25, uplink to the test's broker."""
    return parse_config({
        "sources": {"mqtt": {"enabled": False}, "ebpf": {"enabled": "auto"},
                    "otlp": {"grpc_listen": "", "http_listen": ""}},
        "sampler": {"ratio": 0.25},
        "assembler": {"window": "1s"},
        "uplink": {"broker": mosquitto.url, "batch_max_age": "200ms", "spool_dir": str(tmp_path / "spool")},
    })


async def test_red_totals_cover_requests_sampled_out_in_the_kernel(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = agent_config(mosquitto, tmp_path)
    app = App()
    stop = asyncio.Event()
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.started.wait(), AGENT_START_GUARD_S)
        if agent.kernel.state != "running":
            bpf_unavailable(f"{agent.kernel.reason} ({agent.kernel.fix})")
        assert agent.ebpf.probes.sample_threshold() == threshold_for_ratio(0.25)
        made = {"/items/{id}": 0, "/fail": 0}
        for n in range(40):
            path = "/fail" if n % 4 == 0 else f"/items/{n}"
            # a third carry a traceparent (R from the wire), the rest none (R drawn by the kernel)
            headers = (tp(trace_id(n, n % 2 == 0)),) if n % 3 == 0 else ()
            await curl(f"http://127.0.0.1:{app.port}{path}", *headers)
            made["/fail" if path == "/fail" else "/items/{id}"] += 1

        def by_kind_route() -> dict[tuple[str, str], list[tuple[tuple[str, ...], tuple[int, int, int]]]]:
            out: dict[tuple[str, str], list[tuple[tuple[str, ...], tuple[int, int, int]]]] = {}
            for key, tot in agent.aggregator.totals().items():
                if key.route in made:
                    out.setdefault((key.kind, key.route), []).append((tuple(key), tot))
            return out

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            got = by_kind_route()
            if all(sum(t[0] for _, t in got.get((kind, route), [])) >= n for route, n in made.items()
                   for kind in ("server", "client")):
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.5)  # anything counted twice would show up by now
        got = by_kind_route()
        for route, n in made.items():
            errors = n if route == "/fail" else 0
            # one series per kind and route: the kernel's counts joined the spans' series, not a look-alike
            [(server_key, server)] = got[("server", route)]
            [(client_key, client)] = got[("client", route)]
            assert server[:2] == (n, errors) and client[:2] == (n, errors), (route, server, client)
            assert server_key[0] != "unknown_service" and server_key[3] == ""
            assert client_key[0] == "curl" and client_key[3] == "127.0.0.1"
        status = agent.status()["kernel"]
        # (machine-wide counters: other traced traffic may add to them)
        assert status["decisions"]["sampled_out"] > 0 and status["red_counted"] > 0, status
        # The span builder's counters reach the status and /metrics (machine-wide traffic may add to them).
        assert status["builder"]["http_spans"] > 0 and status["builder"]["events"] > 0, status["builder"]
        from edge.agent.metrics_http import health_metrics

        exported = {m.name: m for m in health_metrics(agent).metrics}
        unfinished = exported["helix.agent.kernel.exchanges.unfinished"]
        assert {p.attributes["reason"] for p in unfinished.points} == {"incomplete", "end_estimated",
                                                                       "unmatched_responses", "pending_dropped"}
        assert "helix.agent.kernel.messages.unparsed" in exported
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), AGENT_STOP_GUARD_S)
        app.stop()


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto_pub not installed")
async def test_red_totals_cover_publishes_and_receives_sampled_out_in_the_kernel(mosquitto: Mosquitto,
                                                                                 tmp_path: Path) -> None:
    """mosquitto_pub publishes through Mosquitto to a paho-mqtt subscriber (both at their defaults): the kernel holds
    back the publisher's, the broker's and the subscriber's side of three in four, yet the producer and consumer
    series count every message once, in the series the spans of the kept ones land in."""
    cfg = agent_config(mosquitto, tmp_path)
    topic, n = "plant/line2/pressure", 40
    async with running_agent(cfg) as agent:
        sub = await asyncio.create_subprocess_exec(sys.executable, "-c", PAHO_SUB, str(mosquitto.port),
                                                   stdout=asyncio.subprocess.PIPE)
        try:
            assert sub.stdout is not None
            assert (await asyncio.wait_for(sub.stdout.readline(), 15)).strip() == b"subscribed"
            for i in range(n):
                tid = f"{0x5EED0000 + i:018x}{random.getrandbits(56):014x}"
                await publish_traced(mosquitto.port, topic, f"m{i}", tid)
                await asyncio.sleep(0.01)
            for _ in range(n):
                await asyncio.wait_for(sub.stdout.readline(), 10)

            def totals() -> dict[str, list[tuple[tuple[str, ...], tuple[int, int, int]]]]:
                out: dict[str, list[tuple[tuple[str, ...], tuple[int, int, int]]]] = {}
                for key, tot in agent.aggregator.totals().items():
                    if key.route.endswith(topic):
                        out.setdefault(key.kind, []).append((tuple(key), tot))
                return out

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while loop.time() < deadline:
                got = totals()
                if all(sum(t[0] for _, t in got.get(kind, [])) >= n for kind in ("producer", "consumer")):
                    break
                await asyncio.sleep(0.25)
            await asyncio.sleep(1.5)  # anything counted twice would show up by now
            got = totals()
            [(consumer_key, consumer)] = got["consumer"]  # the kernel's counts joined the spans' series
            assert consumer[:2] == (n, 0) and consumer_key[2] == f"receive {topic}" and consumer_key[3] == ""
            assert {k[2] for k, _ in got["producer"]} == {f"publish {topic}"}
            assert sum(t[0] for _, t in got["producer"]) == n
            assert set(got) == {"producer", "consumer"}  # the broker adds no series
            status = agent.status()["kernel"]
            assert status["decisions"]["sampled_out"] > 0 and status["red_counted"] > 0, status
            assert status["decisions"]["broker_publish"] >= 2 * n, status  # read and written, never sent
        finally:
            sub.terminate()
            await sub.wait()
