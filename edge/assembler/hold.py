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
arrives, when the process's SDK has exported past the span (twins: an export holding a span that ended after the
request did holds the request's own SDK span, if it has one), or after `sdk_wait`; a twin whose SDK exported
meanwhile, but not yet past it, waits for that SDK's next export (up to EXTEND_MAX times `sdk_wait`). The spans
joined to a waiting one (its trace depends on it) wait with it; the memory bound releases them early, counted.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["SdkPresence", "EXPORT_MARGIN_NS", "EXTEND_MAX", "ByStart"]

T = TypeVar("T")

# An SDK queues a span when it ends and exports its queue oldest first, so an export holding a span that ended this
# long after a request's kernel span holds that request's SDK server span too, if there is one (it ends as the
# handler returns, just after the response's last write; the margin covers a thread preempted in between). Judged on
# the spans' own clocks: when an export reaches the agent says nothing of when the SDK took it (a loaded node, the
# exporter's retries and the agent's inbox delay it by seconds), so arrival times ended waits too early.
EXPORT_MARGIN_NS = 500_000_000
# A twin whose SDK exported after it arrived, but not past it, waits a further `sdk_wait` from that export: the SDK
# is alive and late (load), and its next export decides. Never longer than this many times `sdk_wait` in all.
EXTEND_MAX = 3


@dataclass(slots=True)
class _Process:
    first_seen: float
    sdk: bool = False
    export_at: float = -math.inf  # when the latest spans of its SDK arrived
    exported_end_ns: int = 0  # the latest end (the spans' own clock) of a span its SDK exported


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

    def sdk_seen(self, pid: int, now: float, end_ns: int = 0) -> None:
        """A span of `pid`'s SDK, ended at `end_ns`, arrived now."""
        p = self._get(pid, now)
        p.sdk = True
        p.export_at = now
        if end_ns > p.exported_end_ns:
            p.exported_end_ns = end_ns

    def runs_sdk(self, pid: int, now: float) -> None:
        """`pid` runs an SDK (it put trace context on the wire that it had not received), though none arrived yet."""
        self._get(pid, now).sdk = True

    def may_have_sdk(self, pid: int | None, now: float) -> bool:
        """Whether spans of `pid`'s SDK may still come: it has one, or it is too young to tell."""
        if pid is None:
            return False
        p = self._procs.get(pid)
        return p is not None and (p.sdk or now - p.first_seen < self.wait)

    def exported_past(self, pid: int, end_ns: int) -> bool:
        """Whether `pid`'s SDK exported a span that ended at least EXPORT_MARGIN_NS after `end_ns`."""
        p = self._procs.get(pid)
        return p is not None and p.exported_end_ns >= end_ns + EXPORT_MARGIN_NS

    def twin_deadline(self, pid: int, arrived: float) -> float:
        """Until when a request that arrived at `arrived` waits for its SDK span: `wait` after it arrived, or after
        the SDK's latest export since (it did not reach past the request), at most EXTEND_MAX times `wait`."""
        p = self._procs.get(pid)
        if p is None or p.export_at <= arrived:
            return arrived + self.wait
        return min(p.export_at, arrived + (EXTEND_MAX - 1) * self.wait) + self.wait

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
