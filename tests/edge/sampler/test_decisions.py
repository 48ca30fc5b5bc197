"""The sampler's decision memory: its byte estimate, the governor's bound on it, and what forgetting costs."""
from __future__ import annotations

import os
import tracemalloc

from edge.sampler import TraceSampler
from edge.sampler.decisions import DECISION_MEMORY, ENTRY_BYTES, DecisionMemory
from edge.sampler.consistent import threshold_for_ratio


def test_the_byte_estimate_matches_what_a_full_memory_allocates() -> None:
    th = threshold_for_ratio(0.1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        memory = DecisionMemory()
        for _ in range(DECISION_MEMORY):
            memory.remember(os.urandom(16), th)  # its own id: the spans that carried it have gone
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(memory) == DECISION_MEMORY
    assert 0.75 * allocated <= memory.bytes <= 1.25 * allocated


def test_a_bound_forgets_the_oldest_decisions_and_counts_them() -> None:
    memory = DecisionMemory(100)
    for i in range(100):
        memory.remember(i.to_bytes(16, "big"), -1)
    assert memory.stats.forgotten_pressure == 0  # full at its own size: the oldest roll over, nothing forced
    memory.remember((100).to_bytes(16, "big"), -1)
    assert len(memory) == 100 and memory.stats.forgotten_pressure == 0 and memory.get(bytes(16)) is None

    assert memory.set_bound(40 * ENTRY_BYTES) == 0  # no span is dropped
    assert len(memory) == 40 and memory.bytes == 40 * ENTRY_BYTES and memory.stats.forgotten_pressure == 60
    assert memory.get((60).to_bytes(16, "big")) is None and memory.get((100).to_bytes(16, "big")) == -1
    memory.remember((101).to_bytes(16, "big"), 0)  # while bounded, each roll-over is a forced one
    assert len(memory) == 40 and memory.stats.forgotten_pressure == 61

    memory.set_bound(10 * memory.ceiling)  # regrown: never above its own size
    assert memory.max_entries == 100


def test_a_trace_whose_decision_was_forgotten_is_decided_again_at_the_threshold_of_its_moment() -> None:
    from edge.model import Span

    def span(tid: bytes) -> Span:
        return Span(trace_id=tid, span_id=os.urandom(8), name="GET /", start_ns=1, end_ns=2)

    sampler = TraceSampler(1.0)
    tid = bytes.fromhex("00" * 9 + "01" * 7)  # randomness far below any threshold but 0: kept only at ratio 1
    kept, _ = sampler.decide([span(tid)])
    assert len(kept) == 1
    sampler.set_pressure(0.5)
    kept, _ = sampler.decide([span(tid)])
    assert len(kept) == 1  # remembered: kept with its trace's first span
    sampler.decisions.set_bound(0)
    assert sampler.decisions.stats.forgotten_pressure == 1
    kept, _ = sampler.decide([span(tid)])
    assert kept == []  # decided again, at ratio 0.5 this time
