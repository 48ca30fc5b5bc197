"""The lightweight device SDK: a tiny tracer that publishes CBOR spans over MQTT with W3C trace context."""
from __future__ import annotations

from .mqtt_context import extract, inject, user_properties
from .tracer import SdkSpan, Tracer

__all__ = ["Tracer", "SdkSpan", "inject", "extract", "user_properties"]
