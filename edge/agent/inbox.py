"""The bounded inbox between sources and the pipeline: byte-accounted, never blocking a source."""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..model import Source, Span

__all__ = ["SpanInbox", "InboxStats"]


@dataclass(slots=True)
class InboxStats:
    """What the inbox took in and what it refused, by source."""

    accepted: dict[str, int]
    dropped_full: dict[str, int]


class SpanInbox:
    """A FIFO of span lists bounded in bytes (estimated with `Span.approx_size`); Budgeted by the memory governor.

    `on_drop` sees the spans the inbox lets go of under memory pressure (the agent counts them into RED metrics).
    """

    def __init__(self, max_bytes: int, on_drop: Callable[[list[Span]], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self.bytes = 0
        self._items: deque[tuple[list[Span], int]] = deque()
        self._ready = asyncio.Event()
        # Spans leaving is the moment room appears: sources holding data back for room wait on this, not on a poll
        # (a 10 ms poll left the pipeline idle a third of a burst).
        self._taken = asyncio.Event()
        self._taken_listeners: list[Callable[[], None]] = []
        self.stats = InboxStats({s.value: 0 for s in Source}, {s.value: 0 for s in Source})

    def has_room(self, nbytes: int) -> bool:
        """Whether `nbytes` more would fit; receivers that can push back (OTLP) ask first."""
        return self.bytes + nbytes <= self.max_bytes

    def put(self, spans: list[Span], source: Source) -> int:
        """Queue spans; returns how many fit. What does not fit is counted as dropped."""
        if not spans:
            return 0
        size = sum(s.approx_size() for s in spans)
        if not self.has_room(size):
            # Keep as many as fit rather than refusing the whole list: nothing is lost that did not have to be.
            kept: list[Span] = []
            room = self.max_bytes - self.bytes
            kept_size = 0
            for s in spans:
                sz = s.approx_size()
                if kept_size + sz > room:
                    break
                kept.append(s)
                kept_size += sz
            self.stats.dropped_full[source.value] += len(spans) - len(kept)
            spans, size = kept, kept_size
            if not spans:
                return 0
        self._items.append((spans, size))
        self.bytes += size
        self.stats.accepted[source.value] += len(spans)
        self._ready.set()
        return len(spans)

    async def get(self, max_spans: int = 4096) -> list[Span]:
        """Wait for spans and take up to about `max_spans` of them."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        out: list[Span] = []
        while self._items and len(out) < max_spans:
            spans, size = self._items.popleft()
            self.bytes -= size
            out.extend(spans)
        self._taken.set()
        for listener in self._taken_listeners:
            listener()
        return out

    def on_taken(self, listener: Callable[[], None]) -> None:
        """Call `listener` (synchronously, from the consumer) whenever spans leave the inbox."""
        self._taken_listeners.append(listener)

    async def taken(self, timeout: float) -> None:
        """Wait until spans next leave the inbox, or `timeout` seconds (other things change the room too)."""
        self._taken.clear()
        try:
            await asyncio.wait_for(self._taken.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def set_bound(self, n: int) -> int:
        """Take no more than `n` bytes from now on (what is queued stays); nothing is dropped."""
        self.max_bytes = n
        return 0

    def drop_idle(self) -> int:
        """Nothing waiting at the door is idle: it has just arrived. Returns 0."""
        return 0

    def drop_all(self) -> int:
        """Drop every span waiting (memory pressure), after `on_drop` saw them; returns how many."""
        spans = self.drain()
        if spans and self._on_drop is not None:
            self._on_drop(spans)
        return len(spans)

    def drain(self) -> list[Span]:
        """Take everything now (at shutdown)."""
        out = [s for spans, _ in self._items for s in spans]
        self._items.clear()
        self.bytes = 0
        return out

    def spans(self) -> Iterator[Span]:
        """Every span waiting now, oldest first."""
        for spans, _ in self._items:
            yield from spans

    def __len__(self) -> int:
        return sum(len(spans) for spans, _ in self._items)
