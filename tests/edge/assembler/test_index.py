from __future__ import annotations

import random

from edge.assembler.index import Entry, SpanIndex, conn_key
from edge.model import Span, SpanKind, new_span_id, new_trace_id

from .test_assembler import A, B, C, D, kspan


def _scan(index: SpanIndex, key: tuple[str, int, str, int], trace: bytes, parent: bytes) -> list[Entry]:
    """What the rules took before the index kept client spans by context: every client span of the connection whose
    trace and parent are these now."""
    return [c for c in index.clients_by_conn.get(key, []) if c.span.trace_id == trace and c.span.parent_span_id == parent]


def test_clients_by_context_follow_what_the_spans_name_now() -> None:
    rng = random.Random(5)
    index = SpanIndex()
    traces = [new_trace_id() for _ in range(4)]
    parents = [new_span_id() for _ in range(4)] + [b""]
    entries = []
    for i in range(300):
        local, peer = rng.choice([(A, B), (C, D), (B, A)])
        wire = (rng.choice(traces), rng.choice(parents[:4])) if rng.random() < 0.7 else None
        kind = rng.choice([SpanKind.CLIENT, SpanKind.CLIENT, SpanKind.SERVER])
        e = Entry(kspan(f"x{i}", kind, i, i + 1, pid=1, tid=1, local=local, peer=peer, wire=wire), arrived=i / 100)
        index.add(e)
        entries.append(e)
        if rng.random() < 0.6:
            # released as the assembler does: some with a parent and the trace of the group they left in
            x = rng.choice(entries)
            if not x.released:
                if rng.random() < 0.5:
                    old = x.span.parent_span_id
                    x.span.trace_id, x.span.parent_span_id = rng.choice(traces), rng.choice(parents)
                    index.recontext(x, old)
                x.release()
        if i % 50 == 49:
            index.expire(i / 100 - 1.0)
    assert len(index) < len(entries)  # expiry took released spans, stepping over held ones
    _check(index, entries, traces, parents)
    # then with every span released: expiry takes the heads of the tables' lists
    for e in entries:
        if not e.released:
            e.release()
    for before in (1.5, 2.0, 2.5):
        assert index.expire(before)
        _check(index, entries, traces, parents)


def _check(index: SpanIndex, entries: list[Entry], traces: list[bytes], parents: list[bytes]) -> None:
    live = set(map(id, index.order))
    for t, table in enumerate(index._tables()):
        for key, lst in table.items():
            assert lst and all(id(x) in live for x in lst) and lst.key == key  # type: ignore[attr-defined]
        # each entry of the table has its slot in the table's expiry queue, in arrival order
        assert sum(map(len, table.values())) == len(index._queues[t])
    clients = [e for e in index.order if e.span.kind == SpanKind.CLIENT and e.span.attributes.get("helix.context_from")
               is not None]
    assert sum(len(v) for v in index.clients_by_conn.values()) == len(clients)
    keys = {conn_key(e.span) for e in entries if isinstance(e.span, Span)} | set(index.clients_by_conn)
    for key in keys:
        for trace in traces:
            for parent in parents:
                # the same spans (one re-keyed comes last: the rule picks by start time, never by order)
                got = index.clients_in_context(key, trace, parent)
                assert sorted(map(id, got)) == sorted(map(id, _scan(index, key, trace, parent)))
                assert len(got) == len(set(map(id, got)))


def test_a_span_changed_without_recontext_is_not_found_by_its_new_context() -> None:
    # the lookup is by what the span named when indexed: recontext is what moves it
    index = SpanIndex()
    trace, parent = new_trace_id(), new_span_id()
    e = Entry(kspan("c", SpanKind.CLIENT, 0, 1, pid=1, tid=1, local=A, peer=B, wire=(trace, parent)), arrived=0.0)
    index.add(e)
    new_parent = new_span_id()
    e.span.parent_span_id = new_parent
    assert index.clients_in_context((*A, *B), trace, new_parent) == []
    index.recontext(e, parent)
    assert index.clients_in_context((*A, *B), trace, new_parent) == [e]
    assert index.clients_in_context((*A, *B), trace, parent) == []


class _NoPass(dict):  # type: ignore[type-arg]
    """A table that fails when walked whole: expiry must reach what expires without a pass over every key."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("a pass over every key")

    def keys(self):  # type: ignore[no-untyped-def]
        raise AssertionError("a pass over every key")

    items = values = keys


def test_expiry_takes_what_expires_without_a_pass_over_every_connection() -> None:
    # A span per new connection (a client's new connection per request): thousands of keys held, a few expire a tick.
    index = SpanIndex()
    index.clients_by_conn = _NoPass()
    entries = []
    for i in range(5000):
        e = Entry(kspan(f"c{i}", SpanKind.CLIENT, i, i + 1, pid=1, tid=1, local=("10.0.0.1", 10000 + i), peer=B,
                        wire=(new_trace_id(), new_span_id())), arrived=i / 1000)
        index.add(e)
        e.release()
        entries.append(e)
    assert index.expire(0.010) == 10
    assert len(dict.keys(index.clients_by_conn)) == 4990 and index.parent_links == 4990
    assert index.clients_in_context(("10.0.0.1", 10010, *B), entries[10].span.trace_id,
                                    entries[10].span.parent_span_id) == [entries[10]]
    assert index.clients_in_context(("10.0.0.1", 10009, *B), entries[9].span.trace_id,
                                    entries[9].span.parent_span_id) == []
