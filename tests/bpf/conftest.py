"""Fixtures that load the real probes into the running kernel and collect what they report.

Without BPF (not root, no BTF, ...) the tests are skipped, unless HELIX_REQUIRE_BPF=1 (set by CI), which
turns "BPF unavailable" into a failure so that a CI run cannot pass by skipping them.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import pytest

from edge.agent import Agent
from edge.config import Config
from edge.errors import ProbeUnavailable
from edge.sources.ebpf.events import KernelEvent
from edge.sources.ebpf.loader import KernelEventStream, ProbeSet, ProbeSettings

pytestmark = pytest.mark.bpf


def bpf_unavailable(reason: str) -> NoReturn:
    """Skip, or fail when CI demands the kernel tests run."""
    if os.environ.get("HELIX_REQUIRE_BPF") == "1":
        pytest.fail(f"BPF unavailable but HELIX_REQUIRE_BPF=1: {reason}")
    pytest.skip(f"BPF unavailable: {reason}")


# How long a start (loading and verifying the probes) and a stop (detaching them, the uplink's close timeout) may take
# before the agent counts as hung. Guards, not timings: each returns as soon as the agent is up or down. Under four
# busy loops on this 2-core machine a start took 35-40 s and a stop 15-20 s.
AGENT_START_GUARD_S = 180.0
AGENT_STOP_GUARD_S = 120.0


@contextlib.asynccontextmanager
async def running_agent(cfg: Config, start_timeout: float = AGENT_START_GUARD_S) -> AsyncIterator[Agent]:
    """A real Agent running on this loop with its kernel probes (skips, or fails under HELIX_REQUIRE_BPF, where they
    cannot load); stopped when the block ends."""
    stop = asyncio.Event()
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.started.wait(), start_timeout)
        if agent.kernel.state != "running":
            bpf_unavailable(f"{agent.kernel.reason} ({agent.kernel.fix})")
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), AGENT_STOP_GUARD_S)


class Collector:
    """A probe set with a running KernelEventStream that appends every decoded event to `events`."""

    def __init__(self, probes: ProbeSet) -> None:
        self.probes = probes
        self.events: list[KernelEvent] = []
        self.stream = KernelEventStream(probes, self.events.extend)

    def of(self, cls: type, **fields: Any) -> list[Any]:
        """Events of a type whose attributes equal `fields`."""
        return [e for e in self.events if isinstance(e, cls)
                and all(getattr(e, k) == v for k, v in fields.items())]

    async def wait_for(self, pred: Callable[[KernelEvent], bool], timeout: float = 10.0, count: int = 1) -> list[Any]:
        """Wait until `count` events satisfy `pred`; return them (fails the test on timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.stream.poll()
            hits = [e for e in self.events if pred(e)]
            if len(hits) >= count:
                return hits
            if loop.time() > deadline:
                pytest.fail(f"timed out waiting for {count} matching kernel events; got {len(hits)} "
                            f"of {len(self.events)} events")
            await asyncio.sleep(0.02)

    async def settle(self, seconds: float = 0.3) -> None:
        """Let in-flight records arrive."""
        await asyncio.sleep(seconds)
        self.stream.poll()

    def close(self) -> None:
        self.stream.close()
        self.probes.close()


@pytest.fixture
def load_probes() -> Iterator[Callable[..., ProbeSet]]:
    """Factory: ProbeSet(ProbeSettings(**kw)), closed after the test; skips/fails when BPF is unavailable."""
    opened: list[ProbeSet] = []

    def load(**settings: Any) -> ProbeSet:
        try:
            probes = ProbeSet(ProbeSettings(**settings))
        except ProbeUnavailable as e:
            bpf_unavailable(str(e))
        opened.append(probes)
        return probes

    yield load
    for p in opened:
        p.close()


@pytest.fixture
async def kernel(load_probes: Callable[..., ProbeSet]) -> AsyncIterator[Callable[..., Collector]]:
    """Factory: load the probes with settings and start collecting their events on this loop."""
    made: list[Collector] = []

    def make(**settings: Any) -> Collector:
        c = Collector(load_probes(**settings))
        c.stream.start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


HTTP_SERVER = r"""
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *a: None
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


class ScriptServer:
    """A Python server script in a subprocess that prints the loopback port it listens on, then serves."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class Server(ScriptServer):
    """A real Python http.server in a subprocess on a free loopback port."""

    def __init__(self, root: str) -> None:
        super().__init__(HTTP_SERVER, root)


@pytest.fixture
def http_server(tmp_path: Any) -> Iterator[Server]:
    """http.server serving tmp_path/www, which holds a file named `path`."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "path").write_text("hello from the file called path\n")
    srv = Server(str(www))
    try:
        yield srv
    finally:
        srv.stop()
