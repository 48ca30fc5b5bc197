"""Assembler stage: the place where spans of different sources meet before sampling.

For now it removes redelivered spans — MQTT QoS 1 and OTLP retries both deliver at least once, so the same
span can arrive twice — within a bounded memory of recent span ids.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..model import Span

__all__ = ["Assembler", "AssemblerStats"]


@dataclass(slots=True)
class AssemblerStats:
    """Counters of the assembler."""

    spans_in: int = 0
    duplicates: int = 0


class Assembler:
    """Drops spans whose (trace id, span id) was seen among the last `memory` spans."""

    def __init__(self, memory: int = 65_536) -> None:
        self.memory = memory
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self.stats = AssemblerStats()

    def process(self, spans: list[Span]) -> list[Span]:
        """Return the spans not seen before, in order."""
        out: list[Span] = []
        seen = self._seen
        for s in spans:
            key = s.trace_id + s.span_id
            if key in seen:
                self.stats.duplicates += 1
                continue
            seen[key] = None
            out.append(s)
        while len(seen) > self.memory:
            seen.popitem(last=False)
        self.stats.spans_in += len(spans)
        return out
