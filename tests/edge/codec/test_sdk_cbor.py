from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.codec.sdk_cbor import Key, decode_payload, encode_payload, span_to_map
from edge.errors import DecodeError
from edge.model import Event, Link, Scope, Source, Span, SpanKind, StatusCode, new_span_id, new_trace_id
from edge.propagation import SpanContext


def _span(**kw) -> Span:
    base = dict(trace_id=new_trace_id(), span_id=new_span_id(), name="readSensor", start_ns=1_700_000_000_000_000_000,
                end_ns=1_700_000_000_004_000_000)
    base.update(kw)
    return Span(**base)


def test_round_trip_keeps_every_field() -> None:
    parent = new_span_id()
    s = _span(parent_span_id=parent, kind=SpanKind.CONSUMER, status_code=StatusCode.ERROR, status_message="timeout",
              attributes={"sensor.value": 21.5, "n": -3, "ok": True, "raw": b"\x00\x01", "tags": ["a", 1],
                          "nested": {"x": [1, 2]}},
              events=[Event("valve.opened", 1_700_000_000_001_000_000, {"pos": 100})],
              links=[Link(new_trace_id(), new_span_id(), "", {"why": "batch"})], trace_state="ot=th:8", flags=0)
    data = encode_payload([s], {"service.name": "dev-1", "device.id": "dev-1"}, Scope("helix.sdk", "0.1.0"))
    out = decode_payload(data, {"service.name": "fallback"})
    assert out.errors == []
    (got,) = out.spans
    assert got.trace_id == s.trace_id and got.span_id == s.span_id and got.parent_span_id == parent
    assert (got.name, got.kind, got.start_ns, got.end_ns) == (s.name, s.kind, s.start_ns, s.end_ns)
    assert (got.status_code, got.status_message) == (StatusCode.ERROR, "timeout")
    assert got.attributes == s.attributes
    assert got.events == s.events and got.links == s.links
    assert got.trace_state == "ot=th:8" and got.flags == 0
    assert got.resource.as_dict() == {"service.name": "dev-1", "device.id": "dev-1"}
    assert got.scope == Scope("helix.sdk", "0.1.0")
    assert got.source is Source.SDK_MQTT


def test_minimal_device_span_takes_context_from_traceparent() -> None:
    # What a microcontroller sends: no trace id, no parent; the message's traceparent supplies both.
    remote = SpanContext(new_trace_id(), new_span_id(), 1, "vendor=x")
    data = cbor2.dumps([{Key.SPAN_ID: b"\x01" * 8, Key.NAME: "blink", Key.START: 10, Key.DURATION: 5}])
    out = decode_payload(data, {"service.name": "led-7"}, remote)
    (s,) = out.spans
    assert s.trace_id == remote.trace_id and s.parent_span_id == remote.span_id
    assert s.trace_state == "vendor=x" and s.end_ns == 15 and s.kind == SpanKind.INTERNAL
    assert s.resource.service_name == "led-7"


def test_bad_span_is_dropped_and_neighbours_kept() -> None:
    good = span_to_map(_span())
    data = cbor2.dumps([good, {Key.SPAN_ID: b"short", Key.NAME: "x", Key.START: 1, Key.DURATION: 1},
                        {Key.SPAN_ID: b"\x02" * 8, Key.NAME: 5, Key.START: 1, Key.DURATION: 1, Key.TRACE_ID: b"\x03" * 16},
                        "not a map", good | {Key.SPAN_ID: b"\x04" * 8}])
    out = decode_payload(data, {})
    assert len(out.spans) == 2
    assert len(out.errors) == 3
    assert "span[1]" in out.errors[0] and "span id" in out.errors[0] or "key 2" in out.errors[0]


@pytest.mark.parametrize("payload", [b"", b"\xff\xff", b"hello world", cbor2.dumps(42), cbor2.dumps({0: 9, 3: []}),
                                     cbor2.dumps({3: "x"}), cbor2.dumps([0] * 10_001)])
def test_unusable_messages_raise_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_payload(payload, {})


def test_span_without_trace_and_without_traceparent_is_refused() -> None:
    data = cbor2.dumps([{Key.SPAN_ID: b"\x01" * 8, Key.NAME: "x", Key.START: 1, Key.DURATION: 1}])
    out = decode_payload(data, {})
    assert not out.spans and "traceparent" in out.errors[0]


def test_type_limits() -> None:
    base = span_to_map(_span())
    cases = [base | {Key.ATTRIBUTES: {f"k{i}": i for i in range(200)}},
             base | {Key.ATTRIBUTES: {"big": 2**64}},
             base | {Key.KIND: 9}, base | {Key.STATUS: 3}, base | {Key.START: -1},
             base | {Key.ATTRIBUTES: {"deep": [[[[[[1]]]]]]}},
             base | {Key.EVENTS: [["e", -5]]}, base | {Key.LINKS: [[b"x", b"y"]]},
             base | {Key.ATTRIBUTES: {"t": cbor2.CBORTag(99, "x")}}]
    out = decode_payload(cbor2.dumps(cases), {})
    assert out.spans == [] and len(out.errors) == len(cases)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_never_raises_anything_but_decode_error(data: bytes) -> None:
    try:
        decode_payload(data, {})
    except DecodeError:
        pass


_values = st.recursive(st.one_of(st.text(max_size=20), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                                 st.floats(allow_nan=False), st.binary(max_size=8)),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3),
                       max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=16), _values, max_size=10), st.text(max_size=30),
       st.integers(0, 2**62), st.integers(0, 2**40))
def test_round_trip_property(attrs: dict, name: str, start: int, dur: int) -> None:
    s = _span(name=name, start_ns=start, end_ns=start + dur, attributes=attrs)
    (got,) = decode_payload(encode_payload([s], {"service.name": "d"}), {}).spans
    assert got.attributes == attrs and got.name == name and got.end_ns == start + dur


def test_sequence_number_and_cut_counts_are_optional() -> None:
    s = _span()
    old = decode_payload(encode_payload([s], {}), {})  # a message of the first version, without key 4 or 5
    assert old.seq is None and old.cut == {} and old.spans[0].span_id == s.span_id
    env = cbor2.loads(encode_payload([s], {}, seq=41))
    assert env[4] == 41
    env[5] = {1: 0, 2: 3, 4: 1}
    out = decode_payload(cbor2.dumps(env), {})
    assert out.seq == 41 and out.cut == {"attributes": 3, "strings": 1} and len(out.spans) == 1
    assert decode_payload(cbor2.dumps([span_to_map(s)]), {}).seq is None


@pytest.mark.parametrize("bad", [{4: -1}, {4: 2**32}, {4: "7"}, {4: True}, {5: {9: 1}}, {5: {1: -1}}, {5: [1]},
                                 {5: {1: 2**64}}])
def test_bad_sequence_or_cut_counts_refuse_the_message(bad: dict) -> None:
    env = cbor2.loads(encode_payload([_span()], {}))
    env.update(bad)
    with pytest.raises(DecodeError):
        decode_payload(cbor2.dumps(env), {})


# ------------------------------------------------------------------------------------------------ hostile input

from tests.edge._hostile import cbor_header, counts, depths, huge_ints, nested, values  # noqa: E402


def _decoded_or_refused(data: bytes) -> None:
    try:
        out = decode_payload(data, {"service.name": "d"})
    except DecodeError as e:
        assert len(str(e)) < 1000  # a message, not a dump of the input
        return
    for s in out.spans:
        assert 0 <= s.start_ns <= s.end_ns < 2**64
        assert all(0 <= e.time_ns < 2**64 for e in s.events)
    assert all(len(e) < 1000 for e in out.errors)


@settings(max_examples=150, deadline=None)
@given(envelope=st.dictionaries(st.integers(-1, 8), values, max_size=6),
       span=st.dictionaries(st.integers(0, 16), values, max_size=15), n=counts, big=huge_ints)
def test_hostile_envelopes_and_spans_are_refused_never_raised(envelope, span, n, big) -> None:
    good = span_to_map(_span())
    for key in (Key.START, Key.DURATION, Key.KIND, Key.STATUS, Key.FLAGS):
        _decoded_or_refused(cbor2.dumps({0: 1, 3: [good | {key: big}]}))  # one hostile integer in a valid span
    _decoded_or_refused(cbor2.dumps({0: 1, 3: [good | {Key.EVENTS: [["e", big]]}]}))
    _decoded_or_refused(cbor2.dumps({**envelope, 3: [span] + [{}] * n}))
    _decoded_or_refused(cbor2.dumps([good | span]))


@settings(max_examples=60, deadline=None)
@given(depth=depths, where=st.sampled_from(["attr", "resource", "spans", "top"]))
def test_deep_nesting_is_refused_never_raised(depth: int, where: str) -> None:
    good = span_to_map(_span())
    doc = {"attr": {0: 1, 3: [good | {Key.ATTRIBUTES: {"deep": nested(depth)}}]},
           "resource": {0: 1, 1: {"r": nested(depth)}, 3: [good]},
           "spans": {0: 1, 3: nested(depth, good)}, "top": nested(depth)}[where]
    _decoded_or_refused(cbor2.dumps(doc))


@pytest.mark.parametrize("data", [
    cbor_header(4, 100_000) * 3000 + b"\x00",  # arrays declared huge, nested past any recursion limit
    cbor_header(5, 2**32),  # a map of 4 billion pairs, declared
    cbor_header(4, 2**63 - 1),
    cbor_header(2, 2**40),  # a byte string of a terabyte, declared
    b"\x9f" * 100_000,  # indefinite-length arrays, never closed
])
def test_declared_counts_and_depths_are_refused(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_payload(data, {})


def test_a_bignum_time_refuses_its_span_only() -> None:
    bignum = cbor2.CBORTag(2, b"\xff" * 3000)  # a 24,000-bit integer on the wire
    out = decode_payload(cbor2.dumps({0: 1, 3: [span_to_map(_span()) | {Key.START: bignum}, span_to_map(_span())]}), {})
    assert len(out.spans) == 1 and out.errors == ["span[0]: key 6 must be an unsigned integer, got an integer of 24000 bits"]
