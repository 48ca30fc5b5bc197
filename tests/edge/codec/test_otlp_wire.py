from __future__ import annotations

import random
import subprocess
import sys

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from bench._workload import realistic_spans
from edge.codec.otlp import parse_request_protobuf, request_from_spans, spans_from_request
from edge.codec.otlp_wire import decode_export_request, encode_export_response, encode_status
from edge.errors import DecodeError
from edge.model import Event, Link, Resource, Scope, Source, Span, SpanKind, StatusCode, new_span_id


def official(data: bytes, errors: list[str] | None = None) -> list[Span]:
    """What the official OTLP classes read from the same bytes."""
    return spans_from_request(parse_request_protobuf(data), Source.SDK_OTLP, errors)


def rich_request() -> ExportTraceServiceRequest:
    """Every field the span model keeps, two resources and scopes, nested values and an event and a link."""
    a = Span(b"\x01" * 16, b"\x02" * 8, "GET /a", 1_700_000_000_000_000_000, 1_700_000_000_123_456_789,
             parent_span_id=b"\x03" * 8, kind=SpanKind.SERVER, status_code=StatusCode.ERROR,
             status_message="upstream timed out \u2013 retried",
             attributes={"s": "x", "neg": -5, "big": (1 << 63) - 1, "f": -0.25, "t": True, "no": False,
                         "b": b"\x00\x01", "arr": ["a", 2, [3.5, False]], "kv": {"in": {"deep": "yes"}, "n": 1},
                         "long": "y" * 300, "\u6e29\u5ea6": "\u2103", "": ""},
             events=(Event("retry", 1_700_000_000_000_000_500, {"attempt": 2}),),
             links=(Link(b"\x04" * 16, b"\x05" * 8, "k=v", {"why": "batch"}),),
             resource=Resource.of({"service.name": "shop", "host.name": "pi"}), scope=Scope("lib", "1.2"),
             trace_state="ot=th:8", flags=0)
    b = Span(b"\x06" * 16, new_span_id(), "publish", 5, 9, kind=SpanKind.PRODUCER,
             resource=Resource.of({"service.name": "sensor"}), scope=Scope("mqtt"))
    return request_from_spans([a, b])


def test_workload_requests_read_the_same_as_with_the_official_classes() -> None:
    spans = realistic_spans(200, seed=9)[:2000]
    for i in range(0, 2000, 100):
        data = request_from_spans(spans[i:i + 100]).SerializeToString()
        assert decode_export_request(data) == official(data)


def test_every_kept_field_and_value_type_reads_the_same() -> None:
    data = rich_request().SerializeToString()
    ours, theirs = decode_export_request(data), official(data)
    assert ours == theirs and len(ours) == 2
    assert ours[0].attributes["kv"] == {"in": {"deep": "yes"}, "n": 1} and ours[0].events and ours[0].links
    assert ours[0].flags == 1  # flags 0 on the wire is "not given" (the official reader agrees, checked above)


def test_unknown_fields_are_skipped_and_repeated_messages_merged() -> None:
    req = rich_request()
    span = req.resource_spans[0].scope_spans[0].spans[0]
    extra_status = b"\x7a\x02\x18\x01"  # Span.status (15) again with code = OK: merged, the later code wins
    unknown = b"\xa8\x1f\x07" + b"\xb2\x1f\x03abc" + b"\xbd\x1f\x01\x02\x03\x04" + b"\xb9\x1f" + bytes(8)
    span.ParseFromString(span.SerializeToString() + extra_status + unknown)
    data = req.SerializeToString()
    ours = decode_export_request(data)
    assert ours == official(data)
    assert ours[0].status_code == StatusCode.OK and ours[0].status_message.startswith("upstream")


def test_spans_with_bad_ids_are_skipped_with_a_reason_or_refused() -> None:
    req = rich_request()
    req.resource_spans[0].scope_spans[0].spans[0].trace_id = bytes(16)
    data = req.SerializeToString()
    errors: list[str] = []
    assert decode_export_request(data, errors=errors) == official(data, []) and len(errors) == 1
    assert "invalid trace id" in errors[0]
    with pytest.raises(DecodeError, match="invalid trace id"):
        decode_export_request(data)
    assert decode_export_request(b"") == []


def test_malformed_requests_are_refused_as_the_official_reader_refuses_them() -> None:
    rng = random.Random(11)
    valid = [rich_request().SerializeToString(),
             request_from_spans(realistic_spans(3, seed=2)[:30]).SerializeToString()]
    refused = agreed = 0
    for _ in range(4000):
        data = bytearray(rng.choice(valid))
        how = rng.randrange(3)
        if how == 0:
            data = data[:rng.randrange(len(data))]
        elif how == 1:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        try:
            theirs = official(bytes(data), [])
        except DecodeError:
            theirs = None
        try:
            ours = decode_export_request(bytes(data), errors=[])
        except DecodeError:
            ours = None
        assert (ours is None) == (theirs is None), bytes(data).hex()
        if theirs is None:
            refused += 1
        else:
            assert ours == theirs
            agreed += 1
    assert refused > 500 and agreed > 500


def _request_with_value(value: bytes) -> bytes:
    """An export request, written by hand, with one span whose one attribute has the AnyValue bytes `value`."""
    kv = b"\x0a\x04deep" + b"\x12" + _len(value) + value
    span = b"\x0a\x10" + b"\x01" * 16 + b"\x12\x08" + b"\x02" * 8 + b"\x2a\x01n" + b"\x4a" + _len(kv) + kv
    scope_spans = b"\x12" + _len(span) + span
    resource_spans = b"\x12" + _len(scope_spans) + scope_spans
    return b"\x0a" + _len(resource_spans) + resource_spans


def _nested(depth: int) -> bytes:
    value = b"\x0a\x01x"  # AnyValue{string_value: "x"}
    for _ in range(depth):
        array = b"\x0a" + _len(value) + value  # ArrayValue{values: [value]}
        value = b"\x2a" + _len(array) + array  # AnyValue{array_value: array}
    return value


def test_values_nested_too_deep_are_refused() -> None:
    data = _request_with_value(_nested(20))
    (span,) = decode_export_request(data)
    assert [span] == official(data) and span.attributes["deep"] == [[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]
    with pytest.raises(DecodeError, match="nested deeper than 32"):
        decode_export_request(_request_with_value(_nested(40)))


def _len(b: bytes) -> bytes:
    n, out = len(b), bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_replies_read_back_with_the_official_classes() -> None:
    assert encode_export_response() == b""
    resp = ExportTraceServiceResponse.FromString(encode_export_response(3, "agent queue full"))
    assert resp.partial_success.rejected_spans == 3 and resp.partial_success.error_message == "agent queue full"
    st = status_pb2.Status.FromString(encode_status(14, "agent is busy; retry later \u2013 1 s"))
    assert st.code == 14 and st.message == "agent is busy; retry later \u2013 1 s"


def test_the_agent_does_not_load_the_protobuf_runtime() -> None:
    code = ("import sys, edge.cli, edge.agent.runner, edge.sources.otlp_grpc, edge.sources.otlp_http; "
            "print(sorted(m for m in sys.modules if m.startswith(('google', 'opentelemetry'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------------ hostile input

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge.errors import OverBudget  # noqa: E402
from tests.edge._hostile import counts, depths  # noqa: E402


def _varint_bytes(n: int) -> bytearray:
    out = bytearray()
    n &= (1 << 70) - 1
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return out


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    key = bytes(_varint_bytes(number << 3 | wire_type))
    return key + (_len(payload) + payload if wire_type == 2 else payload)


_span_fields = st.lists(st.tuples(st.integers(0, 20), st.sampled_from([0, 1, 2, 5]),
                                  st.one_of(st.integers(0, 2**70).map(lambda n: bytes(_varint_bytes(n))),
                                            st.binary(max_size=24))), max_size=12)


def _refused_or_read(data: bytes, cap: int | None = None) -> None:
    try:
        spans = decode_export_request(data, errors=[], max_bytes=cap)
    except OverBudget as e:
        assert cap is not None and e.size > cap
        return
    except DecodeError as e:
        assert len(str(e)) < 1000
        return
    for s in spans:
        assert 0 <= s.start_ns < 2**64 and 0 <= s.end_ns < 2**64 and len(s.trace_id) == 16


@settings(max_examples=200, deadline=None)
@given(fields=_span_fields, n=counts, cap=st.one_of(st.none(), st.integers(0, 4000)))
def test_hostile_spans_are_refused_never_raised(fields, n, cap) -> None:
    # Wrong wire types for known fields, out-of-range varints (kind, flags), lengths past the end, many spans.
    span = b"".join(_field(f, wt, p if wt == 2 else (p + b"\x00" * 8)[:{0: max(1, len(p)), 1: 8, 5: 4}[wt]])
                    for f, wt, p in fields)
    good = b"\x0a\x10" + b"\x01" * 16 + b"\x12\x08" + b"\x02" * 8
    spans = _field(2, 2, span) + _field(2, 2, good + span) + _field(2, 2, good) * n
    data = _field(1, 2, _field(2, 2, spans))
    _refused_or_read(data, cap)


@settings(max_examples=40, deadline=None)
@given(depth=depths)
def test_deeply_nested_values_and_groups_are_refused(depth: int) -> None:
    _refused_or_read(_request_with_value(_nested(depth)))
    group = b"\x0b" * depth + b"\x0c" * depth  # start-group / end-group of field 1, nested
    _refused_or_read(_field(1, 2, group))


@pytest.mark.parametrize("data", [
    b"\x0a\xff\xff\xff\xff\x0f",  # a resource_spans declared 4 GiB long
    b"\x0a" + b"\xff" * 10 + b"\x01",  # a varint longer than 10 bytes
    b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # a length of 2**63
])
def test_declared_lengths_past_the_end_are_refused(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_export_request(data)
