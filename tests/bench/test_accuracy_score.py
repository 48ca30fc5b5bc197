"""The testbed's scoring, on hand-made traces whose right answers are known."""
from __future__ import annotations

from bench.accuracy_score import OracleEntry, rid_of, score
from edge.model import Source, Span, SpanKind, new_span_id, new_trace_id

T = new_trace_id()


def server(rid: str, parent: bytes = b"", trace: bytes = T, ebpf: bool = True) -> Span:
    attrs = {"url.query": f"rid={rid}&prid=x", "helix.source": "ebpf" if ebpf else "sdk-otlp"}
    return Span(trace, new_span_id(), "GET", 0, 10, parent_span_id=parent, kind=SpanKind.SERVER, attributes=attrs,
                source=Source.EBPF if ebpf else Source.SDK_OTLP)


def client(rid: str, parent: bytes, trace: bytes = T) -> Span:
    return Span(trace, new_span_id(), "GET", 0, 10, parent_span_id=parent, kind=SpanKind.CLIENT,
                attributes={"url.query": f"rid={rid}", "helix.source": "ebpf"}, source=Source.EBPF)


ORACLE = [OracleEntry("a1", None, "a1", "front"), OracleEntry("b1", "a1", "a1", "back"),
          OracleEntry("c1", "b1", "a1", "db")]


def test_perfect_chain_scores_one() -> None:
    a = server("a1")
    ca = client("b1", a.span_id)
    b = server("b1", ca.span_id)
    cb = client("c1", b.span_id)
    c = server("c1", cb.span_id)
    s = score([a, ca, b, cb, c], ORACLE)
    assert (s.traceid_match, s.parent_precision, s.parent_recall, s.coverage, s.false_link_rate) == (1, 1, 1, 1, 0)


def test_missing_link_wrong_link_and_missing_span() -> None:
    other = server("z9", trace=new_trace_id())
    a = server("a1")
    b = server("b1", other.span_id, trace=other.trace_id)  # linked to a request of another trace
    oracle = ORACLE + [OracleEntry("z9", None, "z9", "front")]
    s = score([a, b, other], oracle)
    assert s.coverage == 3 / 4  # c1 has no span
    assert s.parent_precision == 0.0  # the one link made is wrong
    assert s.parent_recall == 0.0
    assert s.traceid_match == 0.0
    assert s.false_link_rate == 1.0


def test_sdk_span_is_preferred_as_the_handler_and_rids_are_read_everywhere() -> None:
    sdk = Span(T, new_span_id(), "riskReview", 0, 1, kind=SpanKind.SERVER, attributes={"oracle.rid": "b1"})
    assert rid_of(sdk) == "b1"
    consumer = Span(T, new_span_id(), "receive", 0, 1, kind=SpanKind.CONSUMER,
                    attributes={"messaging.destination.name": "acc/msg/abc"})
    assert rid_of(consumer) == "abc.recv"
    a = server("a1")
    k_b = server("b1", a.span_id)
    sdk_b = Span(T, new_span_id(), "riskReview", 0, 1, kind=SpanKind.SERVER, parent_span_id=b"",
                 attributes={"oracle.rid": "b1", "helix.source": "sdk-otlp"})
    s = score([a, k_b, sdk_b], ORACLE[:2])
    assert s.parent_recall == 0.0, "the SDK span handles b1, and it names no parent"
