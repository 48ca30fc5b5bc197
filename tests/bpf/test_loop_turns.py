"""Event-loop turns (bpf/proc.bpf.c): the return of epoll_wait/epoll_pwait in a traced thread that did socket I/O, as
a real asyncio loop makes them."""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest

from edge.sources.ebpf.events import TurnEvent

pytestmark = pytest.mark.bpf

# An asyncio loop runs 10 turns with nothing to read (asyncio.sleep(0) queues a continuation: the next wait returns at
# once) before any socket I/O, then serves 10 echo round trips over loopback. Prints "<loop tid> <monotonic ns at which
# socket I/O began>" (CLOCK_MONOTONIC: the probes' clock).
LOOP = r"""
import asyncio, threading, time
async def main():
    for _ in range(10):
        await asyncio.sleep(0)
    began = time.monotonic_ns()
    async def echo(r, w):
        while data := await r.read(1):
            w.write(data); await w.drain()
    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
    for _ in range(10):
        w.write(b"x"); await w.drain(); await r.readexactly(1)
    w.close(); srv.close()
    print(threading.get_native_id(), began, flush=True)
asyncio.run(main())
"""


async def _run_loop() -> tuple[int, int, int]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", LOOP, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    tid, began = map(int, out.split())
    return proc.pid, tid, began


async def test_turns_of_a_loop_that_did_socket_io_are_sent(kernel: Any) -> None:
    k = kernel()
    pid, tid, began = await _run_loop()
    turns = await k.wait_for(lambda e: isinstance(e, TurnEvent) and e.pid == pid, count=10)
    await k.settle()
    ours = [e for e in k.events if isinstance(e, TurnEvent) and e.pid == pid]
    assert len(ours) >= len(turns) >= 10  # at least one wait per round trip
    assert all(e.tid == tid for e in ours)
    # The turns before the thread's first socket I/O send nothing: it was not enrolled yet.
    assert all(e.ts_ns >= began for e in ours)
    assert any(e.ready > 0 for e in ours)


async def test_turns_of_untraced_processes_are_not_sent(kernel: Any) -> None:
    k = kernel()
    k.probes.set_allowed_pids([os.getppid()])  # some other process: the loop below is not traced
    pid, *_ = await _run_loop()
    await k.settle(0.5)
    assert not [e for e in k.events if isinstance(e, TurnEvent) and e.pid == pid]
