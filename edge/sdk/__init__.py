"""The lightweight device SDK: a tiny tracer that publishes CBOR spans over MQTT with W3C trace context."""
from __future__ import annotations

from typing import Any

from .mqtt_context import extract, inject, user_properties

__all__ = ["Tracer", "SdkSpan", "inject", "extract", "user_properties"]


def __getattr__(name: str) -> Any:
    # The tracer brings paho; the agent reads trace context from this package and must not load it.
    if name in ("Tracer", "SdkSpan"):
        from . import tracer

        return getattr(tracer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
