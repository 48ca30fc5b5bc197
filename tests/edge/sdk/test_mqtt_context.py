from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.model import new_span_id, new_trace_id
from edge.propagation import SpanContext
from edge.sdk import extract, inject


def test_inject_extract_round_trip_keeps_other_user_properties() -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("app", "x"), ("traceparent", "stale")]
    ctx = SpanContext(new_trace_id(), new_span_id(), 1, "ot=th:8,v=1")
    inject(ctx, props)
    assert ("app", "x") in props.UserProperty
    assert sum(1 for k, _ in props.UserProperty if k == "traceparent") == 1
    got = extract(props)
    assert got is not None and (got.trace_id, got.span_id, got.trace_state) == (ctx.trace_id, ctx.span_id, ctx.trace_state)


def test_extract_is_case_insensitive_first_wins_and_rejects_invalid() -> None:
    tid, sid = new_trace_id(), new_span_id()
    pairs = [("TraceParent", f"00-{tid.hex()}-{sid.hex()}-01"), ("traceparent", f"00-{'1' * 32}-{'2' * 16}-01")]
    got = extract(pairs)
    assert got is not None and got.trace_id == tid
    assert extract([("traceparent", "00-zz-01")]) is None
    assert extract([("traceparent", f"00-{'0' * 32}-{sid.hex()}-01")]) is None
    assert extract(None) is None and extract([]) is None
