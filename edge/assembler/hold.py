"""Which kernel spans wait for their process's SDK, and until when.

An OpenTelemetry SDK exports a span up to its batch delay after the span ended (5 s by default in every SDK), plus
the export itself. A kernel span that such a late span could still place waits for it, where the kernel alone
cannot decide:

- WAIT_TWIN: a request served without trace context in a process with an SDK, whose SDK may start a trace for it.
  When the request's calls carried that trace on the wire the kernel knows it at once (`born`, traces.py) and
  nothing waits; a request whose SDK calls nothing (or nothing that propagates) waits for its SDK span.
- WAIT_ORPHAN: a call for which no rule found a parent, in such a process: an SDK span still to come may contain it.

Only in processes that run an SDK, or whose SDK could still show up: those the agent first saw less than
`sdk_wait` ago (an SDK's first spans come a batch delay after its first requests). A wait ends when the SDK span
arrives, when the process's SDK has exported past the span (twins: a later export would have held it), or after
`sdk_wait`. The spans joined to a waiting one (its trace depends on it) wait with it; the memory bound releases
them early, counted.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["SdkPresence", "EXPORT_MARGIN_S", "ByStart"]

T = TypeVar("T")

# An export that reached the agent this long after a kernel span arrived holds every SDK span that ended before the
# kernel span did: the SDK had queued them when it exported (an SDK sends what it queued in one go; the margin
# covers the requests of one export and their way through the agent's inbox).
EXPORT_MARGIN_S = 1.0


@dataclass(slots=True)
class _Process:
    first_seen: float
    sdk: bool = False
    export_at: float = -math.inf  # when the latest spans of its SDK arrived


class SdkPresence:
    """What the assembler knows of each traced process's SDK: whether it has one, and when it last exported."""

    def __init__(self, wait: float, max_processes: int = 4096) -> None:
        self.wait = wait
        self.max_processes = max_processes
        self._procs: OrderedDict[int, _Process] = OrderedDict()

    def _get(self, pid: int, now: float) -> _Process:
        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = _Process(now)
            if len(self._procs) > self.max_processes:
                self._procs.popitem(last=False)
        else:
            self._procs.move_to_end(pid)
        return p

    def kernel_seen(self, pid: int, now: float) -> None:
        """A kernel span of `pid` arrived (the first one starts its learning time)."""
        self._get(pid, now)

    def sdk_seen(self, pid: int, now: float) -> None:
        """Spans of `pid`'s SDK arrived now."""
        p = self._get(pid, now)
        p.sdk = True
        p.export_at = now

    def runs_sdk(self, pid: int, now: float) -> None:
        """`pid` runs an SDK (it put trace context on the wire that it had not received), though none arrived yet."""
        self._get(pid, now).sdk = True

    def may_have_sdk(self, pid: int | None, now: float) -> bool:
        """Whether spans of `pid`'s SDK may still come: it has one, or it is too young to tell."""
        if pid is None:
            return False
        p = self._procs.get(pid)
        return p is not None and (p.sdk or now - p.first_seen < self.wait)

    def exported_after(self, pid: int, t: float) -> bool:
        """Whether `pid`'s SDK exported at least EXPORT_MARGIN_S after time `t`."""
        p = self._procs.get(pid)
        return p is not None and p.export_at >= t + EXPORT_MARGIN_S

    def exported_since(self, pid: int, t: float) -> bool:
        """Whether `pid`'s SDK exported at or after time `t`."""
        p = self._procs.get(pid)
        return p is not None and p.export_at >= t

    def __len__(self) -> int:
        return len(self._procs)


class ByStart(Generic[T]):
    """Items ordered by a start time, for the waiting spans of one process: an SDK span looks up the kernel spans
    around it or inside it without walking every span that waits (thousands at a few thousand requests/s). Items
    that stop waiting are dropped lazily, `live` tells which."""

    def __init__(self, live: Callable[[T], bool]) -> None:
        self._live = live
        self._keys: list[tuple[int, int]] = []  # (start, sequence)
        self._items: dict[int, T] = {}
        self._seq = 0
        self._compacted = 32  # size after the last compaction: the next one when twice that (amortised O(1) per add)

    def add(self, start: int, item: T) -> None:
        """Index `item` at `start`."""
        self._seq += 1
        insort(self._keys, (start, self._seq))
        self._items[self._seq] = item
        if len(self._keys) >= 2 * self._compacted:
            self._compact()

    def _compact(self) -> None:
        self._items = {k: v for k, v in self._items.items() if self._live(v)}
        self._keys = [k for k in self._keys if k[1] in self._items]
        self._compacted = max(32, len(self._keys))

    def starting_within(self, lo: int, hi: int) -> Iterator[T]:
        """Live items that start in [lo, hi]."""
        i = bisect_left(self._keys, (lo, 0))
        while i < len(self._keys) and self._keys[i][0] <= hi:
            item = self._items.get(self._keys[i][1])
            if item is not None and self._live(item):
                yield item
            i += 1

    def starting_by(self, t: int, limit: int) -> Iterator[T]:
        """Live items that start at or before `t`, latest first, at most `limit` looked at."""
        i = bisect_right(self._keys, (t, 1 << 62))
        while i > 0 and limit > 0:
            i -= 1
            limit -= 1
            item = self._items.get(self._keys[i][1])
            if item is not None and self._live(item):
                yield item

    def __len__(self) -> int:
        return len(self._items)
