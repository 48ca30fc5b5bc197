"""Without kernel probes the agent still runs on SDK spans, and says why; with probes required it refuses."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.config import parse_config
from edge.demo.broker import Mosquitto, free_port
from edge.errors import ProbeUnavailable


def _cfg(broker: Mosquitto, enabled: object) -> dict:
    return {"sources": {"mqtt": {"broker": broker.url}, "ebpf": {"enabled": enabled},
                        "otlp": {"grpc_listen": f"127.0.0.1:{free_port()}", "http_listen": ""}},
            "uplink": {"broker": broker.url, "spool_dir": ""}}


async def test_agent_runs_without_probes_and_reports_why(mosquitto: Mosquitto, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # An installation whose BPF objects are missing: a real way for the probes to be unavailable.
    monkeypatch.setenv("HELIX_BPF_OBJECTS", str(tmp_path / "no-objects"))
    agent = Agent(parse_config(_cfg(mosquitto, "auto")))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.started.wait(), 15)
    st = agent.status()["kernel"]
    assert st["state"] == "unavailable"
    assert "no-objects" in st["reason"] or "object" in st["reason"]
    assert st["fix"]
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_required_probes_fail_the_start_with_the_reason(mosquitto: Mosquitto, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIX_BPF_OBJECTS", str(tmp_path / "no-objects"))
    agent = Agent(parse_config(_cfg(mosquitto, True)))
    with pytest.raises(ProbeUnavailable):
        await asyncio.wait_for(agent.run(asyncio.Event()), 15)
    # Nothing is left listening after the refused start.
    port = agent.grpc.port if agent.grpc else 0
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_cli_says_why_in_one_line(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[sources.ebpf]\nenabled = true\n[sources.mqtt]\nbroker = "{mosquitto.url}"\n'
                   f'[uplink]\nbroker = "{mosquitto.url}"\n[sources.otlp]\ngrpc_listen = "127.0.0.1:{free_port()}"\n'
                   'http_listen = ""\n')
    proc = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=60, env={"HELIX_BPF_OBJECTS": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "fix:" in proc.stderr
