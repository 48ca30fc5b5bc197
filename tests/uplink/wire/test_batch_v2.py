"""Span batch format versions 1 and 2: exact round trips and clean errors on hostile input."""
from __future__ import annotations

import struct

import cbor2
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench._workload import realistic_spans
from edge.errors import DecodeError
from edge.model import Event, Link, Resource, Scope, Source, Span, SpanKind, StatusCode
from uplink.gateway.budget import expansion_limit
from uplink.wire import ExpansionExceeded, declared_size, dictionaries
from uplink.wire import decode_batch, read_header
from uplink.wire.frame import SPANS_HEADER
from uplink.wire import encode_batch as encode_any

from .._helpers import expanding_batch

FORMAT_VERSION = 2
HEADER_SIZE = SPANS_HEADER.size


def encode_batch(spans: list[Span], node_id: str, seq: int, version: int = 2, **kw: object) -> bytes:
    return encode_any(spans, node_id, seq, version=version, **kw)  # type: ignore[arg-type]


MAX = 16 * 1024 * 1024

_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_text = st.text(max_size=12)
_scalar = st.one_of(_text, st.booleans(), _int64, st.floats(allow_nan=False), st.binary(max_size=12))
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(_text, inner, max_size=4)), max_leaves=8)
_attrs = st.dictionaries(_text, _value, max_size=6)
_times = st.integers(min_value=0, max_value=2**63)


@st.composite
def _span(draw: st.DrawFn, ids: list[bytes]) -> Span:
    start = draw(_times)
    parent_choice = draw(st.sampled_from(["none", "batch", "outside", "odd"]))
    parent = {"none": b"", "batch": draw(st.sampled_from(ids)), "outside": draw(st.binary(min_size=8, max_size=8)),
              "odd": draw(st.binary(max_size=10))}[parent_choice]
    return Span(
        trace_id=draw(st.one_of(st.sampled_from([b"\x01" * 16, b"\x02" * 16]), st.binary(min_size=16, max_size=16),
                                st.binary(max_size=20))),
        span_id=draw(st.one_of(st.sampled_from(ids), st.binary(max_size=9))),
        name=draw(_text),
        start_ns=start,
        end_ns=draw(st.one_of(st.just(start), _times)),
        parent_span_id=parent,
        kind=draw(st.sampled_from(list(SpanKind))),
        status_code=draw(st.sampled_from(list(StatusCode))),
        status_message=draw(_text),
        attributes=draw(_attrs),
        events=draw(st.lists(st.builds(Event, _text, _times, _attrs), max_size=2)),
        links=draw(st.lists(st.builds(Link, st.binary(max_size=17), st.binary(max_size=9), _text, _attrs), max_size=2)),
        resource=draw(st.one_of(st.just(Resource()), st.builds(Resource.of, _attrs))),
        scope=draw(st.builds(Scope, _text, _text)),
        source=draw(st.sampled_from(list(Source))),
        trace_state=draw(_text),
        flags=draw(st.integers(min_value=0, max_value=255)),
    )


@st.composite
def _spans(draw: st.DrawFn) -> list[Span]:
    ids = draw(st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=5))
    return draw(st.lists(_span(ids), max_size=8))


def _exact(spans: list[Span]) -> str:
    # repr tells True from 1 and 1.0 from 1, which == does not.
    return repr(spans)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_spans(), st.text(max_size=20), st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from([1, 2]))
def test_round_trip_is_exact(spans: list[Span], node_id: str, seq: int, version: int) -> None:
    data = encode_batch(spans, node_id, seq, created_ns=123, version=version)
    batch = decode_batch(data, MAX)
    assert (batch.node_id, batch.seq, batch.created_ns, batch.version) == (node_id, seq, 123, version)
    assert batch.spans == spans
    assert _exact(batch.spans) == _exact(spans)


def test_realistic_batch_round_trips_and_is_compact() -> None:
    spans = realistic_spans(60, seed=3)[:512]
    data = encode_batch(spans, "node-7", 42)
    batch = decode_batch(data, MAX)
    assert _exact(batch.spans) == _exact(spans)
    # The typed attribute values survive as their own types.
    root = next(s for s in batch.spans if s.name == "createOrder")
    assert type(root.attributes["cart.items"]) is int and type(root.attributes["order.total"]) is float
    # In-batch parents are references: far below 8 bytes of id + 16 of trace id + 2x8 of times per span.
    assert len(data) / len(spans) < 40


def test_extreme_values_survive() -> None:
    span = Span(trace_id=b"\xff" * 16, span_id=b"\x00" * 8, name="", start_ns=2**64 - 1, end_ns=0,
                parent_span_id=b"\x00" * 8, flags=0,
                attributes={"neg": -(2**63), "max": 2**64 - 1, "f": -0.0, "inf": float("inf"), "b": b"",
                            "nested": [[], {}, [1, "1", True, 1.0, b"1"], {"k": {"k": [None.__class__.__name__]}}]})
    batch = decode_batch(encode_batch([span], "n", 0), MAX)
    assert _exact(batch.spans) == _exact([span])


def test_header_carries_version_and_dictionary_id() -> None:
    data = encode_batch([], "n", 1)
    h = read_header(data)
    assert (h.version, h.dict_id) == (2, dictionaries.CURRENT) == (2, 1)
    assert read_header(encode_batch([], "n", 1, dictionary=0)).dict_id == 0
    with pytest.raises(DecodeError, match="version 9 is not supported"):
        decode_batch(b"HX\x09" + data[3:], MAX)
    with pytest.raises(DecodeError, match="dictionary 7"):
        decode_batch(data[:3] + struct.pack(">I", 7) + data[HEADER_SIZE:], MAX)
    # A frame compressed with the dictionary cannot be read as if it had none.
    data = encode_batch(realistic_spans(2, 3), "n", 1)
    with pytest.raises(DecodeError):
        decode_batch(data[:3] + struct.pack(">I", 0) + data[HEADER_SIZE:], MAX)


@pytest.mark.parametrize("version,dictionary", [(1, 0), (2, 0), (2, 1)])
def test_every_version_the_gateway_may_meet_decodes(version: int, dictionary: int) -> None:
    spans = realistic_spans(20, seed=12)
    data = encode_batch(spans, "old-node", 9, dictionary=dictionary, version=version, created_ns=5)
    assert (read_header(data).version, read_header(data).dict_id) == (version, dictionary)
    batch = decode_batch(data, MAX)
    assert (batch.version, batch.dict_id, batch.seq) == (version, dictionary, 9)
    assert _exact(batch.spans) == _exact(spans)


def test_shipped_dictionary_is_registered_and_helps_small_batches() -> None:
    assert dictionaries.available(dictionaries.CURRENT)
    assert dictionaries.load(dictionaries.CURRENT).dict_id() == dictionaries.CURRENT
    spans = realistic_spans(3, seed=77)  # 33 spans: what a quiet node sends; seed not used in training
    assert len(encode_batch(spans, "n", 1)) < 0.75 * len(encode_batch(spans, "n", 1, dictionary=0))


def test_the_long_lived_compressor_stays_small_and_compresses_as_well() -> None:
    from uplink.wire.batch_v2 import body as batch_body
    from uplink.wire.frame import _compressor

    spans = realistic_spans(60, seed=5)[:512]
    raw = batch_body(spans, "n", 1)
    small = _compressor(3, dictionaries.CURRENT)
    full = zstandard.ZstdCompressor(level=3, dict_data=dictionaries.load(dictionaries.CURRENT), write_checksum=True)
    a, b = small.compress(raw), full.compress(raw)
    assert small.memory_size() < 0.6 * full.memory_size()  # 0.5 against 1.0 MiB: it lives as long as the agent
    assert len(a) <= 1.01 * len(b)


def test_parent_relative_times_survive_nesting_cycles_and_odd_orders() -> None:
    t = b"\x01" * 16
    ids = [bytes([i]) * 8 for i in range(1, 7)]
    spans = [
        Span(t, ids[0], "child-first", 1_000_500, 1_000_900, parent_span_id=ids[1]),  # parent comes later
        Span(t, ids[1], "parent", 1_000_000, 1_001_000),
        Span(t, ids[2], "ends-after-parent", 1_000_100, 2_000_000, parent_span_id=ids[1]),
        Span(t, ids[3], "cycle-a", 5, 2**64 - 1, parent_span_id=ids[4]),
        Span(t, ids[4], "cycle-b", 2**63, 0, parent_span_id=ids[3]),
        Span(t, ids[5], "self", 7, 3, parent_span_id=ids[5]),
    ]
    batch = decode_batch(encode_batch(spans, "n", 1), MAX)
    assert _exact(batch.spans) == _exact(spans)


def _frame(body: object) -> bytes:
    raw = cbor2.dumps(body)
    return b"HX" + bytes([FORMAT_VERSION]) + bytes(4) + zstandard.ZstdCompressor().compress(raw)


def test_zip_bomb_is_refused_before_decompressing() -> None:
    bomb = b"HX\x01" + bytes(4) + zstandard.ZstdCompressor(level=19).compress(bytes(64 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    with pytest.raises(DecodeError, match="over the limit"):
        decode_batch(bomb, 1024 * 1024)


def test_frame_without_content_size_is_refused() -> None:
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    frame = cctx.compressobj().compress(cbor2.dumps([])) + cctx.compressobj().flush()
    with pytest.raises(DecodeError):
        decode_batch(b"HX\x01" + bytes(4) + frame, MAX)


@pytest.mark.parametrize("body,reason", [
    ({"a": 1}, "must be an array"),
    ([1, 2, 3], "19 fields"),
    (["n", -1] + [0] * 17, "sequence number"),
])
def test_wrong_shapes_name_the_problem(body: object, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_batch(_frame(body), MAX)


def test_dangling_references_are_decode_errors() -> None:
    good = cbor2.loads(zstandard.ZstdDecompressor().decompress(encode_batch(realistic_spans(2, 1), "n", 1, dictionary=0)[HEADER_SIZE:]))
    for field, bad in [(3, ["x"]), (11, [99] * len(good[11])), (10, [500] * len(good[10])), (13, b"\xff" * len(good[13]))]:
        body = list(good)
        body[field] = bad
        with pytest.raises(DecodeError):
            decode_batch(_frame(body), MAX)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_batch(data, MAX)
    with pytest.raises(DecodeError):
        decode_batch(b"HX\x01\x00\x00\x00\x00" + data, MAX)


_cbor_any = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=20), st.dictionaries(st.integers(-2, 20), inner, max_size=4)),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(_cbor_any)
def test_random_cbor_is_a_decode_error(body: object) -> None:
    with pytest.raises(DecodeError):
        decode_batch(_frame(body), MAX)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=18), min_size=1, max_size=4), st.data())
def test_mutated_valid_bodies_decode_or_fail_cleanly(fields: list[int], data: st.DataObject) -> None:
    good = cbor2.loads(zstandard.ZstdDecompressor().decompress(encode_batch(realistic_spans(2, 5), "n", 1, dictionary=0)[HEADER_SIZE:]))
    body = list(good)
    for f in fields:
        body[f] = data.draw(_cbor_any)
    try:
        decode_batch(_frame(body), MAX)
    except DecodeError:
        pass


def test_every_truncation_is_a_decode_error() -> None:
    data = encode_batch(realistic_spans(3, 2), "node", 5)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode_batch(data[:cut], MAX)


def test_every_single_byte_corruption_is_detected_or_decodes() -> None:
    # The zstd checksum catches corruption inside the frame; nothing may escape as another exception.
    data = bytearray(encode_batch(realistic_spans(2, 2), "node", 5))
    for i in range(len(data)):
        mutated = bytearray(data)
        mutated[i] ^= 0x5A
        try:
            decode_batch(bytes(mutated), MAX)
        except DecodeError:
            pass


def test_a_text_referenced_20000_times_is_refused_by_what_its_spans_expand_to() -> None:
    # One 60 KB name in the string table, used by 20,000 spans: a few hundred KB inflated, 1.2 GB as OTLP.
    data = expanding_batch(20_000, "x" * 60_000, 2, "n-7", 41)
    assert len(data) < 1000
    limit = expansion_limit(declared_size(data))
    assert decode_batch(data, MAX).spans[0].name == "x" * 60_000  # decodable, only too expansive
    with pytest.raises(ExpansionExceeded) as e:
        decode_batch(data, MAX, max_expanded=limit)
    assert (e.value.node_id, e.value.seq, e.value.limit) == ("n-7", 41, limit)
    # Stopped as soon as the count passed the bound, not after measuring all 1.2 GB.
    assert limit < e.value.expanded <= limit + 61_000
    assert isinstance(e.value, DecodeError)


@pytest.mark.parametrize("version", [1, 2])
def test_resources_equal_in_python_but_not_in_type_keep_their_own_entries(version: int) -> None:
    # True == 1 == 1.0: the resource table must not hand {"flag": True} the entry of {"flag": 1}.
    spans = [Span(b"\x01" * 16, bytes([i + 1]) * 8, "op", 10, 20, resource=Resource((("flag", v),)))
             for i, v in enumerate([1, True, 1.0, True])]
    batch = decode_batch(encode_batch(spans, "n", 0, version=version), MAX)
    assert _exact(batch.spans) == _exact(spans)
