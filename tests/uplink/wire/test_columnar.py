"""The columnar batch formats (versions 3 and 4): exact round trips with and without a learned table set, and clean
refusals of hostile input."""
from __future__ import annotations

import hashlib
import re
import ipaddress
import uuid
from pathlib import Path

import cbor2
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench._workload import realistic_spans
from bench.corpus import load_all
from edge import accel
from edge.codec.otlp import request_from_spans
from edge.errors import DecodeError
from edge.model import Event, Link, Resource, Scope, Source, Span, SpanKind, StatusCode, frozen
from uplink.gateway.budget import expansion_limit
from uplink.wire import NO_TABLES, ExpansionExceeded, UnknownTableSet, columnar, declared_size, decode_batch, \
    encode_batch, read_header
from uplink.wire.columnar import MAX_SPANS, encode
from uplink.wire.tables import EMPTY, TableSet, TrainingLimits, train
from uplink.wire.values import Expansion

from tests.edge._implementations import IMPLEMENTATIONS

from .._helpers import expanding_batch

MAX = 16 * 1024 * 1024
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "demo-apps-sample"

# Values the span model holds, including the awkward ones: -0.0, 64-bit extremes, nesting, bytes, empty keys.
_key = st.sampled_from(["http.method", "peer", "n", "", "ünïcode"]) | st.text(max_size=8)
_scalar = (st.text(max_size=10) | st.sampled_from(["GET", "POST", "200"]) | st.booleans()
           | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats(allow_nan=False) | st.binary(max_size=10))
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3), max_leaves=6)
_attrs = st.dictionaries(_key, _value, max_size=5)
# Clocks of every precision: nanoseconds, microseconds, milliseconds, and zero.
_time = st.one_of(st.integers(min_value=0, max_value=2**63), st.integers(0, 2**40).map(lambda t: t * 1000),
                  st.integers(0, 2**30).map(lambda t: t * 1_000_000), st.just(0))
_resource = (st.sampled_from([Resource(), Resource.of({"service.name": "a", "host.name": "h"})])
             | st.builds(Resource.of, _attrs))


@st.composite
def _spans(draw: st.DrawFn) -> list[Span]:
    ids = draw(st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=6))
    traces = [b"\x01" * 16, b"\x02" * 16, draw(st.binary(max_size=20))]
    out = []
    for _ in range(draw(st.integers(0, 10))):
        start = draw(_time)
        out.append(Span(
            trace_id=draw(st.sampled_from(traces)),
            span_id=draw(st.sampled_from(ids) | st.binary(max_size=9)),
            name=draw(st.sampled_from(["GET /", "SELECT"]) | st.text(max_size=8)),
            start_ns=start,
            end_ns=draw(st.just(start) | _time | st.integers(0, 10**6).map(lambda d: start + d * 1000)),
            parent_span_id=draw(st.just(b"") | st.sampled_from(ids) | st.binary(max_size=10)),
            kind=draw(st.sampled_from(list(SpanKind))),
            status_code=draw(st.sampled_from(list(StatusCode))),
            status_message=draw(st.just("") | st.text(max_size=8)),
            attributes=draw(_attrs),
            events=draw(st.lists(st.builds(Event, st.text(max_size=6), _time, _attrs), max_size=3)),
            links=draw(st.lists(st.builds(Link, st.sampled_from(traces) | st.binary(max_size=17), st.binary(max_size=9),
                                          st.text(max_size=6), _attrs), max_size=2)),
            resource=draw(_resource),
            scope=draw(st.builds(Scope, st.text(max_size=6), st.text(max_size=4))),
            source=draw(st.sampled_from(list(Source))),
            trace_state=draw(st.just("") | st.text(max_size=8)),
            flags=draw(st.integers(min_value=0, max_value=2**32)),
        ))
    return out


def decode(data: bytes, tables: TableSet | None, max_bytes: int, max_spans: int = MAX_SPANS):  # type: ignore[no-untyped-def]
    """Decode through the gateway's entry point, holding `tables` alone."""
    return decode_batch(data, max_bytes, {tables.id: tables}.get if tables is not None else None, max_spans)


def _exact(a: list[Span], b: list[Span]) -> bool:
    # repr tells True from 1 and 1.0 from 1 and shows dict order, which == does not.
    return a == b and repr(a) == repr(b)


def _round_trip(spans: list[Span], tables: TableSet, version: int = columnar.VERSION) -> list[Span]:
    data = encode(spans, "node-1", 7, tables, created_ns=123, version=version)
    batch = decode(data, tables, MAX)
    assert (batch.node_id, batch.seq, batch.created_ns, batch.table_id) == ("node-1", 7, 123, tables.id)
    assert batch.version == version
    return batch.spans


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_spans(), _spans())
def test_round_trip_is_exact_cold_and_with_tables_learned_from_other_spans(spans: list[Span],
                                                                          earlier: list[Span]) -> None:
    assert _exact(_round_trip(spans, EMPTY), spans)
    assert _exact(_round_trip(spans, EMPTY, version=3), spans)
    tables = columnar.learn(earlier + spans, node_id="node-1", created_ns=1)
    assert _exact(_round_trip(spans, tables), spans)


def test_every_span_of_the_corpus_sample_round_trips() -> None:
    for name, spans in load_all(SAMPLE).items():
        tables = columnar.learn(spans[: len(spans) // 2], node_id="n", created_ns=1)
        for size in (1, 7, 32, 512):
            for i in range(0, len(spans), size):
                batch = spans[i:i + size]
                assert _exact(_round_trip(batch, EMPTY), batch), name
                assert _exact(_round_trip(batch, tables), batch), name
                assert _exact(_round_trip(batch, tables, version=3), batch), name


def test_learned_tables_shrink_small_batches() -> None:
    spans = realistic_spans(200, seed=5)
    tables = columnar.learn(spans[:1100], node_id="n", created_ns=1)
    later = spans[1100:1100 + 32 * 20]
    cold = sum(len(encode(later[i:i + 32], "n", i, EMPTY)) for i in range(0, len(later), 32))
    learned = sum(len(encode(later[i:i + 32], "n", i, tables)) for i in range(0, len(later), 32))
    assert learned < 0.65 * cold, (learned, cold)


def test_body_fields_name_each_attribute_column_in_the_order_of_the_body() -> None:
    spans = [Span(b"\x01" * 16, b"\x02" * 8, "op", 10, 20, attributes={"a": "x", "b": 1}),
             Span(b"\x01" * 16, b"\x03" * 8, "op", 11, 19, attributes={"b": 2, "c": 1.5})]
    doc, columns = columnar.body_fields(spans, "n", 1, EMPTY, created_ns=1)
    assert cbor2.dumps(doc) == columnar.body(spans, "n", 1, EMPTY, created_ns=1)
    assert columns == [("a", 0), ("b", 1), ("c", 2)]  # text, integer, float
    attribute_columns = doc[columnar.BODY_FIELDS.index("attribute_columns")]
    assert len(attribute_columns) == 3 and attribute_columns[1] == [1, 2]


def test_microsecond_clocks_get_their_own_unit() -> None:
    us = Resource.of({"service.name": "jaeger-go"})
    ns = Resource.of({"service.name": "ebpf"})
    spans = [Span(b"\x01" * 16, bytes([i]) * 8, "op", 1_700_000_000_123_456_000 + i * 7_000,
                  1_700_000_000_123_999_000 + i * 9_000, resource=us) for i in range(1, 5)]
    spans += [Span(b"\x01" * 16, bytes([i]) * 8, "op", 1_700_000_000_123_456_789 + i, 1_700_000_000_124_000_001 + i,
                   resource=ns) for i in range(5, 8)]
    raw = columnar.body(spans, "n", 1, EMPTY, created_ns=1)
    doc = cbor2.loads(raw)
    assert doc[9] == {0: 1000}  # the microsecond resource's unit; the nanosecond one has none
    assert _exact(_round_trip(spans, EMPTY), spans)


def test_header_names_version_and_table_set() -> None:
    spans = realistic_spans(3, seed=2)
    tables = columnar.learn(spans, node_id="n", created_ns=1)
    data = encode(spans, "n", 1, tables)
    h = read_header(data)
    assert (h.version, h.table_id, h.size) == (4, tables.id, 11) and tables.id != NO_TABLES
    assert read_header(encode(spans, "n", 1, tables, version=3)).version == 3
    assert read_header(encode(spans, "n", 1)).table_id == NO_TABLES
    with pytest.raises(UnknownTableSet) as e:
        decode(data, None, MAX)
    assert e.value.table_id == tables.id and tables.id.hex() in str(e.value)
    other = columnar.learn(spans[:5], node_id="n", created_ns=2)
    with pytest.raises(UnknownTableSet):
        decode(data, other, MAX)
    # A batch that says "no table set" decodes whatever set the caller holds.
    assert _exact(decode(encode(spans, "n", 1), other, MAX).spans, spans)
    # Every version ever shipped goes through the same entry point, chosen by the header.
    for version in (1, 2, 3, 4):
        assert _exact(decode(encode_batch(spans, "n", 1, version=version), tables, MAX).spans, spans)
    with pytest.raises(DecodeError, match="version 5 is not supported"):
        decode(b"HX\x05" + data[3:], tables, MAX)


def test_a_frame_is_never_read_with_the_wrong_dictionary() -> None:
    spans = realistic_spans(20, seed=4)
    a = columnar.learn(spans[:100], node_id="n", created_ns=1)
    b = columnar.learn(spans[100:], node_id="n", created_ns=2)
    data = encode(spans[100:132], "n", 1, a)
    forged = data[:3] + b.id + data[11:]  # the header lies about the set
    with pytest.raises(DecodeError):
        decode(forged, b, MAX)


def _valid_batch() -> bytes:
    spans = load_all(SAMPLE)["hotrod-jaeger"]
    return encode(spans, "n", 1, EMPTY, created_ns=1)


def test_every_truncation_is_refused() -> None:
    data = _valid_batch()
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:cut], EMPTY, MAX)


def test_flipped_bytes_are_refused_by_the_checksum_or_the_checks() -> None:
    data = _valid_batch()
    want = decode(data, EMPTY, MAX).spans
    for pos in range(0, len(data), 7):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        # A few bytes of a zstd frame do not reach its content (an unused entry of an entropy table): those may
        # decode, but only to exactly the spans that were sent.
        try:
            got = decode(bytes(bad), EMPTY, MAX).spans
        except DecodeError:
            continue
        assert pos > 11 and _exact(got, want), pos


def _frame(doc: object, version: int = 3) -> bytes:
    """A well-formed batch around any body: what an attacker who knows the format can send."""
    zc = zstandard.ZstdCompressor(write_content_size=True)
    return b"HX" + bytes([version]) + NO_TABLES + zc.compress(cbor2.dumps(doc))


def _body(spans: list[Span], version: int = 3) -> list:
    return cbor2.loads(columnar.body(spans, "n", 1, EMPTY, created_ns=1, version=version))


_junk = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=20)
                     | st.text(max_size=5) | st.floats(), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.integers(-3, 40) | st.text(max_size=3), inner, max_size=3), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 23), _junk, st.sampled_from(["kiali-bookinfo", "hotrod-jaeger", "ddtrace-py-snapshots"]),
       st.sampled_from([3, 4]))
def test_a_body_with_any_field_replaced_is_decoded_or_refused_never_crashes(field: int, junk: object,
                                                                            corpus: str, version: int) -> None:
    doc = _body(load_all(SAMPLE)[corpus][:12], version)
    doc[field] = junk
    try:
        decode(_frame(doc, version), EMPTY, MAX)
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(_junk, st.sampled_from([3, 4]))
def test_any_cbor_body_is_refused_cleanly(junk: object, version: int) -> None:
    with pytest.raises(DecodeError):
        decode(_frame(junk, version), EMPTY, MAX)


# Texts with a binary form in version 4, and near misses that must stay text.
_FORMED_TEXTS = ["3cf1df7fb079462ab81608355e026651", "24d949ad-b57b-4a98-84bb-d0dd0b50f85e", "13618132776631307998",
                 "-4711", "1000", "deadbeef", "10.0.3.157", "255.255.255.0"]
_NEAR_MISSES = ["3CF1DF7FB079462AB81608355E026651", "24D949AD-B57B-4A98-84BB-D0DD0B50F85E", "0123", "01234",
                "123", "-0", "+1234", "abc", "deadbee", "dead beef", "1e10", "", "١٢٣٤٥",
                "24d949ad-b57b-4a98-84bb-d0dd0b50f85", "24d949adb57b-4a98-84bb-d0dd0b50f85e0", "0x1234abcd",
                "deadbeef\n", "12345\n", "10.0.03.157", "10.0.3.256", "10.0.3", "10.0.3.157.1", " 10.0.3.157",
                "10.0.3.157/24"]


def test_version_4_carries_hex_uuid_and_decimal_texts_in_binary_form_and_everything_back_exactly() -> None:
    # Past CBOR's integer range a decimal stays text.
    texts = _FORMED_TEXTS + _NEAR_MISSES + ["18446744073709551616", "-18446744073709551617"]
    res = Resource.of({"service.instance.id": texts[0], "host.name": "h"})
    spans = [Span(b"\x01" * 16, bytes([i + 1]) * 8, t, 10 + i, 20 + i, attributes={"v": t, "w": texts[-1 - i]},
                  events=(Event(t, 15 + i, {"e": t}),), resource=res) for i, t in enumerate(texts)]
    for tables in (EMPTY, columnar.learn(spans[:3], node_id="n", created_ns=1)):
        assert _exact(_round_trip(spans, tables), spans)
        assert _exact(_round_trip(spans, tables, version=3), spans)
    doc = _body(spans, 4)
    names = doc[columnar.BODY_FIELDS.index("names")][0]
    assert names[:len(_FORMED_TEXTS)] == [bytes.fromhex(_FORMED_TEXTS[0]), uuid.UUID(_FORMED_TEXTS[1]),
                                          13618132776631307998, -4711, 1000, b"\xde\xad\xbe\xef",
                                          ipaddress.IPv4Address("10.0.3.157"), ipaddress.IPv4Address("255.255.255.0")]
    assert names[len(_FORMED_TEXTS):-2] == _NEAR_MISSES  # these stay text
    assert names[-2:] == ["18446744073709551616", "-18446744073709551617"]
    assert all(type(t) is str for t in _body(spans, 3)[columnar.BODY_FIELDS.index("names")][0])
    # Random ids as text (message ids, runtime ids) cost about their binary size, not their text's.
    def digest(i: int) -> bytes:
        return hashlib.blake2b(i.to_bytes(4, "big"), digest_size=16).digest()
    ids = [Span(b"\x01" * 16, bytes([i + 1]) * 8, "op", 10, 20,
                attributes={"message.id": str(uuid.UUID(bytes=digest(i))), "runtime.id": digest(1000 + i).hex()})
           for i in range(64)]
    assert len(encode(ids, "n", 1, version=4)) < 0.95 * len(encode(ids, "n", 1, version=3))


@pytest.mark.parametrize("junk", [1.5, None, [], {}, True, 2**64, -(2**64) - 1, cbor2.CBORTag(99, b"x" * 16),
                                  cbor2.CBORTag(52, [24, b"\x0a\x00\x03"]), cbor2.CBORTag(52, b"\x0a\x00")])
def test_version_4_refuses_a_new_text_with_no_text_form_and_version_3_any_binary_form(junk: object) -> None:
    spans = [Span(b"\x01" * 16, b"\x02" * 8, "some-name", 10, 20)]
    field = columnar.BODY_FIELDS.index("names")
    doc = _body(spans, 4)
    doc[field][0] = [junk]
    with pytest.raises(DecodeError):
        decode(_frame(doc, 4), EMPTY, MAX)
    for binary in (b"\xde\xad\xbe\xef", 1234, uuid.UUID(int=5), ipaddress.IPv4Address("10.1.2.3")):
        doc = _body(spans, 3)
        doc[field][0] = [binary]
        with pytest.raises(DecodeError, match="non-text"):
            decode(_frame(doc, 3), EMPTY, MAX)
        assert decode(_frame(doc, 4), EMPTY, MAX).spans[0].name == (binary.hex() if type(binary) is bytes
                                                                    else str(binary))
    # A tag 37 that is not 16 bytes is refused by the CBOR reader itself.
    raw = bytearray(cbor2.dumps(_body(spans, 4)))
    at = raw.index(cbor2.dumps("some-name"))
    raw[at:at + len(cbor2.dumps("some-name"))] = b"\xd8\x25\x43abc"  # tag 37 around 3 bytes
    zc = zstandard.ZstdCompressor(write_content_size=True)
    with pytest.raises(DecodeError):
        decode(b"HX\x04" + NO_TABLES + zc.compress(bytes(raw)), EMPTY, MAX)


def test_sizes_and_counts_are_bounded_before_anything_is_built() -> None:
    spans = realistic_spans(10, seed=1)
    data = encode(spans, "n", 1)
    with pytest.raises(DecodeError, match="over the limit"):
        decode(data, EMPTY, 100)
    with pytest.raises(DecodeError, match="span count"):
        decode(data, EMPTY, MAX, max_spans=len(spans) - 1)
    doc = _body(spans)
    doc[3] = 10**9  # a count the columns do not back
    with pytest.raises(DecodeError):
        decode(_frame(doc), EMPTY, MAX, max_spans=10**10)
    # A frame that does not declare its size is refused before it is decompressed (the zip-bomb guard).
    unsized = b"HX\x03" + NO_TABLES + zstandard.ZstdCompressor(write_content_size=False).compress(b"\x80")
    with pytest.raises(DecodeError, match="content size"):
        decode(unsized, EMPTY, MAX)
    # An event count column cannot ask for more events than its bound.
    doc = _body(load_all(SAMPLE)["hotrod-jaeger"][:4])
    doc[22][0] = [10**8, 0, 0, 0]
    with pytest.raises(DecodeError, match="too many events"):
        decode(_frame(doc), EMPTY, MAX)


def test_batches_above_the_span_limit_are_not_encoded() -> None:
    span = realistic_spans(1, seed=1)[0]
    with pytest.raises(ValueError, match="at most"):
        columnar.body([span] * (columnar.MAX_SPANS + 1), "n", 1)


def test_a_text_referenced_20000_times_is_refused_by_what_its_spans_expand_to() -> None:
    # One 60 KB attribute value, sent once in its key's new texts and referenced by 20,000 spans: 1.2 GB as OTLP.
    data = expanding_batch(20_000, "y" * 60_000, 3, "n-8", 42)
    assert len(data) < 1000
    limit = expansion_limit(declared_size(data))
    assert decode(data, None, MAX).spans[-1].attributes["db.statement"] == "y" * 60_000
    with pytest.raises(ExpansionExceeded) as e:
        decode_batch(data, MAX, None, MAX_SPANS, limit)
    assert (e.value.node_id, e.value.seq, e.value.limit) == ("n-8", 42, limit)
    assert limit < e.value.expanded <= limit + 61_000


def test_a_value_shared_by_cbor_is_checked_once_and_counted_for_every_use() -> None:
    # CBOR's shared values (tags 28/29) let 30 nested levels of two references to the one list below reach 2^30
    # leaves: checked once per distinct list, and counted as the copies the export would write.
    spans = realistic_spans(2, seed=91)[:1]
    spans[0].attributes = {"blob": ["placeholder"]}  # an array: a plain-CBOR attribute column
    doc = cbor2.loads(columnar.body(spans, "n-9", 43))
    value: object = ["z" * 100]
    for _ in range(30):
        value = [value, value]
    cols = doc[columnar.BODY_FIELDS.index("attribute_columns")]
    cols[cols.index([["placeholder"]])] = [value]
    body = cbor2.dumps(doc, value_sharing=True)
    assert len(body) < 1000
    data = encode([], "n", 0)[:11] + zstandard.ZstdCompressor().compress(body)
    with pytest.raises(ExpansionExceeded) as e:
        decode_batch(data, MAX, None, MAX_SPANS, 1 << 24)
    assert e.value.seq == 43


def test_real_batches_decode_within_the_gateways_expansion_limit_which_bounds_their_request() -> None:
    # The count must cover the serialised OTLP request, and real batches (every format, learned tables or none) must
    # stay well within the gateway's limit.
    corpora = {**load_all(SAMPLE), "workload": realistic_spans(60, seed=92)}
    for name, spans in corpora.items():
        tables = columnar.learn(spans[: len(spans) // 2], node_id="n", created_ns=1)
        for size in (32, 512):
            for i in range(0, len(spans), size):
                part = spans[i:i + size]
                for data in (encode_batch(part, "n", i, version=2), encode(part, "n", i, tables)):
                    limit = expansion_limit(declared_size(data))
                    decoded = decode_batch(data, MAX, {tables.id: tables}.get, MAX_SPANS, limit // 2).spans
                    count = Expansion(limit)
                    count.spans(decoded)
                    assert count.total >= len(request_from_spans(decoded).SerializeToString()), name


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(IMPLEMENTATIONS), st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=4),
       st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=4))
def test_uuid_and_ipv4_texts_come_back_as_the_standard_library_writes_them(impl: str, uuids: list[bytes],
                                                                        addresses: list[bytes]) -> None:
    # Version 4 carries them as tags 37 and 52, which the decoder reads to text itself (not through uuid/ipaddress).
    texts = [str(uuid.UUID(bytes=b)) for b in uuids] + [str(ipaddress.IPv4Address(b)) for b in addresses]
    spans = [Span(b"\x01" * 16, bytes([i + 1]) * 8, t, 10, 20, attributes={"peer": t, "n": i})
             for i, t in enumerate(texts)]
    data = _columnar(impl).encode(spans, "n", 1, EMPTY, created_ns=1)
    assert _exact(_columnar(impl).decode(data, read_header(data), EMPTY, MAX, MAX_SPANS, None).spans, spans)


def test_a_resource_value_decodes_with_its_own_types_whatever_was_interned_before() -> None:
    # True == 1 == 1.0: a frozen copy shared with an earlier resource would bring back [1.0] for [True].
    Resource.of({"": [1.0]})
    Resource.of({"": {"k": 1}})
    spans = [Span(b"\x01" * 16, b"\x02" * 8, "op", 10, 20,
                  resource=Resource((("a", frozen([True])), ("m", frozen({"k": True})))))]
    assert _exact(_round_trip(spans, EMPTY), spans)


@pytest.mark.parametrize("unit", [1, 1000])
def test_times_of_children_sent_before_their_parents_come_back_with_one_unit_and_with_several(unit: int) -> None:
    # Spans leave a node as they end: children before parents, chains three deep, ends before and after the parent's.
    r = Resource.of({"service.name": f"clock-{unit}"})
    other = Resource.of({"service.name": "ns-clock"})
    t = 1_700_000_000_000_000_000
    ids = [bytes([i + 1]) * 8 for i in range(6)]
    shape = [(3, 30, 45), (4, 20, 90), (5, 10, 100), (None, 0, 120), (None, 200, 260), (0, 31, 44)]
    spans = [Span(b"\x01" * 16, ids[i], f"op{i}", t + a * unit, t + b * unit, ids[p] if p is not None else b"",
                  resource=r) for i, (p, a, b) in enumerate(shape)]
    for batch in (spans, spans[::-1], spans + [Span(b"\x01" * 16, b"\x09" * 8, "x", t + 7, t + 11, ids[3],
                                                    resource=other)]):
        assert _exact(_round_trip(batch, EMPTY), batch)


def test_resources_equal_in_python_but_not_in_type_stay_apart_in_a_batch_and_against_learned_tables() -> None:
    # True == 1 == 1.0, so a resource with {"flag": True} is == one with {"flag": 1}: neither the batch's own resource
    # table nor a learned one may hand one the other's entry.
    as_int = Resource((("flag", 1), ("service.name", "svc")))
    as_bool = Resource((("flag", True), ("service.name", "svc")))
    as_float = Resource((("flag", 1.0), ("service.name", "svc")))
    spans = [Span(b"\x01" * 16, bytes([i + 1]) * 8, "op", 10, 20, resource=r)
             for i, r in enumerate([as_int, as_bool, as_float, as_bool])]
    assert _exact(_round_trip(spans, EMPTY), spans)
    learned = train([spans[0]] * 8, TrainingLimits(zdict=False))
    assert learned.resources == (as_int,)
    for later in ([spans[1]], [spans[2]], spans[1:], spans):
        assert _exact(_round_trip(later, learned), later)


# The accelerator compiles this module (edge/accel.py): the compiled encoder must write the pure one's bytes, and the
# compiled decoder give the pure one's spans and counts, and refuse what it refuses, on any input.

def _columnar(impl: str):  # type: ignore[no-untyped-def]
    return accel.modules(impl)["uplink.wire.columnar"]


def _outcome(mod, data: bytes, tables: TableSet, limit: int | None):  # type: ignore[no-untyped-def]
    """What decoding gives: the spans exactly (repr) with the count, or the refusal's type."""
    try:
        batch = mod.decode(data, read_header(data), tables, MAX, MAX_SPANS, limit)
    except DecodeError as e:
        return type(e).__name__
    return repr(batch.spans), batch.expanded, batch.node_id, batch.seq, batch.created_ns


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_both_implementations_write_the_same_batches_and_decode_them_exactly(impl: str) -> None:
    mod, ref = _columnar(impl), _columnar("pure")
    for name, spans in {**load_all(SAMPLE), "workload": realistic_spans(40, seed=5)}.items():
        tables = mod.learn(spans[: len(spans) // 2], node_id="n", created_ns=1)
        assert tables.id == ref.learn(spans[: len(spans) // 2], node_id="n", created_ns=1).id, name
        for t in (EMPTY, tables):
            for version in columnar.VERSIONS:
                for size in (1, 32, 512):
                    for i in range(0, len(spans), size):
                        part = spans[i:i + size]
                        data = mod.encode(part, "n", i, t, created_ns=i, version=version)
                        assert data == ref.encode(part, "n", i, t, created_ns=i, version=version), (name, size, i)
                        limit = expansion_limit(declared_size(data))
                        batch = mod.decode(data, read_header(data), t, MAX, MAX_SPANS, limit)
                        assert _exact(batch.spans, part), (name, size, i)
                        assert _outcome(mod, data, t, limit) == _outcome(ref, data, t, limit)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_spans(), _spans())
def test_both_implementations_encode_any_spans_alike(impl: str, spans: list[Span], earlier: list[Span]) -> None:
    mod, ref = _columnar(impl), _columnar("pure")
    tables = ref.learn(earlier + spans, node_id="n", created_ns=1)
    assert mod.learn(earlier + spans, node_id="n", created_ns=1).id == tables.id
    for t in (EMPTY, tables):
        data = mod.encode(spans, "n", 3, t, created_ns=5)
        assert data == ref.encode(spans, "n", 3, t, created_ns=5)
        assert _outcome(mod, data, t, None) == _outcome(ref, data, t, None)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 23), _junk, st.sampled_from(["kiali-bookinfo", "hotrod-jaeger", "ddtrace-py-snapshots"]),
       st.sampled_from([3, 4]), st.sampled_from([None, 4000]))
def test_both_implementations_refuse_or_decode_a_hostile_body_alike(impl: str, field: int, junk: object, corpus: str,
                                                                    version: int, limit: int | None) -> None:
    doc = _body(load_all(SAMPLE)[corpus][:12], version)
    doc[field] = junk
    data = _frame(doc, version)
    assert _outcome(_columnar(impl), data, EMPTY, limit) == _outcome(_columnar("pure"), data, EMPTY, limit)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_both_implementations_refuse_flipped_and_truncated_batches_alike(impl: str) -> None:
    mod, ref = _columnar(impl), _columnar("pure")
    data = _valid_batch()
    for pos in range(0, len(data), 3):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        assert _outcome(mod, bytes(bad), EMPTY, None) == _outcome(ref, bytes(bad), EMPTY, None), pos
    for cut in range(12, len(data), 5):
        assert _outcome(mod, data[:cut], EMPTY, None) == _outcome(ref, data[:cut], EMPTY, None), cut


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_resource_holding_an_array_or_a_map_is_counted_by_both_implementations(impl: str) -> None:
    # Compiled, the count once refused these resources (their values are frozen into tuples the model's types omit).
    mod = _columnar(impl)
    for value in ([], ["a", 1], {"k": [True]}):
        span = Span(b"\x01" * 16, b"\x02" * 8, "op", 10, 20, resource=Resource.of({"r": value}))
        data = mod.encode([span], "n", 1, EMPTY, created_ns=1)
        batch = mod.decode(data, read_header(data), EMPTY, MAX, MAX_SPANS, 1 << 20)
        assert _exact(batch.spans, [span]) and batch.expanded > 0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_bad_shape_entry_or_attribute_column_is_refused_naming_it_in_both_implementations(impl: str) -> None:
    mod = _columnar(impl)
    spans = [Span(b"\x01" * 16, b"\x02" * 8, "op", 10, 20, attributes={"http.url": "/a", "n": 1})]
    shapes, cols = columnar.BODY_FIELDS.index("new_shapes"), columnar.BODY_FIELDS.index("attribute_columns")
    doc = _body(spans, 4)
    n_keys = len(doc[columnar.BODY_FIELDS.index("new_keys")])
    for entry in (-1, n_keys << 3, 6, (n_keys << 3) | 1, True, "x", 2**70, None):
        bad = _body(spans, 4)
        bad[shapes][0] = [bad[shapes][0][0], entry]  # the first entry stays good: the bad one is named
        with pytest.raises(DecodeError, match=rf"shape entry {re.escape(repr(entry))} is invalid"):
            mod.decode(_frame(bad, 4), read_header(_frame(bad, 4)), EMPTY, MAX)
    text_col = next(j for j, c in enumerate(doc[cols]) if type(c) is list and len(c) == 2 and c[0] == ["/a"])
    for junk, what in (([["/a"], [7]], "references holds"), ([["/a"]], "entries, expected 2"),
                       ([[1.5], [0]], "new texts holds a")):
        bad = _body(spans, 4)
        bad[cols][text_col] = junk
        with pytest.raises(DecodeError, match=rf"attribute column 'http.url'.*{what}"):
            mod.decode(_frame(bad, 4), read_header(_frame(bad, 4)), EMPTY, MAX)
