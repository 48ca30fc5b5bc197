"""Batches of versions 3 and 4 decoded straight into their OTLP request: the request the span path exports (the same
bytes, and the same message through the official protobuf classes), the same count, the same refusals, in both
implementations."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench._workload import realistic_spans
from bench.corpus import load_all
from edge import accel
from edge.codec.otlp import ExportTraceServiceRequest, request_from_spans
from edge.errors import DecodeError
from edge.model import Resource, Scope, Span
from uplink.gateway.budget import expansion_limit
from uplink.wire import columnar, declared_size, decode_batch, read_header
from uplink.wire.columnar import MAX_SPANS
from uplink.wire.tables import EMPTY, TableSet

from tests.edge._implementations import IMPLEMENTATIONS

from .._helpers import expanding_batch
from .test_columnar import MAX, SAMPLE, _body, _exact, _frame, _junk, _spans, _valid_batch


def _mods(impl: str) -> tuple[Any, Any, Any]:
    m = accel.modules(impl)
    return m["uplink.wire.columnar"], m["uplink.wire.columnar_otlp"], m["edge.codec.otlp_writer"]


def _outcome(impl: str, data: bytes, tables: TableSet, limit: int | None) -> tuple[Any, Any]:
    """(span path, straight path): the refusal's type, or the request with the count; the straight path's request is
    also read back with the official classes against the span path's spans."""
    dec, straight, writer = _mods(impl)
    try:
        batch = dec.decode(data, read_header(data), tables, MAX, MAX_SPANS, limit)
        try:
            want: Any = (writer.request_bytes(batch.spans), batch.expanded, batch.node_id, batch.seq, batch.created_ns)
        except Exception as e:  # noqa: BLE001 - a value OTLP cannot hold: the export fails on it
            want = ("cannot export", type(e).__name__, repr(batch.spans), batch.expanded)
    except DecodeError as e:
        want = type(e).__name__
    try:
        got = straight.decode_request(data, read_header(data), tables, MAX, MAX_SPANS, limit)
    except DecodeError as e:
        return want, type(e).__name__
    assert got.spans or got.request is not None or got.span_count() == 0
    if got.request is None:  # written from the spans, as before
        try:
            writer.request_bytes(got.spans)
        except Exception as e:  # noqa: BLE001
            return want, ("cannot export", type(e).__name__, repr(got.spans), got.expanded)
        return want, "spans for a request that can be written"
    if type(want) is str:
        return want, "a request"
    assert got.span_count() == batch.span_count() and not got.spans
    official = request_from_spans(batch.spans)
    assert ExportTraceServiceRequest.FromString(got.request) == official
    return want, (got.request, got.expanded, got.node_id, got.seq, got.created_ns)


def _same(impl: str, data: bytes, tables: TableSet, limit: int | None) -> None:
    want, got = _outcome(impl, data, tables, limit)
    assert got == want


def _corpus() -> dict[str, list[Span]]:
    try:
        return load_all()
    except FileNotFoundError:  # no real corpus on this machine: the sample kept with the tests
        return load_all(SAMPLE)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_every_corpus_span_is_exported_as_the_span_path_exports_it(impl: str) -> None:
    # The whole corpus: cold at 1, 32 and 512 spans a batch, and with a table set learned from its first third.
    for name, spans in {**_corpus(), "workload": realistic_spans(200, seed=2)}.items():
        tables = columnar.learn(spans[: len(spans) // 3], node_id="n", created_ns=1)
        for t, version, size in ((EMPTY, 4, 1), (EMPTY, 4, 32), (EMPTY, 4, 512), (EMPTY, 3, 32), (tables, 4, 32),
                                 (tables, 4, 512)):
            for i in range(0, len(spans), size):
                data = columnar.encode(spans[i:i + size], "n", i, t, created_ns=i, version=version)
                want, got = _outcome(impl, data, t, expansion_limit(declared_size(data)))
                assert type(got) is tuple and got == want, (name, size, i)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_spans(), _spans(), st.sampled_from([3, 4]))
def test_any_spans_are_exported_as_the_span_path_exports_them(impl: str, spans: list[Span], earlier: list[Span],
                                                               version: int) -> None:
    # Random spans hold values OTLP cannot (integers past int64): those come back as spans, whose export fails.
    tables = columnar.learn(earlier + spans, node_id="n", created_ns=1)
    for t in (EMPTY, tables):
        data = columnar.encode(spans, "n", 3, t, created_ns=5, version=version)
        _same(impl, data, t, None)
        _same(impl, data, t, 1 << 30)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 23), _junk, st.sampled_from(["kiali-bookinfo", "hotrod-jaeger", "ddtrace-py-snapshots"]),
       st.sampled_from([3, 4]), st.sampled_from([None, 4000]))
def test_a_hostile_body_is_refused_or_exported_as_the_span_path_does(impl: str, field: int, junk: object, corpus: str,
                                                                     version: int, limit: int | None) -> None:
    doc = _body(load_all(SAMPLE)[corpus][:12], version)
    doc[field] = junk
    _same(impl, _frame(doc, version), EMPTY, limit)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_flipped_and_truncated_batches_are_refused_or_exported_as_the_span_path_does(impl: str) -> None:
    data = _valid_batch()
    for pos in range(0, len(data), 3):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        _same(impl, bytes(bad), EMPTY, None)
    for cut in range(12, len(data), 5):
        _same(impl, data[:cut], EMPTY, None)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_batch_expanding_past_its_bound_is_refused_and_one_just_under_is_counted_alike(impl: str) -> None:
    data = expanding_batch(20_000, "x" * 60_000, 3)
    limit = expansion_limit(declared_size(data))
    assert _outcome(impl, data, EMPTY, limit) == ("ExpansionExceeded", "ExpansionExceeded")
    small = expanding_batch(200, "x" * 400, 3)
    want, got = _outcome(impl, small, EMPTY, expansion_limit(declared_size(small)))
    assert type(got) is tuple and got == want and got[1] > 200 * 400


def _key_twice(version: int) -> bytes:
    # One shape naming key "a" twice, as text and as an integer: a dict keeps its first place and its last value.
    span = Span(b"\x01" * 16, b"\x02" * 8, "op", 10, 20, attributes={"a": "x", "b": 1},
                resource=Resource.of({"service.name": "s"}), scope=Scope("lib", "1"))
    doc = _body([span], version)
    keys: list[str] = doc[18]
    shape: list[int] = doc[19][doc[20][0]]  # the span's shape: the first used, so its columns come first
    a = keys.index("a")
    shape.append(a << 3 | 1)  # T_INT
    doc[21].insert(len(shape) - 1, [7])
    return _frame(doc, version)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("version", [3, 4])
def test_a_shape_naming_a_key_twice_is_exported_as_its_span_holds_it(impl: str, version: int) -> None:
    data = _key_twice(version)
    spans = decode_batch(data, MAX).spans
    assert list(spans[0].attributes.items()) == [("a", 7), ("b", 1)]
    want, got = _outcome(impl, data, EMPTY, 1 << 20)
    assert type(got) is tuple and got == want


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_value_otlp_cannot_hold_comes_back_as_spans_whose_export_fails_as_before(impl: str) -> None:
    span = Span(b"\x01" * 16, b"\x02" * 8, "op", 10, 20, attributes={"big": 2**64 - 1})
    data = columnar.encode([span], "n", 1, EMPTY, created_ns=1)
    got = _mods(impl)[1].decode_request(data, read_header(data), EMPTY, MAX, MAX_SPANS, 1 << 20)
    assert got.request is None and _exact(got.spans, [span]) and got.span_count() == 1
    with pytest.raises(ValueError):
        _mods(impl)[2].request_bytes(got.spans)


def test_the_gateways_entry_point_decodes_versions_3_and_4_into_requests_and_older_ones_into_spans() -> None:
    spans = realistic_spans(5, seed=3)
    from uplink.wire import encode_batch

    for version in (2, 3, 4):
        batch = decode_batch(encode_batch(spans, "n", 1, version=version), MAX, otlp=True)
        assert batch.span_count() == len(spans)
        assert (batch.request is not None) == (version >= 3)
        assert (batch.request or request_from_spans(batch.spans).SerializeToString()) == \
            request_from_spans(decode_batch(encode_batch(spans, "n", 1, version=version), MAX).spans).SerializeToString()
