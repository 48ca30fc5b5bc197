"""W3C Trace Context in MQTT v5 user properties ("Trace Context: MQTT format" draft).

The context travels as the user properties `traceparent` and `tracestate` of a PUBLISH; keys are compared
case-insensitively on receipt, and the first `traceparent` wins, as the draft asks.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..propagation import SpanContext, format_traceparent, parse_traceparent

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

__all__ = ["inject", "extract", "user_properties"]


def user_properties(ctx: SpanContext) -> list[tuple[str, str]]:
    """The user-property pairs that carry `ctx`."""
    props = [("traceparent", format_traceparent(ctx.trace_id, ctx.span_id, ctx.flags))]
    if ctx.trace_state:
        props.append(("tracestate", ctx.trace_state))
    return props


def inject(ctx: SpanContext, properties: Properties | None = None) -> Properties:
    """Add the trace context to paho PUBLISH properties (created when None), keeping other user properties."""
    from paho.mqtt.packettypes import PacketTypes  # here: the agent reads context without loading paho
    from paho.mqtt.properties import Properties

    if properties is None:
        properties = Properties(PacketTypes.PUBLISH)
    existing = [(k, v) for k, v in (getattr(properties, "UserProperty", None) or [])
                if k.lower() not in ("traceparent", "tracestate")]
    # paho appends on assignment to multi-valued properties, so the old list is removed first.
    if hasattr(properties, "UserProperty"):
        object.__delattr__(properties, "UserProperty")
    properties.UserProperty = existing + user_properties(ctx)
    return properties


def extract(props: Properties | Sequence[tuple[str, str]] | None) -> SpanContext | None:
    """Read the trace context from paho PUBLISH properties or from a list of user-property pairs."""
    if props is None:
        return None
    pairs = props if isinstance(props, (list, tuple)) else getattr(props, "UserProperty", None)
    traceparent = tracestate = None
    for key, value in pairs or ():
        k = key.lower()
        if k == "traceparent" and traceparent is None:
            traceparent = value
        elif k == "tracestate" and tracestate is None:
            tracestate = value
    return parse_traceparent(traceparent, tracestate)
