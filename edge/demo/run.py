"""`helix demo`: every part of Helix Edge on this machine, with a small workload, printed as trace trees."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HelixError
from ..model import Span
from .otlp_peer import OtlpPeer
from .stack import AGENT_READY, Stack
from .trees import format_trace, group_traces, has_orphans

__all__ = ["run_demo", "DemoResult"]

# A trace is printed once no span of it arrived for this long; one whose parents are not all in yet waits longer,
# past the OpenTelemetry SDK's default 5 s export delay, so the app's spans join it before it is shown.
_QUIET_S = 3.0
_QUIET_ORPHANS_S = 9.0


@dataclass
class DemoResult:
    """What a demo run produced (for tests)."""

    traces: dict[bytes, list[Span]] = field(default_factory=dict)
    out: Path | None = None


def _print_ready(peer: OtlpPeer, printed: set[bytes], last_change: dict[bytes, float], force: bool) -> None:
    now = time.monotonic()
    for tid, spans in group_traces(peer.spans()).items():
        if tid in printed:
            continue
        quiet = now - last_change.get(tid, now)
        if force or quiet >= _QUIET_ORPHANS_S or (quiet >= _QUIET_S and not has_orphans(spans)):
            printed.add(tid)
            print(format_trace(spans) + "\n", flush=True)


def _bound_port(line: str) -> int:
    """The port at the end of a 'listening on host:port' log line."""
    return int(re.search(r":(\d+)\D*$", line).group(1))  # type: ignore[union-attr]


async def run_demo(duration: float | None, out: Path | None, keep_logs: bool = False) -> int:
    """Run the demo for `duration` seconds (None: until Ctrl-C), printing trees; returns an exit code."""
    result = await run_demo_collect(duration, out, keep_logs)
    return 0 if result.traces else 1


async def run_demo_collect(duration: float | None, out: Path | None, keep_logs: bool = False,
                           stop: asyncio.Event | None = None) -> DemoResult:
    """The demo, returning what the OTLP peer received."""
    tmp = tempfile.mkdtemp(prefix="helix-demo-")
    workdir = Path(tmp)
    out = out or workdir / "otlp-received.jsonl"
    if out.exists():
        out.unlink()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = Stack(workdir, peer_json=out)
    broker, peer = stack.broker, stack.peer
    printed: set[bytes] = set()
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress goes to stderr
    say(f"helix demo: working directory {workdir}")
    try:
        await stack.__aenter__()
        say(f"  mosquitto      listening on {broker.url}")
        say(f"  OTLP peer      gRPC {peer.grpc_endpoint} -> {out}")
        gateway = await stack.start_gateway(http_listen="127.0.0.1:0")
        say(f"  gateway        uplink topic helix/uplink/+ -> OTLP/gRPC {peer.grpc_endpoint}")
        # Every listener binds port 0 and the demo reads the port back from its log: a port chosen here and bound
        # later by another process could be taken in between.
        config = stack.agent_config("demo-node", grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0")
        agent = await stack.start_agent(config, ready=("sdk span source subscribed", AGENT_READY))
        ports = {"agent_grpc": _bound_port(await stack.wait_for_log(agent, r"OTLP/gRPC receiver listening on \S+")),
                 "agent_http": _bound_port(await stack.wait_for_log(agent, r"OTLP/HTTP receiver listening on \S+"))}
        kernel = "running" if "kernel probes running" in agent.log.read_text() else "not running (see helix doctor)"
        say(f"  agent          OTLP 127.0.0.1:{ports['agent_grpc']} (gRPC) / :{ports['agent_http']} (HTTP); "
            f"kernel probes {kernel}")
        inventory = await stack.spawn("inventory", "-m", "edge.demo.inventory", "0")
        ports["inventory"] = _bound_port(await stack.wait_for_log(inventory, r"inventory ready on \S+", 20.0))
        device = await stack.spawn("device", "-m", "edge.demo.device", "--broker-port", str(broker.port))
        await stack.wait_for_log(device, "device ready", 20.0)
        app = await stack.spawn("app", "-m", "edge.demo.app", "--otlp", f"http://127.0.0.1:{ports['agent_grpc']}",
                                "--broker-port", str(broker.port), "--inventory", f"http://127.0.0.1:{ports['inventory']}")
        say("  workload       order-service (OpenTelemetry SDK) -> inventory (HTTP) + device sensor-gw-7 (MQTT, Helix SDK)")
        say("traces appear below once complete" + (f"; stopping in {duration:.0f}s" if duration else "; Ctrl-C stops") + "\n")

        last_change: dict[bytes, float] = {}
        seen_counts: dict[bytes, int] = {}
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            _track(peer, last_change, seen_counts)
            _print_ready(peer, printed, last_change, force=False)
            for child in stack.children:
                if child.proc.returncode is not None and child.name in ("agent", "gateway"):
                    raise HelixError(f"the {child.name} exited unexpectedly; its log: {child.log}")

        say("stopping: workload, then agent (flushes its uplink), then gateway")
        for child in (app, device, inventory, agent):
            await stack.stop(child)
        # Let the gateway export what the agent flushed: wait until the peer has been quiet for a while (a busy
        # machine can take seconds), but not forever.
        quiet_since = started = time.monotonic()
        count = len(peer.requests)
        while time.monotonic() - quiet_since < 3.0 and time.monotonic() - started < 20.0:
            await asyncio.sleep(0.25)
            if len(peer.requests) != count:
                count, quiet_since = len(peer.requests), time.monotonic()
        await stack.stop(gateway)
        _track(peer, last_change, seen_counts)
        _print_ready(peer, printed, last_change, force=True)
        traces = group_traces(peer.spans())
        by_source: dict[str, int] = {}
        for s in peer.spans():
            src = str(s.attributes.get("helix.source", s.source.value))
            by_source[src] = by_source.get(src, 0) + 1
        mixed = sum(1 for spans in traces.values()
                    if len({str(s.attributes.get("helix.source", "")) for s in spans}) > 1)
        say(f"received {len(traces)} traces, {sum(by_source.values())} spans "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(by_source.items()))}); {mixed} traces mix sources")
        say(f"OTLP JSON lines: {out}")
        if keep_logs:
            say(f"component logs: {workdir}")
        return DemoResult(traces, out)
    finally:
        await stack.close(timeout=3)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if not keep_logs:
            _cleanup(workdir, keep=out)


def _track(peer: OtlpPeer, last_change: dict[bytes, float], counts: dict[bytes, int]) -> None:
    now = time.monotonic()
    current: dict[bytes, int] = {}
    for s in peer.spans():
        current[s.trace_id] = current.get(s.trace_id, 0) + 1
    for tid, n in current.items():
        if counts.get(tid) != n:
            counts[tid] = n
            last_change[tid] = now


def _cleanup(workdir: Path, keep: Path) -> None:
    for p in workdir.iterdir():
        if p != keep and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
    with contextlib.suppress(OSError):
        if not any(workdir.iterdir()):
            os.rmdir(workdir)
