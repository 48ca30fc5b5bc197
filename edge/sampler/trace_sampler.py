"""Head and tail sampling combined: a trace is kept when either keeps it.

Head: consistent probability sampling at `ratio` times the memory governor's pressure factor; kept spans carry
`ot=th:` with the threshold actually applied. Tail: what the head rejected waits for the tail rules. A span kept
only by a tail rule was not kept with a known probability, so its `th` is erased (the OpenTelemetry sampling
specification's way of saying "adjusted count unknown"); writing `th:0` would claim it stands for exactly one
trace, and keeping the head's `th` would claim it stands for 1/ratio of them, both untrue.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..model import Span
from .consistent import ConsistentSampler, threshold_for_ratio, with_threshold, without_threshold
from .decisions import DecisionMemory
from .tail import TailRules, TailSampler

__all__ = ["TraceSampler", "TraceSamplerStats", "MIN_PRESSURE"]

MIN_PRESSURE = 1.0 / 1024  # the governor never lowers the keep-probability below ratio/1024


@dataclass(slots=True)
class TraceSamplerStats:
    """Spans kept (by head, by tail) and dropped."""

    kept: int = 0
    dropped: int = 0
    kept_head: int = 0
    kept_tail: int = 0


class TraceSampler:
    """`decide(spans)` → (kept, dropped); call it regularly (also with no spans) so waiting traces get decided."""

    def __init__(self, ratio: float = 1.0, rules: TailRules | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = TraceSamplerStats()
        self.ratio = ratio
        self.pressure = 1.0
        self.head = ConsistentSampler(ratio)
        self.tail = TailSampler(rules, clock)
        self._clock = clock
        self._observers: list[Callable[[int], None]] = []
        # A trace keeps the head decision of its first span, made at the threshold of that moment: deciding each span
        # at the threshold of its own moment kept parts of traces (their parents dropped: orphans).
        self.decisions = DecisionMemory()

    # -------------------------------------------------------------------------------------------- settings

    def set_rules(self, ratio: float | None = None, rules: TailRules | None = None) -> int:
        """Change the ratio and/or the tail rules while running; returns how many spans a smaller buffer dropped."""
        if ratio is not None:
            threshold_for_ratio(ratio)  # validates
            self.ratio = ratio
            self._apply()
        dropped = self.tail.set_rules(rules) if rules is not None else 0
        self.stats.dropped += dropped
        return dropped

    def set_pressure(self, factor: float) -> None:
        """Scale the keep-probability down (1 = as configured); the memory governor's first lever."""
        self.pressure = min(1.0, max(MIN_PRESSURE, factor))
        self._apply()

    def on_threshold(self, callback: Callable[[int], None]) -> None:
        """Call `callback(threshold)` now and whenever the applied threshold changes (ratio change or pressure)."""
        self._observers.append(callback)
        callback(self.head.threshold)

    def _apply(self) -> None:
        before = self.head.threshold
        self.head.set_ratio(self.ratio * self.pressure)
        if self.head.threshold != before:
            for callback in list(self._observers):
                callback(self.head.threshold)

    @property
    def threshold(self) -> int:
        """The rejection threshold applied now (0 keeps everything)."""
        return self.head.threshold

    @property
    def effective_ratio(self) -> float:
        """The keep-probability applied now."""
        return self.head.ratio

    @property
    def bytes(self) -> int:
        """Memory held by the tail buffer (the governor's Budgeted `tail`)."""
        return self.tail.bytes

    # -------------------------------------------------------------------------------------------- flow

    def decide(self, spans: list[Span], now: float | None = None) -> tuple[list[Span], int]:
        """Split into (kept, number dropped); spans waiting for a tail decision are in neither until decided."""
        now = self._clock() if now is None else now
        threshold = self.head.threshold
        kept: list[Span] = []
        rejected: list[Span] = []
        keeps, decided = self.head.keeps, self.decisions
        for s in spans:
            th = decided.get(s.trace_id)
            if th is None:
                th = threshold if threshold == 0 or keeps(s.trace_id, s.trace_state) else -1
                decided.remember(s.trace_id, th)
            if th < 0:
                rejected.append(s)
                continue
            if th:
                s.trace_state = with_threshold(s.trace_state, th)  # keep-all leaves the tracestate untouched
            kept.append(s)
        if kept and threshold:
            self.tail.observe_kept(kept)
        self.stats.kept_head += len(kept)
        tail_kept, dropped = self.tail.offer(rejected, now) if rejected else ([], 0)
        dropped += self.tail.expire(now)
        for s in tail_kept:
            s.trace_state = without_threshold(s.trace_state)
        self.stats.kept_tail += len(tail_kept)
        out = kept + tail_kept if tail_kept else kept
        self.stats.kept += len(out)
        self.stats.dropped += dropped
        return out, dropped

    def flush(self) -> int:
        """Decide every waiting trace now (at shutdown); returns how many spans that dropped."""
        dropped = self.tail.expire(flush=True)
        self.stats.dropped += dropped
        return dropped

    def drop_idle(self) -> int:
        """Drop the undecided traces quiet for half their decision wait (memory pressure); returns how many spans."""
        dropped = self.tail.drop_idle()
        self.stats.dropped += dropped
        return dropped

    def drop_all(self) -> int:
        """Drop every undecided trace (memory pressure); returns how many spans that dropped."""
        dropped = self.tail.drop_all()
        self.stats.dropped += dropped
        return dropped

    def set_bound(self, max_bytes: int) -> int:
        """Bound the tail buffer (the memory governor's plan and pressure; never above its configured size);
        returns how many spans that dropped."""
        dropped = self.tail.set_capacity(max_bytes)
        self.stats.dropped += dropped
        return dropped
