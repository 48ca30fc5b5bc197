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
from .broker import Mosquitto
from .otlp_peer import OtlpPeer
from .trees import format_trace, group_traces

__all__ = ["run_demo", "DemoResult"]

# A trace is printed once no span of it arrived for this long.
_QUIET_S = 3.0


@dataclass
class DemoResult:
    """What a demo run produced (for tests)."""

    traces: dict[bytes, list[Span]] = field(default_factory=dict)
    out: Path | None = None


@dataclass
class _Child:
    name: str
    proc: asyncio.subprocess.Process
    log: Path


class _Demo:
    def __init__(self, workdir: Path, out: Path) -> None:
        self.workdir = workdir
        self.out = out
        self.children: list[_Child] = []
        self.printed: set[bytes] = set()

    async def spawn(self, name: str, *args: str) -> _Child:
        log = self.workdir / f"{name}.log"
        fh = open(log, "wb")
        # A session of its own: Ctrl-C reaches only the demo, which then stops the parts in order.
        proc = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=fh, stderr=fh,
                                                    stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        fh.close()
        child = _Child(name, proc, log)
        self.children.append(child)
        return child

    async def wait_for_log(self, child: _Child, text: str, timeout: float = 20.0) -> str:
        """Wait until `text` (a regular expression) appears in the child's log; returns the matching line."""
        pattern = re.compile(text)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(child.log.read_text(errors="replace"))
            if found:
                return found.group(0)
            if child.proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        tail = child.log.read_text(errors="replace")[-2000:]
        raise HelixError(f"{child.name} did not start (waited for {text!r}); its log ({child.log}) ends with:\n{tail}")

    async def stop(self, child: _Child, timeout: float = 10.0) -> None:
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.proc.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()

    def print_ready(self, peer: OtlpPeer, last_change: dict[bytes, float], force: bool) -> None:
        now = time.monotonic()
        for tid, spans in group_traces(peer.spans()).items():
            if tid in self.printed:
                continue
            if force or now - last_change.get(tid, now) >= _QUIET_S:
                self.printed.add(tid)
                print(format_trace(spans) + "\n", flush=True)


def _bound_port(line: str) -> int:
    """The port at the end of a 'listening on host:port' log line."""
    return int(re.search(r":(\d+)\D*$", line).group(1))  # type: ignore[union-attr]


def _write_configs(workdir: Path, broker: Mosquitto, peer: OtlpPeer) -> tuple[Path, Path]:
    # Every listener binds port 0 and the demo reads the port back from its log: a port chosen here and bound later
    # by another process could be taken in between.
    agent = workdir / "agent.toml"
    agent.write_text(f"""\
[node]
id = "demo-node"

[sources.mqtt]
broker = "{broker.url}"

[sources.otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"

[uplink]
transport = "mqtt"
broker = "{broker.url}"
batch_max_age = "500ms"
spool_dir = "{workdir / 'spool'}"
""")
    gateway = workdir / "gateway.toml"
    gateway.write_text(f"""\
[gateway]
broker = "{broker.url}"
http_listen = "127.0.0.1:0"
export_protocol = "grpc"
export_endpoint = "{peer.grpc_endpoint}"
""")
    return agent, gateway


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
    demo = _Demo(workdir, out)
    broker = Mosquitto(workdir=workdir)
    peer = OtlpPeer(json_path=out)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress goes to stderr
    try:
        say(f"helix demo: working directory {workdir}")
        await broker.astart()
        say(f"  mosquitto      listening on {broker.url}")
        await peer.start()
        say(f"  OTLP peer      gRPC {peer.grpc_endpoint} -> {out}")
        agent_cfg, gateway_cfg = _write_configs(workdir, broker, peer)
        gateway = await demo.spawn("gateway", "-m", "edge", "gateway", "--config", str(gateway_cfg), "--log-level", "info")
        await demo.wait_for_log(gateway, "gateway subscribed")
        say(f"  gateway        uplink topic helix/uplink/+ -> OTLP/gRPC {peer.grpc_endpoint}")
        agent = await demo.spawn("agent", "-m", "edge", "run", "--config", str(agent_cfg), "--log-level", "info")
        await demo.wait_for_log(agent, "sdk span source subscribed")
        await demo.wait_for_log(agent, "agent running")
        ports = {"agent_grpc": _bound_port(await demo.wait_for_log(agent, r"OTLP/gRPC receiver listening on \S+")),
                 "agent_http": _bound_port(await demo.wait_for_log(agent, r"OTLP/HTTP receiver listening on \S+"))}
        kernel = "running" if "kernel probes running" in agent.log.read_text() else "not running (see helix doctor)"
        say(f"  agent          OTLP 127.0.0.1:{ports['agent_grpc']} (gRPC) / :{ports['agent_http']} (HTTP); "
            f"kernel probes {kernel}")
        inventory = await demo.spawn("inventory", "-m", "edge.demo.inventory", "0")
        ports["inventory"] = _bound_port(await demo.wait_for_log(inventory, r"inventory ready on \S+"))
        device = await demo.spawn("device", "-m", "edge.demo.device", "--broker-port", str(broker.port))
        await demo.wait_for_log(device, "device ready")
        app = await demo.spawn("app", "-m", "edge.demo.app", "--otlp", f"http://127.0.0.1:{ports['agent_grpc']}",
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
            demo.print_ready(peer, last_change, force=False)
            for child in demo.children:
                if child.proc.returncode is not None and child.name in ("agent", "gateway"):
                    raise HelixError(f"the {child.name} exited unexpectedly; its log: {child.log}")

        say("stopping: workload, then agent (flushes its uplink), then gateway")
        for child in (app, device, inventory, agent):
            await demo.stop(child)
        # Let the gateway export what the agent flushed: wait until the peer has been quiet for a while (a busy
        # machine can take seconds), but not forever.
        quiet_since = started = time.monotonic()
        count = len(peer.requests)
        while time.monotonic() - quiet_since < 3.0 and time.monotonic() - started < 20.0:
            await asyncio.sleep(0.25)
            if len(peer.requests) != count:
                count, quiet_since = len(peer.requests), time.monotonic()
        await demo.stop(gateway)
        _track(peer, last_change, seen_counts)
        demo.print_ready(peer, last_change, force=True)
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
        for child in reversed(demo.children):
            await demo.stop(child, timeout=3)
        await peer.stop()
        broker.stop()
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
