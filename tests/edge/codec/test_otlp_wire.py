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
