"""One byte budget for what the agent's servers hold of requests not yet handed on: wire bytes, inflated bytes.

Both receivers (OTLP/HTTP on edge/net/http_server.py, OTLP/gRPC on edge/net/grpc_server.py) take bytes from the
same budget *before* they read or inflate them, so the memory governor bounds all of it with one part ("receiver",
`Bounded`: `bytes`, `set_bound`). A request joins the budget when it starts (`join`), and is released whole when
its handler is done (`release`).

- Within the bound anyone may take. Beyond it only the oldest holder may: the oldest request always completes, so
  the budget never deadlocks on itself, and what is held stays under the bound plus one request.
- A holder that has taken nothing for STALL seconds while another waits is reclaimed: its `evict` callback closes
  its connection and its bytes are freed at once. A client that stops half-way cannot keep others out. A holder
  waiting for room itself, or one whose request has arrived whole (`settle`), is waiting on the agent, not
  stalled, and is never reclaimed.
- `on_freed` listeners are called whenever bytes are freed or the bound grows (the gRPC server reopens the flow
  control windows it held back); `wait_take` waits for that, in arrival order with no head-of-line blocking.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RequestBudget", "BudgetStats", "STALL"]

STALL = 1.0  # s without a byte taken after which a holder may be reclaimed for one that waits


@dataclass(slots=True)
class BudgetStats:
    """What the budget saw: most bytes held at once, requests that waited, holders reclaimed."""

    peak: int = 0
    waited: int = 0
    reclaimed: int = 0
    refused: int = 0  # waits that timed out


class _Hold:
    __slots__ = ("bytes", "last", "evict", "waits")

    def __init__(self, evict: Callable[[], None] | None, now: float) -> None:
        self.bytes = 0
        self.last = now
        self.evict = evict
        self.waits = False  # waiting on the agent (for room, or with its request whole): not to be reclaimed


class RequestBudget:
    """Bytes held in unfinished requests, bounded by `limit` (set by the memory governor)."""

    def __init__(self, limit: int, stall: float = STALL, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.stall = stall
        self._clock = clock
        self.bytes = 0
        self.stats = BudgetStats()
        self._held: dict[object, _Hold] = {}  # insertion order: the oldest holder first
        self._listeners: list[Callable[[], None]] = []
        self._waiters = 0
        self._freed: asyncio.Event | None = None

    # ------------------------------------------------------------------------------------------- governor

    def set_bound(self, n: int) -> int:
        """Hold at most about `n` bytes from now on (the governor's plan); nothing is dropped."""
        grew = n > self.limit
        self.limit = n
        if grew:
            self._notify()
        return 0

    # ------------------------------------------------------------------------------------------- holders

    def join(self, holder: object, evict: Callable[[], None] | None = None) -> None:
        """Register `holder` (a request) in arrival order; `evict` closes it if it stalls while others wait."""
        if holder not in self._held:
            self._held[holder] = _Hold(evict, self._clock())

    def oldest(self) -> object | None:
        """The holder that may always take."""
        return next(iter(self._held), None)

    def held(self, holder: object) -> int:
        """Bytes `holder` holds now."""
        h = self._held.get(holder)
        return h.bytes if h is not None else 0

    def fits(self, n: int) -> bool:
        """Whether `n` more bytes stay within the bound."""
        return self.bytes + n <= self.limit

    def take(self, holder: object, n: int, force: bool = False) -> bool:
        """Take `n` bytes for `holder` (joining it if new) if they fit, or if it is the oldest; False otherwise.

        `force`: count them whatever the answer (bytes that have arrived already); the answer still says whether
        they fitted.
        """
        h = self._held.get(holder)
        allowed = self.fits(n) or not self._held or next(iter(self._held)) is holder
        if not allowed and not force:
            return False
        if h is None:
            h = self._held[holder] = _Hold(None, self._clock())
        h.bytes += n
        h.last = self._clock()
        self.bytes += n
        if self.bytes > self.stats.peak:
            self.stats.peak = self.bytes
        return allowed

    def give_back(self, holder: object, n: int) -> None:
        """Return `n` of the bytes `holder` took (what it reserved and did not use)."""
        h = self._held.get(holder)
        if h is None or n <= 0:
            return
        n = min(n, h.bytes)
        h.bytes -= n
        self.bytes -= n
        self._notify()

    def release(self, holder: object) -> None:
        """`holder` is done: free everything it holds and forget it."""
        h = self._held.pop(holder, None)
        if h is None:
            return
        self.bytes -= h.bytes
        self._notify()

    async def wait_take(self, holder: object, n: int, timeout: float) -> bool:
        """Take `n` bytes for `holder`, waiting up to `timeout` s for them; False when they never fitted."""
        if self.take(holder, n):
            return True
        self.join(holder)
        h = self._held[holder]
        h.waits = True
        self.stats.waited += 1
        if self._freed is None:
            self._freed = asyncio.Event()
        deadline = self._clock() + timeout
        self._waiters += 1
        try:
            while True:
                self.reclaim()
                if self.take(holder, n):
                    return True
                left = deadline - self._clock()
                if left <= 0:
                    self.stats.refused += 1
                    return False
                self._freed.clear()
                try:
                    await asyncio.wait_for(self._freed.wait(), min(left, self.stall / 2))
                except asyncio.TimeoutError:
                    pass
        finally:
            self._waiters -= 1
            h.waits = False
            h.last = self._clock()

    def reclaim(self, waiting: bool = False) -> int:
        """Evict holders that took nothing for `stall` seconds, when someone waits (or `waiting`); returns how many."""
        if not (waiting or self._waiters) or not self._held:
            return 0
        now = self._clock()
        stalled = [(k, h) for k, h in self._held.items()
                   if h.evict is not None and not h.waits and now - h.last > self.stall]
        for key, h in stalled:
            self.stats.reclaimed += 1
            self.release(key)
            assert h.evict is not None
            h.evict()
        return len(stalled)

    def settle(self, holder: object) -> None:
        """`holder`'s request has arrived whole: from now on it waits on the agent and is never reclaimed."""
        h = self._held.get(holder)
        if h is not None:
            h.waits = True

    def touch(self, holder: object) -> None:
        """`holder` made progress without taking bytes (a slow client is not a stalled one)."""
        h = self._held.get(holder)
        if h is not None:
            h.last = self._clock()

    # ------------------------------------------------------------------------------------------- listeners

    def on_freed(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever bytes are freed or the bound grows."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        if self._freed is not None:
            self._freed.set()
        for listener in self._listeners:
            listener()

    def __len__(self) -> int:
        return len(self._held)
