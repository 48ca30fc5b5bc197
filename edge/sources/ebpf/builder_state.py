"""The span builder's long-lived state under a byte bound: connections, threads' request contexts, processes.

Each table already has a count cap (SpanBuilderConfig); this puts all of them under one byte bound the memory
governor plans (a `StatePart`): `bytes` is an estimate per entry (measured with tracemalloc on HTTP exchanges).

What an entry is decides whether the bound may take it (`reason` in the counts):
- idle: unused for IDLE_S and nothing open on it (a pool connection of a service no longer called, a thread that
  ended, a process with no connection left). The bound evicts these, least recently used first, and only these:
  `enforce()` (with the builder's periodic flush) and `set_bound()` (the governor's plan and shrinking steps).
- active: used within IDLE_S, nothing open (a keep-alive connection between two requests, an event loop between
  two turns). Evicting it costs the next request on it: an HTTP/2 connection's header table, a loop's learned
  turns, a process's program name.
- open: an exchange is open on it (a message still arriving, requests or responses waiting, calls waiting for
  their decision, requests a thread still serves). Evicting it loses those spans or their parent.
Live state (active and open) goes only when the governor finds the budget itself exceeded (`evict_live`), in this
order: active connections, active threads, active processes, connections whose first call is still to come, then
open connections and open threads; least recently used first in each, each eviction counted by reason.
"""
from __future__ import annotations

import time
from itertools import takewhile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spans import SpanBuilder
    from .spans.tables import Conn, Proc

__all__ = ["BuilderState", "StateEvictions", "CONN_BYTES", "THREAD_BYTES", "PROC_BYTES", "CONNECT_BYTES", "IDLE_S"]

# Bytes per entry, estimated: a connection with its HTTP state, a thread serving requests, a process with its
# resource, a connection whose first call is still to come.
CONN_BYTES = 1536
THREAD_BYTES = 1024
PROC_BYTES = 512
CONNECT_BYTES = 176
# An entry unused this long with nothing open on it is idle: longer than keep-alive pools wait between requests at
# their defaults (Node.js 5 s, nginx 75 s upstream keepalive_timeout aside, Python's urllib3 pools none).
IDLE_S = 30


@dataclass(slots=True)
class StateEvictions:
    """Entries the byte bound evicted, by table and by what they were (the count caps' own evictions are in the
    builder's stats)."""

    connections: int = 0
    threads: int = 0
    processes: int = 0
    connects: int = 0
    enforced: int = 0  # times the bound had to evict
    idle: int = 0  # entries unused for IDLE_S with nothing open
    active: int = 0  # live entries with nothing open, evicted because the governor found the budget exceeded
    open: int = 0  # entries with an exchange open, evicted last for the same reason
    requests_dropped: int = 0  # requests that waited on the connections evicted (their spans are lost)


class BuilderState:
    """The span builder's tables as the memory governor budgets them (StatePart)."""

    def __init__(self, builder: SpanBuilder, bound: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self._b = builder
        self._clock = clock
        self.bound = bound  # 0: no byte bound yet (only the count caps)
        self.evictions = StateEvictions()
        self._stamp()

    @property
    def bytes(self) -> int:
        """Estimated bytes of the builder's state now: its tables and the calls held for their decision."""
        return self._table_bytes() + self._b.causes.held_bytes

    def _table_bytes(self) -> int:
        # The held calls' bytes are a walk over them: eviction passes take them once per pass, not per victim.
        b = self._b
        return (len(b.conns) * CONN_BYTES + len(b.causes) * THREAD_BYTES + len(b.procs) * PROC_BYTES
                + b.causes.connect_count * CONNECT_BYTES)

    @property
    def live_bytes(self) -> int:
        """Estimated bytes of the entries that are not idle (a walk over every table: for status, not per event)."""
        b, cutoff = self._b, self._cutoff()
        conns = sum(1 for c in b.conns if c.tick > cutoff or b.conns.busy(c))
        threads = sum(1 for _, tick, busy in b.causes.threads() if tick > cutoff or busy)
        procs = sum(1 for p in b.procs if p.tick > cutoff or p.pid in b.conns.by_pid)
        return (conns * CONN_BYTES + threads * THREAD_BYTES + procs * PROC_BYTES
                + b.causes.connect_count * CONNECT_BYTES + b.causes.held_bytes)

    @property
    def evicted(self) -> dict[str, int]:
        """Entries evicted by the byte bound, by reason (idle, active, open)."""
        ev = self.evictions
        return {"idle": ev.idle, "active": ev.active, "open": ev.open}

    def set_bound(self, n: int) -> int:
        """Hold at most about `n` bytes of idle state; returns the requests that waited on connections evicted to get
        there (none: idle connections have none)."""
        self.bound = n
        return self._evict_idle(n)

    def drop_all(self) -> int:
        """Forget every idle entry (the governor's drop step); live state stays. Returns the requests dropped."""
        return self._evict_idle(0)

    drop_idle = drop_all  # the drop step takes idle entries only, first or not

    def enforce(self) -> int:
        """Advance the tables' clock, then evict idle entries if the state passed its bound; returns the requests
        dropped."""
        self._stamp()
        return self._evict_idle(self.bound) if self.bound else 0

    def evict_live(self, n: int) -> int:
        """The budget itself is exceeded: evict down to `n` bytes, idle entries first, then live ones in the stated
        order (module docstring); returns the requests that waited on connections evicted."""
        dropped = self._evict_idle(n)
        if self.bytes <= n:
            return dropped
        b = self._b
        self.evictions.enforced += 1
        # What is left after the idle pass is live: active (nothing open) first, open last. Each step's victims are
        # listed when it begins, so that none is evicted twice.
        steps: list[tuple[str, Callable[[], list[Callable[[], int]]]]] = [
            ("active", lambda: [lambda c=c: self._evict_conn(c) for c in b.conns if not b.conns.busy(c)]),
            ("active", lambda: [lambda k=k: self._evict_thread(k) for k, _, busy in b.causes.threads() if not busy]),
            ("active", lambda: [lambda p=p: self._evict_proc(p) for p in b.procs]),
            ("active", lambda: [lambda k=k: self._forget_connect(k) for k, _ in b.causes.connects()]),
            ("open", lambda: [lambda c=c: self._evict_conn(c) for c in b.conns]),
            ("open", lambda: [lambda k=k: self._evict_thread(k) for k, _, _ in b.causes.threads()]),
        ]
        for reason, victims in steps:
            held = self._b.causes.held_bytes
            for evict in victims():
                if self._table_bytes() + held <= n:
                    return dropped
                dropped += evict()
                setattr(self.evictions, reason, getattr(self.evictions, reason) + 1)
        return dropped

    # -------------------------------------------------------------------------------------------- internals

    def _stamp(self) -> None:
        b, now = self._b, int(self._clock())
        b.conns.tick = b.causes.tick = b.procs.tick = now

    def _cutoff(self) -> int:
        return int(self._clock()) - IDLE_S

    def _evict_idle(self, n: int) -> int:
        """Evict idle entries, least recently used first, until the state holds `n` bytes or none is idle."""
        if self.bytes <= n:
            return 0
        b, cutoff, ev = self._b, self._cutoff(), self.evictions
        ev.enforced += 1
        # Every table is in least-recently-used order and stamps what it touches: the idle entries are a prefix.
        victims: list[Callable[[], int]] = []
        victims += [lambda k=k: self._evict_thread(k)
                    for k, _, busy in takewhile(lambda e: e[1] <= cutoff, b.causes.threads()) if not busy]
        victims += [lambda c=c: self._evict_conn(c)
                    for c in takewhile(lambda c: c.tick <= cutoff, b.conns) if not b.conns.busy(c)]
        # A connect() whose connection went idle, or that no data followed for IDLE_S (the probes' clock is
        # CLOCK_MONOTONIC, as time.monotonic): its first call will not come.
        victims += [lambda k=k: self._forget_connect(k) for k, began_ns in b.causes.connects()
                    if ((c := b.conns.get(k[1])) is None and began_ns <= cutoff * 1_000_000_000)
                    or (c is not None and c.tick <= cutoff and not b.conns.busy(c))]
        victims += [lambda p=p: self._evict_proc(p)
                    for p in takewhile(lambda p: p.tick <= cutoff, b.procs) if p.pid not in b.conns.by_pid]
        dropped, held = 0, b.causes.held_bytes  # idle entries hold no calls
        for evict in victims:
            if self._table_bytes() + held <= n:
                break
            dropped += evict()
            ev.idle += 1
        return dropped

    def _evict_conn(self, conn: Conn) -> int:
        lost = self._b.conns.evict(conn)
        self.evictions.connections += 1
        self.evictions.requests_dropped += lost
        return lost

    def _evict_thread(self, key: tuple[int, int]) -> int:
        self._b.causes.evict_thread(key)
        self.evictions.threads += 1
        return 0

    def _evict_proc(self, proc: Proc) -> int:
        self._b.procs.evict(proc.pid)
        self.evictions.processes += 1
        return 0

    def _forget_connect(self, key: tuple[int, int]) -> int:
        self._b.causes.forget_connect(key)
        self.evictions.connects += 1
        return 0

