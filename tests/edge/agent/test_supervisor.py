"""A failing part of the agent is restarted with backoff and counted; only a stop or a FatalError stops the agent."""
from __future__ import annotations

import asyncio
import logging

import pytest

from edge.agent import Agent
from edge.agent.supervisor import Supervisor
from edge.config import parse_config
from edge.errors import FatalError


async def test_a_failing_part_is_restarted_with_backoff_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor(initial=0.05, maximum=0.2, log_every=60.0)
    runs: list[float] = []
    loop = asyncio.get_running_loop()

    async def flaky() -> None:
        runs.append(loop.time())
        if len(runs) < 5:
            raise RuntimeError(f"bug #{len(runs)}")
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, "edge.agent.supervisor"):
        sup.start("flaky", flaky)
        while len(runs) < 5:
            await asyncio.sleep(0.01)
    assert sup.stats.restarts == {"flaky": 4} and sup.stats.last_error["flaky"] == "RuntimeError: bug #4"
    gaps = [b - a for a, b in zip(runs, runs[1:])]
    assert all(g >= 0.02 for g in gaps) and gaps[-1] >= gaps[0]  # backoff, growing (jitter within [d/2, d])
    # Logged once with its traceback; the other failures within the minute only counted.
    lines = [r for r in caplog.records if "flaky failed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is not None
    assert not sup.fatal.done()
    await sup.stop()
    assert all(t.done() for t in sup.tasks)


async def test_a_fatal_error_stops_and_a_finished_part_is_done() -> None:
    sup = Supervisor(initial=0.01)

    async def done() -> None:
        return

    async def fatal() -> None:
        raise FatalError("the spool disk is gone")

    sup.start("done", done)
    sup.start("fatal", fatal)
    with pytest.raises(FatalError, match="spool disk"):
        await asyncio.wait_for(sup.fatal, 5)
    assert sup.stats.restarts == {"done": 0, "fatal": 0}
    await sup.stop()


async def test_the_agent_survives_a_failing_pipeline_and_still_stops_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config({"node": {"id": "sup"}, "sources": {"ebpf": {"enabled": False}, "mqtt": {"enabled": False},
                                                           "otlp": {"grpc_listen": "", "http_listen": ""}},
                        "metrics": {"listen": "", "export_interval": 0},
                        "uplink": {"transport": "http", "spool_dir": ""}})
    agent = Agent(cfg)
    calls = {"n": 0}
    real = agent.assembler.process

    def breaks_twice(spans, flush=False):  # a bug a hostile span could trigger in a stage
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ValueError("a stage bug")
        return real(spans, flush=flush)

    monkeypatch.setattr(agent.assembler, "process", breaks_twice)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.started.wait(), 10)
    async with asyncio.timeout(10):
        while agent.status()["tasks"]["restarts"].get("pipeline", 0) < 2 or calls["n"] < 4:
            await asyncio.sleep(0.05)
    assert not task.done()  # still running after the failures
    stop.set()
    await asyncio.wait_for(task, 15)  # and stops on the signal, cleanly
    assert agent.status()["tasks"]["restarts"]["pipeline"] == 2


async def test_a_retained_poison_span_does_not_crash_loop_the_agent(mosquitto, tmp_path) -> None:
    # The field case: one ~5 KB device span, retained, whose start time has 5,000 digits. Every agent on the broker
    # reads it at every start; each must count it and run on.
    import subprocess

    import cbor2

    from edge.codec.sdk_cbor import Key

    poison = cbor2.dumps({0: 1, 3: [{Key.TRACE_ID: b"\x01" * 16, Key.SPAN_ID: b"\x02" * 8, Key.NAME: "x",
                                     Key.START: 10**5000, Key.DURATION: 1}]})
    subprocess.run(["mosquitto_pub", "-p", str(mosquitto.port), "-V", "mqttv5", "-q", "1", "-r",
                    "-t", "helix/sdk/dev-9/spans", "-s"], input=poison, check=True, timeout=10)
    for start in range(2):
        cfg = parse_config({"node": {"id": f"n{start}"},
                            "sources": {"ebpf": {"enabled": False}, "mqtt": {"broker": mosquitto.url},
                                        "otlp": {"grpc_listen": "", "http_listen": ""}},
                            "metrics": {"listen": "", "export_interval": 0},
                            "uplink": {"broker": mosquitto.url, "spool_dir": ""}})
        agent = Agent(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        async with asyncio.timeout(15):
            while agent.status()["mqtt"]["dropped"]["bad_span"] < 1:
                assert not task.done(), "the agent stopped on the poison message"
                await asyncio.sleep(0.05)
        assert not task.done() and agent.status()["tasks"]["restarts"].get("mqtt-source", 0) == 0
        stop.set()
        await asyncio.wait_for(task, 15)
