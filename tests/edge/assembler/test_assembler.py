from __future__ import annotations

from dataclasses import replace

from edge.assembler import Assembler
from edge.model import Span, new_span_id, new_trace_id


def test_redelivered_spans_are_dropped_and_counted() -> None:
    a = Assembler(memory=100)
    spans = [Span(new_trace_id(), new_span_id(), f"s{i}", 0, 1) for i in range(5)]
    assert a.process(spans) == spans
    again = [replace(spans[1]), replace(spans[3]), Span(new_trace_id(), new_span_id(), "new", 0, 1)]
    out = a.process(again)
    assert [s.name for s in out] == ["new"]
    assert a.stats.duplicates == 2 and a.stats.spans_in == 8


def test_same_span_id_in_another_trace_is_not_a_duplicate() -> None:
    a = Assembler()
    sid = new_span_id()
    out = a.process([Span(new_trace_id(), sid, "a", 0, 1), Span(new_trace_id(), sid, "b", 0, 1)])
    assert len(out) == 2


def test_memory_is_bounded() -> None:
    a = Assembler(memory=10)
    first = Span(new_trace_id(), new_span_id(), "old", 0, 1)
    a.process([first])
    a.process([Span(new_trace_id(), new_span_id(), "x", 0, 1) for _ in range(20)])
    assert len(a._seen) == 10
    assert a.process([replace(first)]) != []  # forgotten after the window, by design
