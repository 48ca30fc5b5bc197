"""A real Agent with fleet enabled, a real Mosquitto, documents pushed the way an operator does."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.agent import Agent
from edge.config import BrokerAddress, FleetConfig, parse_config
from edge.demo.broker import Mosquitto, free_port
from edge.fleet.cli import collect_status, format_status, push
from edge.fleet.document import generate_keypair, sign_document

NODE, GROUP = "gw-1", "plant-3"


def agent_config(tmp: Path, broker: str, pub: Path, **fleet: Any) -> dict[str, Any]:
    return {
        "node": {"id": NODE, "group": GROUP},
        "sources": {"mqtt": {"enabled": False}, "otlp": {"grpc_listen": "", "http_listen": ""},
                    "ebpf": {"enabled": False}},
        "metrics": {"listen": "", "export_interval": 0},
        "sampler": {"ratio": 1.0},
        "uplink": {"broker": broker, "spool_dir": str(tmp / "spool")},
        "fleet": {"enabled": True, "broker": broker, "trusted_keys": [str(pub)], "grace": "2s",
                  "state_dir": str(tmp / "fleet"), **fleet},
    }


class Status:
    """Follows helix/status/<node> the way `helix fleet status --watch` does."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    def add(self, st: dict[str, Any]) -> None:
        self.seen.append(st)
        self.changed.set()

    async def wait_for(self, pred: Any, timeout: float = 15.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for st in self.seen:
                    if pred(st):
                        return st
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def fleet(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[tuple[Agent, Status, FleetConfig, Path]]:
    priv, pub = generate_keypair(tmp_path / "op.key")
    cfg = parse_config(agent_config(tmp_path, mosquitto.url, pub))
    agent = Agent(cfg)
    stop = asyncio.Event()
    status = Status()
    conn = FleetConfig(broker=BrokerAddress.parse(mosquitto.url, "broker"))
    watcher = asyncio.create_task(collect_status(conn, watch=True, on_update=status.add))
    runner = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.started.wait(), 10)
    await asyncio.wait_for(agent.fleet.connected.wait(), 10)
    try:
        yield agent, status, conn, priv
    finally:
        stop.set()
        await asyncio.wait_for(runner, 15)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def write(tmp: Path, text: str) -> Path:
    p = tmp / f"doc{len(list(tmp.glob('doc*')))}.toml"
    p.write_text(text)
    return p


async def publish_raw(broker: Mosquitto, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.publish(topic, payload, qos=1, retain=True)


async def test_group_then_node_document_applied_live_and_acknowledged(fleet, tmp_path: Path) -> None:
    agent, status, conn, key = fleet
    await status.wait_for(lambda s: s["state"] == "online" and s["node"] == NODE)
    await push(conn, write(tmp_path, "[sampler]\nratio = 0.25\n[uplink]\nbatch_max_spans = 64\n"), key,
               f"group/{GROUP}")
    st = await status.wait_for(lambda s: s.get("config_version", {}).get("group") == 1)
    assert st["config_state"] == "applied" and st["last_error"] == ""
    assert agent.sampler.ratio == 0.25 and agent.uplink.cfg.batch_max_spans == 64
    # The node's own document overrides the group's key by key.
    await push(conn, write(tmp_path, "[sampler]\nratio = 0.5\n"), key, f"node/{NODE}")
    st = await status.wait_for(lambda s: s.get("config_version", {}).get("node") == 1)
    assert st["config_version"] == {"group": 1, "node": 1}
    assert agent.sampler.ratio == 0.5 and agent.uplink.cfg.batch_max_spans == 64
    assert agent.status()["fleet"]["config_version"] == {"group": 1, "node": 1}
    # A change that cannot be made live is applied to the config and reported as needing a restart.
    await push(conn, write(tmp_path, "[sampler]\nratio = 0.5\n[assembler]\nwindow = \"3s\"\n"), key, f"node/{NODE}")
    st = await status.wait_for(lambda s: s.get("config_version", {}).get("node") == 2)
    assert "assembler.window" in st["restart_needed"]
    table = format_status({NODE: st})
    assert NODE in table and "g1 n2" in table and "applied" in table


async def test_refusals_are_reported_and_change_nothing(fleet, tmp_path: Path, mosquitto: Mosquitto) -> None:
    agent, status, conn, key = fleet
    await push(conn, write(tmp_path, "[sampler]\nratio = 0.3\n"), key, f"node/{NODE}", version=5)
    await status.wait_for(lambda s: s.get("config_version", {}).get("node") == 5)
    signer = Ed25519PrivateKey.generate()
    cases = [
        (json.dumps(sign_document({"sampler": {"ratio": 0.9}}, f"node/{NODE}", 9, signer)), "bad signature"),
        (json.dumps({k: v for k, v in sign_document({"sampler": {"ratio": 0.9}}, f"node/{NODE}", 9, signer).items()
                     if k != "signature"}), "unsigned"),
        (json.dumps(sign_document({"sampler": {"ratio": 0.9}}, f"node/{NODE}", 4,
                                  _load(key))), "not newer than version 5"),
        (json.dumps(sign_document({"sampler": {"ratio": 7}}, f"node/{NODE}", 6, _load(key))), "sampler.ratio"),
        (json.dumps(sign_document({"sampler": {"ratio": 0.9}}, "node/gw-2", 7, _load(key))), "is for 'node/gw-2'"),
    ]
    for payload, why in cases:
        n = len(status.seen)
        await publish_raw(mosquitto, f"helix/config/node/{NODE}", payload.encode())
        st = await status.wait_for(lambda s, n=n: s is status.seen[-1] and len(status.seen) > n
                                   and s["config_state"] == "refused" and why in s["last_error"])
        assert st["config_version"]["node"] == 5
        assert agent.sampler.ratio == 0.3, why


async def test_unreachable_uplink_target_rolls_back(fleet, tmp_path: Path) -> None:
    agent, status, conn, key = fleet
    before = agent.uplink.cfg
    dead = f"mqtt://127.0.0.1:{free_port()}"
    await push(conn, write(tmp_path, f"[uplink]\nbroker = \"{dead}\"\n"), key, f"group/{GROUP}")
    await status.wait_for(lambda s: s["config_state"] == "verifying")
    st = await status.wait_for(lambda s: s["config_state"] == "rolled_back")
    assert "rolled back" in st["last_error"] and "group v1" in st["last_error"]
    assert st["config_version"] == {"group": 0, "node": 0}
    assert agent.uplink.cfg == before and agent.cfg.uplink == before


async def test_new_uplink_target_gets_the_spans_accepted_before_the_switch(fleet, tmp_path: Path) -> None:
    import time

    from edge.model import Span, new_span_id, new_trace_id

    agent, status, conn, key = fleet
    (tmp_path / "second").mkdir()
    with Mosquitto(workdir=tmp_path / "second") as second:
        async with aiomqtt.Client("127.0.0.1", second.port, protocol=aiomqtt.ProtocolVersion.V5) as gw:
            await gw.subscribe("helix/uplink/#", qos=1)
            # No gateway listens on the first broker: the batch waits in the spool ("no matching subscribers").
            now = time.time_ns()
            spans = [Span(new_trace_id(), new_span_id(), f"op{i}", now, now + 1000) for i in range(10)]
            assert agent.uplink.submit(spans) == 10
            async with asyncio.timeout(10):
                while agent.uplink.stats.spans_spooled < 10:
                    await asyncio.sleep(0.1)
            assert agent.uplink.stats.spans_sent == 0
            await push(conn, write(tmp_path, f"[uplink]\nbroker = \"{second.url}\"\n"), key, f"group/{GROUP}")
            st = await status.wait_for(lambda s: s.get("config_version", {}).get("group") == 1)
            assert st["config_state"] == "applied"
            assert str(agent.uplink.cfg.broker) == second.url
            async with asyncio.timeout(30):
                async for message in gw.messages:
                    assert str(message.topic) == f"helix/uplink/{NODE}"
                    break
            async with asyncio.timeout(10):
                while agent.uplink.stats.spans_sent < 10:
                    await asyncio.sleep(0.1)


def _load(path: Path):
    from edge.fleet.document import load_private_key
    return load_private_key(path)


async def test_last_will_marks_a_killed_node_offline(tmp_path: Path, mosquitto: Mosquitto) -> None:
    import subprocess
    import sys
    import tomllib  # noqa: F401 - the file below must be valid TOML; parse_config checks it in the child

    _, pub = generate_keypair(tmp_path / "op.key")
    data = agent_config(tmp_path, mosquitto.url, pub)
    conf = tmp_path / "agent.toml"
    conf.write_text(_toml(data))
    status = Status()
    conn = FleetConfig(broker=BrokerAddress.parse(mosquitto.url, "broker"))
    watcher = asyncio.create_task(collect_status(conn, watch=True, on_update=status.add))
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await status.wait_for(lambda s: s["state"] == "online", timeout=30)
        proc.kill()  # no clean DISCONNECT: the broker publishes the will
        proc.wait(10)
        st = await status.wait_for(lambda s: s["state"] == "offline", timeout=60)
        assert st["node"] == NODE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for the test config: tables of strings, numbers, booleans and string lists."""
    simple = {k: v for k, v in data.items() if not isinstance(v, dict)}
    out = [f"[{prefix}]"] if prefix and simple else []
    for k, v in simple.items():
        out.append(f"{k} = {json.dumps(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out) + "\n"


async def test_a_retained_document_nested_200000_deep_is_refused_and_the_node_runs_on(fleet, tmp_path: Path,
                                                                                       mosquitto: Mosquitto) -> None:
    # Unsigned and 200 KB: before any signature check its parse would have raised RecursionError and stopped the
    # agent, at every start while retained.
    agent, status, conn, key = fleet
    await publish_raw(mosquitto, f"helix/config/node/{NODE}", b"[" * 200_000)
    st = await status.wait_for(lambda s: "nested deeper" in s.get("last_error", ""))
    assert st["config_state"] == "refused" and agent.fleet.stats.refused == 1
    # A document whose handling breaks in a way no check foresaw is counted and reported, and the node goes on.
    real = agent.fleet.handle

    async def breaks(topic: str, payload: bytes) -> None:
        raise RuntimeError("unforeseen")

    agent.fleet.handle = breaks  # type: ignore[method-assign]
    await publish_raw(mosquitto, f"helix/config/group/{GROUP}", b"{}")
    st = await status.wait_for(lambda s: "could not be handled" in s.get("last_error", ""))
    assert agent.fleet.stats.poison == 1
    agent.fleet.handle = real  # type: ignore[method-assign]
    await push(conn, write(tmp_path, "[sampler]\nratio = 0.5\n"), key, f"node/{NODE}")
    await status.wait_for(lambda s: s.get("config_version", {}).get("node") == 1)
    assert agent.sampler.ratio == 0.5
