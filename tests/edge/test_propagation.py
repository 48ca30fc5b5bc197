from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.trace import NonRecordingSpan, SpanContext as OtelContext, TraceFlags, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

from edge.propagation import (
    SpanContext,
    extract,
    format_traceparent,
    format_tracestate,
    parse_traceparent,
    parse_tracestate,
)

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
SID = "00f067aa0ba902b7"
TP = f"00-{TID}-{SID}-01"


def test_traceparent_valid():
    ctx = parse_traceparent(TP)
    assert ctx == SpanContext(bytes.fromhex(TID), bytes.fromhex(SID), 1, "", "w3c")
    assert ctx.sampled
    assert parse_traceparent(f"00-{TID}-{SID}-00").sampled is False  # type: ignore[union-attr]
    assert parse_traceparent(TP.encode()) == ctx
    assert parse_traceparent(f"  {TP}\t") == ctx  # optional whitespace around header values


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8), st.integers(0, 255),
       st.sampled_from(["", "ot=th:8", "a=1, b=2,bad"]))
def test_canonical_traceparent_reads_as_any_other(tid, sid, flags, state):
    # The bare version-00 form takes its own path; padded with whitespace, the same value takes the general one.
    value = f"00-{tid.hex()}-{sid.hex()}-{flags:02x}"
    ctx = parse_traceparent(value, state)
    assert ctx == parse_traceparent(f" {value}", state)
    if ctx is not None:
        assert (ctx.trace_id, ctx.span_id, ctx.flags) == (tid, sid, flags)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"00-{TID}-{SID}",  # no flags
        f"00-{TID.upper()}-{SID}-01",  # upper-case hex
        f"00-{'0' * 32}-{SID}-01",  # invalid trace id
        f"00-{TID}-{'0' * 16}-01",  # invalid span id
        f"ff-{TID}-{SID}-01",  # forbidden version
        f"00-{TID}-{SID}-01-extra",  # version 00 has exactly four fields
        f"00-{TID}-{SID}-01x",
        f"00-{TID}-{SID}-01\nxyz",
        f"0-{TID}-{SID}-01",
        f"00_{TID}_{SID}_01",
        b"\xff\xfe",
        12345,
    ],
)
def test_traceparent_invalid(value):
    assert parse_traceparent(value) is None  # type: ignore[arg-type]


def test_traceparent_future_version_read_as_00():
    ctx = parse_traceparent(f"cc-{TID}-{SID}-01-what-the-future-holds")
    assert ctx is not None and ctx.trace_id == bytes.fromhex(TID)


def test_tracestate_parse_and_format():
    members = parse_tracestate("rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE,tenant@vendor=x,bad key=1,=v,k=,rojo=dup")
    assert members == [("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE"), ("tenant@vendor", "x")]
    assert format_tracestate(members) == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,tenant@vendor=x"
    assert parse_tracestate("1abc=x") == []  # simple keys start with a letter
    assert parse_tracestate("1tenant@sys=x") == [("1tenant@sys", "x")]  # tenant ids may start with a digit
    many = ",".join(f"k{i}=v" for i in range(40))
    assert len(parse_tracestate(many)) == 32


def test_traceparent_carries_tracestate():
    ctx = parse_traceparent(TP, "ot=th:8,vendor=1, broken")
    assert ctx is not None and ctx.trace_state == "ot=th:8,vendor=1"


def test_extract_w3c_first():
    headers = {"traceparent": TP, "tracestate": "a=1", "b3": f"{'1' * 32}-{'2' * 16}-1", "uber-trace-id": "3:4:0:1"}
    ctx = extract(headers)
    assert ctx is not None and ctx.format == "w3c" and ctx.trace_state == "a=1"


def test_extract_falls_back_when_traceparent_invalid():
    ctx = extract({"traceparent": "garbage", "b3": f"{TID}-{SID}-1"})
    assert ctx is not None and ctx.format == "b3" and ctx.trace_id == bytes.fromhex(TID)


@pytest.mark.parametrize(
    ("value", "sampled"),
    [(f"{TID}-{SID}", True), (f"{TID}-{SID}-1", True), (f"{TID}-{SID}-0", False), (f"{TID}-{SID}-d", True),
     (f"{TID}-{SID}-1-{'a' * 16}", True), (f"{TID[16:]}-{SID}-1", True), (f"{TID.upper()}-{SID}", True)],
)
def test_b3_single(value, sampled):
    ctx = extract({"b3": value})
    assert ctx is not None and ctx.format == "b3" and ctx.sampled is sampled
    assert ctx.trace_id.hex().endswith(value.split("-")[0].lower())
    assert ctx.span_id.hex() == SID


@pytest.mark.parametrize(
    "value",
    ["0", "1", "d", f"{TID}", f"{TID}-{SID}-2", f"{TID}-{SID}-1-short", f"{TID}-{SID}-1-{'a' * 16}-x",
     f"abc-{SID}-1", f"{TID}-abc", f"{'0' * 32}-{SID}", f"{TID}-{'z' * 16}"],
)
def test_b3_single_invalid(value):
    assert extract({"b3": value}) is None


def test_b3_multi():
    ctx = extract({"x-b3-traceid": TID, "x-b3-spanid": SID, "x-b3-sampled": "0"})
    assert ctx is not None and ctx.format == "b3multi" and not ctx.sampled
    ctx = extract({"x-b3-traceid": TID[16:], "x-b3-spanid": SID, "x-b3-flags": "1", "x-b3-sampled": "0"})
    assert ctx is not None and ctx.sampled and ctx.trace_id == bytes(8) + bytes.fromhex(TID[16:])
    assert extract({"x-b3-traceid": TID}) is None
    assert extract({"x-b3-traceid": "abc", "x-b3-spanid": SID}) is None


def test_jaeger():
    ctx = extract({"uber-trace-id": f"{TID}:{SID}:0:1"})
    assert ctx is not None and ctx.format == "jaeger" and ctx.sampled
    short = extract({"uber-trace-id": "abc%3A1f%3A0%3A0"})
    assert short is not None and short.trace_id == bytes.fromhex("abc".rjust(32, "0")) and not short.sampled
    assert short.span_id == bytes.fromhex("1f".rjust(16, "0"))
    for bad in ("a:b:c", f"{TID}:{SID}:0:zz", f"{TID}:{SID}:0:", f"{TID}:{SID}:0:0x1", f"{TID}:{SID}:0:1_0", "0:1:0:1"):
        assert extract({"uber-trace-id": bad}) is None, bad


def test_extract_with_byte_values_and_nothing():
    assert extract({"traceparent": TP.encode()}) == parse_traceparent(TP)
    assert extract({"b3": f"{TID}-{SID}".encode()}) is not None
    assert extract({}) is None
    assert extract({"traceparent": 42, "b3": None}) is None  # type: ignore[dict-item]


def test_format_traceparent_round_trip():
    assert format_traceparent(bytes.fromhex(TID), bytes.fromhex(SID), 0x101) == f"00-{TID}-{SID}-01"
    assert parse_traceparent(format_traceparent(bytes.fromhex(TID), bytes.fromhex(SID))) is not None


def _otel_headers(propagator, trace_id: int, span_id: int, sampled: bool, state: list[tuple[str, str]] = ()):  # type: ignore[assignment]
    ctx = OtelContext(trace_id, span_id, True, TraceFlags(1 if sampled else 0), TraceState(list(state)))
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=set_span_in_context(NonRecordingSpan(ctx)))
    return {k.lower(): v for k, v in carrier.items()}


@settings(max_examples=200)
@given(trace_id=st.integers(1, 2**128 - 1), span_id=st.integers(1, 2**64 - 1), sampled=st.booleans())
def test_agrees_with_opentelemetry_injectors(trace_id, span_id, sampled):
    """Headers written by the OpenTelemetry API's W3C propagator read back to the same identity."""
    ctx = extract(_otel_headers(TraceContextTextMapPropagator(), trace_id, span_id, sampled, [("vendor", "v1")]))
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.sampled, ctx.format) == (
        trace_id.to_bytes(16, "big"), span_id.to_bytes(8, "big"), sampled, "w3c")
    assert ctx.trace_state == "vendor=v1"


@settings(max_examples=500)
@given(st.dictionaries(st.sampled_from(["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled",
                                        "x-b3-flags", "uber-trace-id"]),
                       st.one_of(st.text(max_size=80), st.binary(max_size=80))))
def test_garbage_never_raises(headers):
    extract(headers)


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_tracestate_garbage_never_raises(value):
    members = parse_tracestate(value)
    assert len(members) <= 32
    assert parse_tracestate(format_tracestate(members)) == members
