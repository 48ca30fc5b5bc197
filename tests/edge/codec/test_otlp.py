"""OTLP/JSON requests (official classes and protobuf's JSON mapping) under hostile input: refused, never raised."""
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.codec.otlp import parse_request_json, spans_from_request
from edge.errors import DecodeError, OverBudget
from tests.edge._hostile import deep_json, depths, values

_SPAN_KEYS = ("traceId", "spanId", "parentSpanId", "name", "kind", "startTimeUnixNano", "endTimeUnixNano",
              "attributes", "events", "links", "status", "flags", "traceState")


def _json(value: Any) -> str:
    """JSON text for any value hypothesis drew, huge integers included (json.dumps refuses those)."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, int):
        return ("-" if value < 0 else "") + "9" * min(6000, max(1, abs(value).bit_length() // 3))
    if isinstance(value, bytes):
        return json.dumps(value.hex())
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(_json(v) for v in value) + "]"
    return "{" + ",".join(f"{json.dumps(str(k))}:{_json(v)}" for k, v in value.items()) + "}"


def _read(body: bytes, cap: int | None = None) -> None:
    try:
        spans_from_request(parse_request_json(body), errors=[], max_bytes=cap)
    except OverBudget:
        assert cap is not None
    except DecodeError as e:
        assert len(str(e)) < 1000


@settings(max_examples=150, deadline=None)
@given(span=st.dictionaries(st.sampled_from(_SPAN_KEYS), values, max_size=8), top=values)
def test_wrong_types_and_huge_numbers_are_refused_never_raised(span: dict, top: Any) -> None:
    good = {"traceId": "01" * 16, "spanId": "02" * 8, "name": "x"}
    _read(('{"resourceSpans":[{"scopeSpans":[{"spans":[' + _json({**good, **span}) + "]}]}]}").encode())
    _read(('{"resourceSpans":' + _json(top) + "}").encode())
    _read(_json(top).encode())


@settings(max_examples=30, deadline=None)
@given(depth=depths)
def test_deep_nesting_is_refused(depth: int) -> None:
    value = '{"stringValue":"x"}'
    for _ in range(depth):
        value = '{"arrayValue":{"values":[' + value + "]}}"
    attr = '[{"key":"deep","value":' + value + "}]"
    _read(('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"' + "01" * 16 + '","spanId":"' + "02" * 8 +
           '","name":"x","attributes":' + attr + "}]}]}]}").encode())


@pytest.mark.parametrize("body", [deep_json(200_000), deep_json(200_000, "{"), b'{"resourceSpans":' + b"[" * 5000,
                                  b'{"resourceSpans":[{"resource":{"droppedAttributesCount":' + b"9" * 5000 + b"}}]}"])
def test_nesting_past_the_recursion_limit_and_5000_digit_numbers_are_refused(body: bytes) -> None:
    with pytest.raises(DecodeError):
        spans_from_request(parse_request_json(body))
