"""The kernel events of a testbed run, recorded beside the agent for replay (bench/accuracy.py --dump-events).

A second probe set, restricted to the testbed's processes, reads the same tracepoints as the agent's into a ring
buffer of its own; each scenario's events (its processes') are written as gzipped JSON lines in the format the
recorded-event tests replay (tests/edge/sources/ebpf/spans/_grpc_recording.py `load`). The agent's own decisions
are in its spans (`helix.cause.via`); replaying a scenario's events through the span builder shows whether the
rules alone make the same ones. The second probe set doubles the probes' cost on the traced processes.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from edge.sources.ebpf.events import KernelEvent
from edge.sources.ebpf.loader import KernelEventStream, ProbeSet, ProbeSettings
from edge.sources.ebpf.py_attach import PyContextAttacher
from tests.edge.sources.ebpf.spans._grpc_recording import dump

__all__ = ["EventRecorder"]


class EventRecorder:
    """Kernel events of the given processes, kept from start() until close()."""

    def __init__(self) -> None:
        self.events: list[KernelEvent] = []
        self._probes: ProbeSet | None = None
        self._stream: KernelEventStream | None = None
        self._contexts: PyContextAttacher | None = None

    async def start(self, pids: list[int]) -> None:
        """Load the probes (off the loop), trace only `pids` (with the Python task-context probes, as the agent
        does), read on the running loop."""
        self._probes = await asyncio.to_thread(ProbeSet, ProbeSettings())
        self._probes.set_allowed_pids(pids)
        self._contexts = PyContextAttacher(self._probes, os.getpid(), frozenset(pids))
        await asyncio.to_thread(self._contexts.start)
        self._stream = KernelEventStream(self._probes, lambda batch: self.events.extend(batch))
        self._stream.start(asyncio.get_running_loop())

    def write(self, path: Path, pids: set[int]) -> int:
        """Write the events of `pids` recorded so far to `path` and forget them; the number written."""
        if self._stream is not None:
            self._stream.poll()
        mine = [e for e in self.events if getattr(e, "pid", None) in pids]
        self.events = [e for e in self.events if getattr(e, "pid", None) not in pids]
        dump(mine, path)
        return len(mine)

    def close(self) -> None:
        """Stop reading and unload the probes."""
        if self._contexts is not None:
            self._contexts.close()
        if self._stream is not None:
            self._stream.close()
        if self._probes is not None:
            self._probes.close()
