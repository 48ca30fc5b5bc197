"""sched_waking between the threads of a traced process (bpf/proc.bpf.c): a request thread handing a call to a pool
worker and the worker handing the result back, as a real Python thread pool does them."""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest

from edge.sources.ebpf.events import WakeupEvent

pytestmark = pytest.mark.bpf

# Two threads hand work back and forth through a queue and an Event 20 times before either did socket I/O, then 20
# times after the request thread read from a socket, with the worker calling over a loopback connection. Prints "<main tid> <worker tid> <monotonic ns at which
# socket I/O began>" (CLOCK_MONOTONIC: the probes' clock).
POOL = r"""
import queue, socket, threading, time
jobs, done = queue.Queue(), threading.Event()
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
cli = socket.create_connection(srv.getsockname()); peer, _ = srv.accept()
tids = {}
def worker():
    tids["worker"] = threading.get_native_id()
    while True:
        job = jobs.get()
        if job is None:
            return
        if job == "io":
            cli.sendall(b"q"); peer.recv(1); peer.sendall(b"r"); cli.recv(1)
        done.set()
t = threading.Thread(target=worker); t.start()
def hand(job):
    done.clear(); jobs.put(job); done.wait(); time.sleep(0.002)
for _ in range(20):
    hand("quiet")
io_began = time.monotonic_ns()
peer.sendall(b"x"); cli.recv(1)  # the request thread reads its request: it is enrolled too
for _ in range(20):
    hand("io")
jobs.put(None); t.join()
print(threading.get_native_id(), tids["worker"], io_began, flush=True)
"""


async def _run_pool() -> tuple[int, int, int, int]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", POOL, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    main, worker, io_began = map(int, out.split())
    return proc.pid, main, worker, io_began


async def test_pool_handoffs_are_seen_both_ways_once_socket_io_began(kernel: Any) -> None:
    k = kernel()
    pid, main, worker, io_began = await _run_pool()
    handed = await k.wait_for(lambda e: isinstance(e, WakeupEvent) and e.pid == pid and e.waker_tid == main
                              and e.wakee_tid == worker, count=10)
    back = await k.wait_for(lambda e: isinstance(e, WakeupEvent) and e.pid == pid and e.waker_tid == worker
                            and e.wakee_tid == main, count=10)
    await k.settle()
    ours = [e for e in k.events if isinstance(e, WakeupEvent) and e.pid == pid]
    # The 20 hand-offs before either thread did socket I/O send nothing: neither thread is enrolled yet.
    assert all(e.ts_ns >= io_began for e in ours)
    assert all(e.waker_tid != e.wakee_tid for e in ours)
    # The request thread sleeps in done.wait() through the worker's call: the hand-back says since when. A wakeup that
    # races the thread's own switch-out (it is still on a CPU, on its way to sleep: a loaded machine) says 0.
    assert all(e.wakee_since_ns <= e.ts_ns for e in back)
    assert sum(e.wakee_since_ns > 0 for e in back) * 2 >= len(back), [e.wakee_since_ns for e in back]


async def test_wakeups_of_untraced_processes_are_not_sent(kernel: Any) -> None:
    k = kernel()
    k.probes.set_allowed_pids([os.getppid()])  # some other process: the pool below is not traced
    pid, *_ = await _run_pool()
    await k.settle(0.5)
    assert not [e for e in k.events if isinstance(e, WakeupEvent) and e.pid == pid]


# A request thread that did socket I/O starts a thread (as ThreadPoolExecutor starts a worker on submit) and forks a
# process. The thread is a bare pthread running usleep: it never takes the GIL, so nothing but its creation can
# wake it. Prints "<main tid> <child pid>".
SPAWN = r"""
import ctypes, os, socket, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
cli = socket.create_connection(srv.getsockname()); peer, _ = srv.accept()
peer.sendall(b"x"); cli.recv(1)  # enrolled: it did traced socket I/O
libc = ctypes.CDLL(None)
t = ctypes.c_ulong()
assert libc.pthread_create(ctypes.byref(t), None, ctypes.cast(libc.usleep, ctypes.c_void_p), ctypes.c_void_p(1000)) == 0
libc.pthread_join(t, None)
child = os.fork()
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
print(threading.get_native_id(), child, flush=True)
"""


async def test_a_thread_created_by_an_enrolled_thread_is_a_handoff_and_a_fork_is_not(kernel: Any) -> None:
    k = kernel()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SPAWN, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    main, child = map(int, out.split())
    created = await k.wait_for(lambda e: isinstance(e, WakeupEvent) and e.pid == proc.pid and e.waker_tid == main)
    assert all(e.wakee_tid not in (main, child) and e.wakee_since_ns == 0 for e in created), \
        "the new thread never slept: it hands nothing back"
    await k.settle()
    assert not [e for e in k.events if isinstance(e, WakeupEvent) and child in (e.pid, e.wakee_tid)]
