"""A tiny tracer for devices: spans with attributes, events and status, published as CBOR over MQTT.

It is deliberately small (no exporters, processors or plugins): a device records spans and, when a local
root span ends or the batch is full, publishes them in one message to `helix/sdk/<device_id>/spans`. Works with
any paho-mqtt client the application already has; publishing happens on paho's own network loop.
"""
from __future__ import annotations

import contextvars
import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .. import __version__
from ..codec.sdk_cbor import encode_payload
from ..model import AttrValue, Event, Scope, Span, SpanKind, StatusCode, new_span_id, new_trace_id
from ..propagation import SpanContext
from .mqtt_context import user_properties

__all__ = ["Tracer", "SdkSpan"]

log = logging.getLogger(__name__)

_current: contextvars.ContextVar[SdkSpan | None] = contextvars.ContextVar("helix_sdk_current", default=None)


class SdkSpan:
    """A span being recorded on the device; call `end()` (or use `Tracer.span`) to publish it."""

    __slots__ = ("_tracer", "_span", "_remote_parent", "_ended")

    def __init__(self, tracer: Tracer, span: Span, remote_parent: SpanContext | None) -> None:
        self._tracer = tracer
        self._span = span
        self._remote_parent = remote_parent
        self._ended = False

    @property
    def context(self) -> SpanContext:
        """This span's context, to propagate to whatever it calls (see `edge.sdk.inject`)."""
        return SpanContext(self._span.trace_id, self._span.span_id, self._span.flags, self._span.trace_state)

    def set_attribute(self, key: str, value: AttrValue) -> SdkSpan:
        """Set one attribute (OpenTelemetry semantic-convention names where one fits)."""
        self._span.attributes[key] = value
        return self

    def set_attributes(self, attrs: dict[str, AttrValue]) -> SdkSpan:
        """Set several attributes."""
        self._span.attributes.update(attrs)
        return self

    def add_event(self, name: str, attributes: dict[str, AttrValue] | None = None, time_ns: int | None = None) -> SdkSpan:
        """Record a timestamped event."""
        self._span.events = (*self._span.events, Event(name, time_ns or time.time_ns(), dict(attributes or {})))
        return self

    def set_status(self, ok: bool, message: str = "") -> SdkSpan:
        """Mark the span OK or ERROR (with a message for errors)."""
        self._span.status_code = StatusCode.OK if ok else StatusCode.ERROR
        self._span.status_message = "" if ok else message
        return self

    def record_exception(self, exc: BaseException) -> SdkSpan:
        """Add an `exception` event (semantic conventions) and mark the span as failed."""
        self.add_event("exception", {"exception.type": type(exc).__name__, "exception.message": str(exc)})
        return self.set_status(False, f"{type(exc).__name__}: {exc}")

    def end(self, end_ns: int | None = None) -> None:
        """Finish the span; ending twice is ignored."""
        if self._ended:
            return
        self._ended = True
        self._span.end_ns = end_ns or time.time_ns()
        self._tracer._on_end(self._span, is_local_root=self._remote_parent is not None or self._span.is_root)


class Tracer:
    """Records spans of one device and publishes them over an MQTT v5 client."""

    def __init__(self, client: mqtt.Client, device_id: str, resource: dict[str, AttrValue] | None = None,
                 topic: str | None = None, max_batch: int = 32, qos: int = 1) -> None:
        self._client = client
        self.device_id = device_id
        self.topic = topic or f"helix/sdk/{device_id}/spans"
        self.resource: dict[str, AttrValue] = {"service.name": device_id, "device.id": device_id, **(resource or {})}
        self.scope = Scope("helix.sdk", __version__)
        self.max_batch = max_batch
        self.qos = qos
        self._pending: list[Span] = []
        self._lock = threading.Lock()
        self.published_messages = 0
        self.publish_failures = 0

    def start_span(self, name: str, kind: SpanKind = SpanKind.INTERNAL, parent: SdkSpan | SpanContext | None = None,
                   attributes: dict[str, AttrValue] | None = None, start_ns: int | None = None) -> SdkSpan:
        """Start a span; the parent defaults to the current span of this context (or none: a new trace)."""
        if parent is None:
            parent = _current.get()
        remote: SpanContext | None = None
        if isinstance(parent, SdkSpan):
            trace_id, parent_id, flags, state = (parent._span.trace_id, parent._span.span_id,
                                                 parent._span.flags, parent._span.trace_state)
        elif isinstance(parent, SpanContext):
            remote = parent
            trace_id, parent_id, flags, state = parent.trace_id, parent.span_id, parent.flags, parent.trace_state
        else:
            trace_id, parent_id, flags, state = new_trace_id(), b"", 1, ""
        span = Span(trace_id=trace_id, span_id=new_span_id(), parent_span_id=parent_id, name=name, kind=kind,
                    start_ns=start_ns or time.time_ns(), end_ns=0, attributes=dict(attributes or {}),
                    scope=self.scope, flags=flags, trace_state=state)
        return SdkSpan(self, span, remote)

    @contextmanager
    def span(self, name: str, kind: SpanKind = SpanKind.INTERNAL, parent: SdkSpan | SpanContext | None = None,
             attributes: dict[str, AttrValue] | None = None) -> Iterator[SdkSpan]:
        """Context manager: the span is current inside the block, ended after it, and failed on an exception."""
        s = self.start_span(name, kind, parent, attributes)
        token = _current.set(s)
        try:
            yield s
        except BaseException as e:
            s.record_exception(e)
            raise
        finally:
            _current.reset(token)
            s.end()

    def _on_end(self, span: Span, is_local_root: bool) -> None:
        with self._lock:
            self._pending.append(span)
            ready = is_local_root or len(self._pending) >= self.max_batch
        if ready:
            self.flush()

    def flush(self) -> None:
        """Publish every ended span now."""
        with self._lock:
            spans, self._pending = self._pending, []
        if not spans:
            return
        payload = encode_payload(spans, self.resource, self.scope)
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/cbor"
        # The W3C MQTT format: the message carries the context its spans continue, so brokers, bridges and
        # kernel-level observers can place it without decoding the CBOR.
        parent = next((s for s in spans if s.parent_span_id and not any(p.span_id == s.parent_span_id for p in spans)),
                      None)
        if parent is not None:
            props.UserProperty = user_properties(SpanContext(parent.trace_id, parent.parent_span_id, parent.flags,
                                                             parent.trace_state))
        info = self._client.publish(self.topic, payload, qos=self.qos, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.publish_failures += 1
            log.warning("span publish failed rc=%s topic=%s spans=%d", info.rc, self.topic, len(spans))
        else:
            self.published_messages += 1

    def current_span(self) -> SdkSpan | None:
        """The span current in this context, if any."""
        return _current.get()
