"""The testbed's scoring, on hand-made span sets whose right answers are known."""
from __future__ import annotations

import pytest

from bench.accuracy_score import (
    OracleEntry,
    Score,
    mqtt_key,
    oracle_entry,
    pooled,
    rid_of,
    score,
    wire_hop_problems,
)
from edge.model import Resource, Source, Span, SpanKind, new_span_id, new_trace_id

FRONT, BACK, DB, PROXY = 100, 200, 300, 400


def kspan(kind: SpanKind, rid: str, pid: int, trace: bytes, parent: bytes = b"") -> Span:
    """A kernel HTTP span as the probes make it (rid in url.query)."""
    return Span(trace, new_span_id(), "GET", 0, 10, parent_span_id=parent, kind=kind,
                attributes={"url.query": f"rid={rid}&prid=x", "helix.source": "ebpf"},
                resource=Resource.of({"process.pid": pid}), source=Source.EBPF)


def sdk(kind: SpanKind, rid: str, pid: int, trace: bytes, parent: bytes = b"") -> Span:
    """An OpenTelemetry SDK span carrying its oracle rid."""
    return Span(trace, new_span_id(), "op", 0, 10, parent_span_id=parent, kind=kind,
                attributes={"oracle.rid": rid, "helix.source": "sdk-otlp"}, resource=Resource.of({"process.pid": pid}))


# a1 (front, root) -> b1 (back, context on the wire) -> c1 (db, no context)
ORACLE = [OracleEntry("a1", None, "a1", "front", FRONT), OracleEntry("b1", "a1", "a1", "back", BACK, ctx=True),
          OracleEntry("c1", "b1", "a1", "db", DB)]


def chain(t: bytes) -> list[Span]:
    a = kspan(SpanKind.SERVER, "a1", FRONT, t)
    ca = kspan(SpanKind.CLIENT, "b1", FRONT, t, a.span_id)
    b = kspan(SpanKind.SERVER, "b1", BACK, t, ca.span_id)
    cb = kspan(SpanKind.CLIENT, "c1", BACK, t, b.span_id)
    c = kspan(SpanKind.SERVER, "c1", DB, t, cb.span_id)
    return [a, ca, b, cb, c]


def figures(s: Score) -> tuple[float, ...]:
    return s.traceid_match, s.parent_precision, s.parent_recall, s.coverage, s.false_link_rate


def test_a_perfect_chain_scores_one_and_repeated_spans_count_once() -> None:
    spans = chain(new_trace_id())
    s = score(spans + spans[:2], ORACLE)
    assert figures(s) == (1, 1, 1, 1, 0)
    assert s.spans == 5 and s.requests == 3 and s.tid_judged == 1 and s.links == 4
    assert wire_hop_problems(spans, ORACLE) == []


def test_missing_span_wrong_link_and_other_trace() -> None:
    t, t2 = new_trace_id(), new_trace_id()
    other = kspan(SpanKind.SERVER, "z9", FRONT, t2)
    a = kspan(SpanKind.SERVER, "a1", FRONT, t)
    b = kspan(SpanKind.SERVER, "b1", BACK, t2, other.span_id)  # joined to a request of another true trace
    oracle = ORACLE + [OracleEntry("z9", None, "z9", "front", FRONT)]
    s = score([a, b, other], oracle)
    assert s.coverage == 3 / 4  # c1 has no span
    assert (s.linked, s.linked_right) == (1, 0) and s.parent_precision == 0.0
    assert s.with_parent == 2 and s.parent_recall == 0.0
    assert s.traceid_match == 0.0  # b1 carried context but is not in a1's trace
    assert s.false_link_rate == 1.0
    problems = wire_hop_problems([a, b, other], oracle)
    assert any("c1" in p and "no span" in p for p in problems)
    assert any("b1" in p and "not in the trace" in p for p in problems)
    assert any("b1" in p and "hangs under z9" in p for p in problems)


def test_traceid_match_is_judged_only_where_context_was_on_the_wire() -> None:
    t = new_trace_id()
    a, ca, b, cb, _ = chain(t)
    c = kspan(SpanKind.SERVER, "c1", DB, new_trace_id())  # no context into c1: a new trace, unlinked
    s = score([a, ca, b, cb, c], ORACLE)
    assert s.tid_judged == 1 and s.traceid_match == 1.0
    assert s.parent_recall == 1 / 2 and s.parent_precision == 1.0
    assert wire_hop_problems([a, ca, b, cb, c], ORACLE) == []  # c1's hop had no context: not judged there


def test_the_handler_comes_from_the_process_that_handled_the_request() -> None:
    t = new_trace_id()
    a = sdk(SpanKind.SERVER, "a1", FRONT, t)
    ca = sdk(SpanKind.CLIENT, "b1", FRONT, t, a.span_id)
    proxy_in = kspan(SpanKind.SERVER, "b1", PROXY, t, ca.span_id)  # nginx sees the same rid
    proxy_out = kspan(SpanKind.CLIENT, "b1", PROXY, t, proxy_in.span_id)
    b = kspan(SpanKind.SERVER, "b1", BACK, new_trace_id())  # the backend's own span: not linked
    s = score([a, ca, proxy_in, proxy_out, b], ORACLE[:2])
    assert s.coverage == 1.0
    assert s.parent_recall == 0.0, "the proxy's span must not stand in for the backend's"
    b_linked = kspan(SpanKind.SERVER, "b1", BACK, t, proxy_out.span_id)
    s = score([a, ca, proxy_in, proxy_out, b_linked], ORACLE[:2])
    assert figures(s) == (1, 1, 1, 1, 0)


def test_sdk_span_is_preferred_over_the_kernel_span_of_the_same_request() -> None:
    t = new_trace_id()
    a = kspan(SpanKind.SERVER, "a1", FRONT, t)
    k_b = kspan(SpanKind.SERVER, "b1", BACK, t, a.span_id)
    sdk_b = sdk(SpanKind.SERVER, "b1", BACK, new_trace_id())
    s = score([a, k_b, sdk_b], ORACLE[:2])
    assert s.parent_recall == 0.0 and s.traceid_match == 0.0, "the SDK span handles b1, in a trace of its own"


def test_a_parent_in_another_trace_is_a_broken_link() -> None:
    t = new_trace_id()
    a, ca, b, cb, c = chain(t)
    split = Span(new_trace_id(), cb.span_id, cb.name, 0, 10, parent_span_id=b.span_id, kind=SpanKind.CLIENT,
                 attributes=dict(cb.attributes), resource=cb.resource, source=Source.EBPF)
    s = score([a, ca, b, split, c], ORACLE)
    assert s.orphans == 2  # c names a parent absent from its trace; so does the split client span
    assert s.parent_recall == 1 / 2


def test_mqtt_spans_map_through_topic_and_packet_id() -> None:
    t = new_trace_id()
    oracle = [OracleEntry("p1", None, "p1", "publisher", FRONT, mqtt=mqtt_key("send", "acc/orders", 7)),
              OracleEntry("r1", "p1", "p1", "subscriber", BACK, ctx=True, mqtt=mqtt_key("receive", "acc/orders", 3))]
    keys = {o.mqtt: o.rid for o in oracle if o.mqtt}
    producer = Span(t, new_span_id(), "publish", 0, 1, kind=SpanKind.PRODUCER, source=Source.EBPF,
                    attributes={"messaging.destination.name": "acc/orders", "messaging.message.id": "7",
                                "helix.source": "ebpf"}, resource=Resource.of({"process.pid": FRONT}))
    consumer = Span(t, new_span_id(), "receive", 2, 3, parent_span_id=producer.span_id, kind=SpanKind.CONSUMER,
                    source=Source.EBPF, resource=Resource.of({"process.pid": BACK}),
                    attributes={"messaging.destination.name": "acc/orders", "messaging.message.id": "3",
                                "helix.source": "ebpf"})
    assert rid_of(producer, keys) == "p1" and rid_of(consumer, keys) == "r1"
    assert rid_of(consumer, {}) is None
    assert figures(score([producer, consumer], oracle)) == (1, 1, 1, 1, 0)


def test_oracle_lines_and_pooling() -> None:
    e = oracle_entry({"rid": "b1", "parent_rid": "a1", "trace": "a1", "service": "back", "ts": 1, "pid": 5,
                      "ctx": True, "mqtt": None})
    assert e == OracleEntry("b1", "a1", "a1", "back", 5, True, None)
    assert oracle_entry({"rid": "a1", "parent_rid": None, "trace": "a1"}).parent_rid is None
    x = Score(requests=10, covered=10, with_parent=5, linked=5, linked_right=5, links=4, spans=20)
    y = Score(requests=10, covered=5, with_parent=5, linked=5, linked_right=0, links=4, false_links=4, spans=7)
    p = pooled([x, y])
    assert p.parent_precision == 0.5 and p.coverage == 0.75 and p.false_link_rate == 0.5 and p.spans == 27
    assert Score().as_dict()["parent_precision"] == 1.0, "nothing judged is not a failure"
    assert Score().false_link_rate == 0.0


@pytest.mark.parametrize("query", ["rid=ab-1", "prid=x&rid=ab-1", "trace=q&rid=ab-1&prid=x"])
def test_rid_is_read_from_any_position_of_the_query(query: str) -> None:
    s = Span(new_trace_id(), new_span_id(), "GET", 0, 1, attributes={"url.query": query})
    assert rid_of(s) == "ab-1"
    assert rid_of(Span(new_trace_id(), new_span_id(), "GET", 0, 1, attributes={"url.query": "prid=ab-1"})) is None


def test_a_grpc_span_speaks_for_the_rid_its_call_carried_as_metadata() -> None:
    # the agent keeps the `oracle-rid` metadata of a call as a one-element list attribute
    attrs = {"rpc.system": "grpc", "rpc.grpc.request.metadata.oracle-rid": ["g-7"]}
    s = Span(new_trace_id(), new_span_id(), "acc.Chain/Call", 0, 1, kind=SpanKind.SERVER, attributes=attrs)
    assert rid_of(s) == "g-7"
    assert rid_of(Span(new_trace_id(), new_span_id(), "acc.Chain/Call", 0, 1, attributes={"rpc.system": "grpc"})) is None
