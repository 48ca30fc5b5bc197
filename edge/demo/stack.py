"""Every part of Helix Edge on this machine, as real processes: a private Mosquitto, an OTLP peer, `helix gateway`
and `helix run`, each logging to its own file in a work directory. `helix demo` and the end-to-end benchmarks
start and stop them through this one helper."""
from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..errors import HelixError
from .broker import Mosquitto
from .otlp_peer import OtlpPeer

__all__ = ["Stack", "Child", "GATEWAY_READY", "AGENT_READY"]

GATEWAY_READY = "gateway subscribed"
AGENT_READY = "agent running"


@dataclass
class Child:
    """A process of the stack and its log file."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path


class Stack:
    """Broker and OTLP peer in this process; the gateway, the agent and any workload as child processes.

    `async with Stack(workdir) as stack:` starts the broker and the peer; `start_gateway()` and
    `start_agent(toml)` start those and wait until they serve; leaving the block stops every part, the last
    started first.
    """

    def __init__(self, workdir: Path, *, broker_conf: str = "", peer_json: Path | None = None,
                 cwd: Path | None = None) -> None:
        self.workdir = workdir
        self.broker = Mosquitto(workdir=workdir, extra_conf=broker_conf)
        self.peer = OtlpPeer(json_path=peer_json)
        self.children: list[Child] = []
        self._cwd = cwd

    async def __aenter__(self) -> Stack:
        await self.broker.astart()
        try:
            await self.peer.start()
        except BaseException:
            self.broker.stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self, timeout: float = 10.0) -> None:
        """Stop every child (the last started first, each given `timeout` s), then the peer and the broker."""
        for child in reversed(self.children):
            await self.stop(child, timeout)
        await self.peer.stop()
        self.broker.stop()

    async def start_gateway(self, http_listen: str = "", timeout: float = 30.0) -> Child:
        """`helix gateway` from the broker to the peer over OTLP/gRPC; returns once it is subscribed."""
        cfg = self.workdir / "gateway.toml"
        cfg.write_text(f"""\
[gateway]
broker = "{self.broker.url}"
http_listen = "{http_listen}"
export_protocol = "grpc"
export_endpoint = "{self.peer.grpc_endpoint}"
state_dir = "{self.workdir / 'gateway-state'}"
""")
        gateway = await self.spawn("gateway", "-m", "edge", "gateway", "--config", str(cfg), "--log-level", "info")
        await self.wait_for_log(gateway, GATEWAY_READY, timeout)
        return gateway

    def agent_config(self, node_id: str, *, grpc_listen: str, http_listen: str, batch_max_age: str = "500ms",
                     more: str = "") -> str:
        """The agent's TOML: SDK spans and the uplink on the stack's broker, the OTLP receivers where asked, the
        spool in the work directory; `more` adds the tables a caller needs besides."""
        return f"""\
[node]
id = "{node_id}"

[sources.mqtt]
broker = "{self.broker.url}"

[sources.otlp]
grpc_listen = "{grpc_listen}"
http_listen = "{http_listen}"

[uplink]
broker = "{self.broker.url}"
batch_max_age = "{batch_max_age}"
spool_dir = "{self.workdir / 'spool'}"
{more}"""

    async def start_agent(self, config: str, *, ready: tuple[str, ...] = (AGENT_READY,),
                          env: dict[str, str] | None = None, timeout: float = 30.0) -> Child:
        """`helix run` with the TOML `config`; returns once every pattern in `ready` is in its log."""
        cfg = self.workdir / "agent.toml"
        cfg.write_text(config)
        agent = await self.spawn("agent", "-m", "edge", "run", "--config", str(cfg), "--log-level", "info", env=env)
        for pattern in ready:
            await self.wait_for_log(agent, pattern, timeout)
        return agent

    async def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Child:
        """Start `python *args` as a part of the stack, logging to `<workdir>/<name>.log`."""
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as fh:
            # A session of its own: Ctrl-C reaches only the caller, which then stops the parts in order.
            proc = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=fh, stderr=fh, env=env,
                                                        cwd=self._cwd, stdin=asyncio.subprocess.DEVNULL,
                                                        start_new_session=True)
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    async def wait_for_log(self, child: Child, pattern: str, timeout: float = 30.0) -> str:
        """Wait until `pattern` (a regular expression) appears in the child's log; returns the matching text."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = regex.search(child.log.read_text(errors="replace"))
            if found:
                return found.group(0)
            if child.proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        tail = child.log.read_text(errors="replace")[-2000:]
        raise HelixError(f"{child.name} did not start (waited for {pattern!r}); its log ({child.log}) ends with:\n{tail}")

    async def stop(self, child: Child, timeout: float = 10.0) -> None:
        """SIGTERM (an agent flushes what it accepted), then SIGKILL after `timeout` seconds."""
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.proc.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
