"""The sampler's memory of the keep/drop decision of each recent trace, bounded in bytes by the memory governor.

A trace's spans leave the assembler over seconds (an SDK's a batch delay after the kernel's) while the governor moves
the threshold: each later span takes the decision of its trace's first (docs/accuracy.md, rule 5). Forgetting a
decision loses no span, but the trace's later spans are decided again at the threshold of their own moment, so under
pressure a trace can be kept in part: what the bound forgets is counted.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["DecisionMemory", "DecisionStats", "DECISION_MEMORY", "ENTRY_BYTES"]

# Traces remembered at most: a few seconds of traces at the testbed's rates (docs/accuracy.md, rule 5).
DECISION_MEMORY = 8192
# One entry: the 16-byte trace id as a bytes object and its slot and link in the ordered dict (the threshold is shared
# by the traces decided at one moment); tracemalloc's measure is in docs/accuracy.md, rule 5.
ENTRY_BYTES = 136


@dataclass(slots=True)
class DecisionStats:
    """Decisions forgotten because the governor bounded the memory below its size (their traces' later spans are
    decided again)."""

    forgotten_pressure: int = 0


class DecisionMemory:
    """Trace id → the threshold its trace was kept at (-1: rejected), the oldest forgotten first."""

    def __init__(self, size: int = DECISION_MEMORY) -> None:
        self.size = size
        self.max_entries = size  # lowered by the memory governor under pressure
        self.stats = DecisionStats()
        self._decided: OrderedDict[bytes, int] = OrderedDict()

    def get(self, trace_id: bytes) -> int | None:
        """The decision remembered for `trace_id`, or None."""
        return self._decided.get(trace_id)

    def remember(self, trace_id: bytes, threshold: int) -> None:
        """Remember a new trace's decision, forgetting the oldest past the bound."""
        decided = self._decided
        decided[trace_id] = threshold
        if len(decided) > self.max_entries:
            decided.popitem(last=False)
            if self.max_entries < self.size:
                self.stats.forgotten_pressure += 1

    def __len__(self) -> int:
        return len(self._decided)

    @property
    def bytes(self) -> int:
        """Estimated bytes held (the governor's accounting)."""
        return len(self._decided) * ENTRY_BYTES

    @property
    def ceiling(self) -> int:
        """The bytes of a full memory at its configured size (the governor never plans it above)."""
        return self.size * ENTRY_BYTES

    def set_bound(self, n: int) -> int:
        """Hold at most about `n` bytes (never more traces than its size); returns the spans dropped: none."""
        self.max_entries = max(0, min(self.size, n // ENTRY_BYTES))
        decided = self._decided
        excess = len(decided) - self.max_entries
        for _ in range(excess):
            decided.popitem(last=False)
        if excess > 0:
            self.stats.forgotten_pressure += excess
        return 0
