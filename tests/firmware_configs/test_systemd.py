"""The systemd unit and kernel fragment shipped in firmware-configs/, and the agent's side of sd_notify."""
from __future__ import annotations

import asyncio
import configparser
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from edge.runtime import sdnotify
from edge.config import load_config, parse_size

FW = Path(__file__).parents[2] / "firmware-configs"
UNIT = FW / "systemd" / "helix-agent.service"
TLS_DROP_IN = FW / "systemd" / "helix-agent.service.d" / "tls.conf"
PROFILES = sorted((FW / "profiles").glob("*.toml"))


def _unit(path: Path = UNIT) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    cp.read_string(path.read_text())
    return cp


def test_unit_parses_and_runs_unprivileged_with_the_probe_capabilities() -> None:
    svc = _unit()["Service"]
    assert svc["Type"] == "notify" and svc["Restart"] == "on-failure"
    assert svc["User"] == "helix" and svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert svc["StateDirectory"] == "helix"
    caps = set(svc["AmbientCapabilities"].split())
    assert {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_RESOURCE"} <= caps and "CAP_SYS_ADMIN" not in caps
    assert caps == set(svc["CapabilityBoundingSet"].split())
    assert re.fullmatch(r"\d+s", svc["WatchdogSec"])


def test_tls_drop_in_adds_only_sys_admin_to_both_capability_sets() -> None:
    svc = _unit(TLS_DROP_IN)["Service"]
    # Capability lists in drop-ins add to the unit's (systemd.exec(5)); one starting with "~" or empty would not
    assert dict(svc) == {"AmbientCapabilities": "CAP_SYS_ADMIN", "CapabilityBoundingSet": "CAP_SYS_ADMIN"}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_unit_memory_max_covers_every_profile_budget(path: Path) -> None:
    cfg = load_config(path)
    mem_max = parse_size(_unit()["Service"]["MemoryMax"].replace("M", "MiB"), "MemoryMax")
    assert mem_max >= cfg.memory.limit * 1.25, "MemoryMax must leave room above the governor's budget"
    # The spool and fleet state must live where StateDirectory= makes the unit able to write.
    assert cfg.uplink.spool_dir.startswith("/var/lib/helix/") and cfg.fleet.state_dir.startswith("/var/lib/helix/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_itself_accepts_the_unit_and_its_drop_in(tmp_path: Path) -> None:
    out = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True)
    # Only the ExecStart binary may be missing on a build machine; any syntax or key problem fails.
    problems = [ln for ln in (out.stdout + out.stderr).splitlines()
                if ln.strip() and "is not executable" not in ln and "/opt/helix/bin/helix" not in ln]
    assert problems == []
    # verify reads the drop-in next to the unit: a copy with a bad key is reported, so the real one was checked too
    (tmp_path / TLS_DROP_IN.parent.name).mkdir()
    (tmp_path / UNIT.name).write_text(UNIT.read_text())
    (tmp_path / TLS_DROP_IN.parent.name / TLS_DROP_IN.name).write_text(TLS_DROP_IN.read_text() + "NoSuchKey=1\n")
    bad = subprocess.run(["systemd-analyze", "verify", str(tmp_path / UNIT.name)], capture_output=True, text=True)
    assert f"{TLS_DROP_IN.name}:{len(TLS_DROP_IN.read_text().splitlines()) + 1}: Unknown key" in bad.stdout + bad.stderr


def test_kernel_fragment_lists_what_the_probes_need() -> None:
    opts: dict[str, str] = {}
    for n, line in enumerate((FW / "kernel" / "helix.config").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"(CONFIG_[A-Z0-9_]+)=(y|m|n|\d+|\".*\")", line)
        assert m, f"line {n} is not a Kconfig assignment: {line!r}"
        opts[m.group(1)] = m.group(2)
    for need in ("CONFIG_BPF_SYSCALL", "CONFIG_DEBUG_INFO_BTF", "CONFIG_FTRACE_SYSCALLS", "CONFIG_BPF_EVENTS",
                 "CONFIG_TRACEPOINTS", "CONFIG_PERF_EVENTS", "CONFIG_BPF_JIT"):
        assert opts.get(need) == "y", need


def test_sd_notify_reaches_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        srv.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1\nSTATUS=up")
        assert srv.recv(256) == b"READY=1\nSTATUS=up"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.notify("READY=1") is False


async def test_watchdog_pings_at_half_the_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"helix-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind("\0" + name)  # abstract socket, as systemd uses
        srv.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        assert sdnotify.watchdog_interval() == 0.1
        task = asyncio.create_task(sdnotify.watchdog_loop())
        loop = asyncio.get_running_loop()
        try:
            for _ in range(2):
                assert await asyncio.wait_for(loop.sock_recv(srv, 64), 2) == b"WATCHDOG=1"
        finally:
            task.cancel()
    monkeypatch.setenv("WATCHDOG_PID", "1")  # another process is the one watched
    assert sdnotify.watchdog_interval() is None
