"""A tiny tracer for devices: spans with attributes, events and status, published as CBOR over MQTT.

It is deliberately small (no exporters, processors or plugins): a device records spans and publishes them in
one message to `helix/sdk/<device_id>/spans` when `max_batch` spans have ended, or `max_delay` seconds after
the first of them ended (0: when each local root ends). Works with any paho-mqtt client the application
already has; publishing happens on paho's own network loop. The hot path is plain attribute stores on a slotted
object; encoding (cbor2's C encoder) and the hand-off to paho happen once per message.
"""
from __future__ import annotations

import atexit
import contextvars
import logging
import os
import threading
import time
import weakref
from random import getrandbits
from typing import TYPE_CHECKING, Any

import cbor2

from .. import __version__
from ..model import AttrValue, SpanKind
from ..propagation import SpanContext

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

__all__ = ["Tracer", "SdkSpan"]

log = logging.getLogger(__name__)

_current: contextvars.ContextVar[SdkSpan | None] = contextvars.ContextVar("helix_sdk_current", default=None)
_time_ns = time.time_ns
_SCALARS = frozenset((str, int, float, bool, bytes, list, tuple, dict))
_seq_lock = threading.Lock()
_next_seq: dict[str, int] = {}  # per topic: one numbered sequence per device, however many tracers it has
_runs: dict[str, int] = {}  # per topic: a random id of this process's run (envelope key 6), to tell restarts apart


def _new_run_after_fork() -> None:
    # A forked child is another run of its device: the parent's numbers would read as redeliveries.
    _next_seq.clear()
    _runs.clear()


os.register_at_fork(after_in_child=_new_run_after_fork)


def _new_id(bits: int) -> bytes:
    # Python's PRNG (reseeded in forked children) as the OpenTelemetry SDK uses: ids need to be unique, not secret.
    v = getrandbits(bits)
    while not v:
        v = getrandbits(bits)
    return v.to_bytes(bits // 8, "big")


def _unknown(encoder: cbor2.CBOREncoder, value: Any) -> None:
    encoder.encode(str(value))  # an attribute value of another type is sent as its text, not refused


class SdkSpan:
    """A span being recorded on the device; call `end()` (or use it as a context manager) to finish it."""

    __slots__ = ("_tracer", "trace_id", "span_id", "parent_id", "name", "kind", "start_ns", "end_ns", "attributes",
                 "events", "status", "status_message", "flags", "trace_state", "local_root", "_token")

    def __init__(self, tracer: Tracer, name: str, kind: int, trace_id: bytes, parent_id: bytes, flags: int,
                 trace_state: str, local_root: bool, attributes: dict[str, AttrValue] | None, start_ns: int) -> None:
        self._tracer = tracer
        self.trace_id = trace_id
        self.span_id = _new_id(64)
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = 0
        self.attributes = dict(attributes) if attributes else {}
        self.events: list[list[Any]] | None = None
        self.status = 0
        self.status_message = ""
        self.flags = flags
        self.trace_state = trace_state
        self.local_root = local_root
        self._token: contextvars.Token[SdkSpan | None] | None = None

    @property
    def context(self) -> SpanContext:
        """This span's context, to propagate to whatever it calls (see `edge.sdk.inject`)."""
        return SpanContext(self.trace_id, self.span_id, self.flags, self.trace_state)

    def set_attribute(self, key: str, value: AttrValue) -> SdkSpan:
        """Set one attribute (OpenTelemetry semantic-convention names where one fits)."""
        self.attributes[key] = value
        return self

    def set_attributes(self, attrs: dict[str, AttrValue]) -> SdkSpan:
        """Set several attributes."""
        self.attributes.update(attrs)
        return self

    def add_event(self, name: str, attributes: dict[str, AttrValue] | None = None, time_ns: int | None = None) -> SdkSpan:
        """Record a timestamped event."""
        offset = max(0, (time_ns or _time_ns()) - self.start_ns)
        ev = [name, offset, dict(attributes)] if attributes else [name, offset]
        if self.events is None:
            self.events = [ev]
        else:
            self.events.append(ev)
        return self

    def set_status(self, ok: bool, message: str = "") -> SdkSpan:
        """Mark the span OK or ERROR (with a message for errors)."""
        self.status = 1 if ok else 2
        self.status_message = "" if ok else message
        return self

    def record_exception(self, exc: BaseException) -> SdkSpan:
        """Add an `exception` event (semantic conventions) and mark the span as failed."""
        self.add_event("exception", {"exception.type": type(exc).__name__, "exception.message": str(exc)})
        return self.set_status(False, f"{type(exc).__name__}: {exc}")

    def end(self, end_ns: int | None = None) -> None:
        """Finish the span; ending twice is ignored."""
        if self.end_ns:
            return
        self.end_ns = end_ns or _time_ns() or 1
        self._tracer._on_end(self)

    def __enter__(self) -> SdkSpan:
        self._token = _current.set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.record_exception(exc)
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        self.end()

    def _map(self) -> dict[int, Any]:
        # The schema's span map (docs/sdk-cbor-schema.md); keys left out take their defaults.
        m: dict[int, Any] = {1: self.trace_id, 2: self.span_id, 4: self.name, 6: self.start_ns,
                             7: max(0, self.end_ns - self.start_ns)}
        if self.parent_id:
            m[3] = self.parent_id
        if self.kind != 1:
            m[5] = int(self.kind)
        if self.status:
            m[8] = self.status
            if self.status_message:
                m[9] = self.status_message
        if self.attributes:
            m[10] = self.attributes
        if self.events:
            m[11] = self.events
        if self.trace_state:
            m[13] = self.trace_state
        if self.flags != 1:
            m[14] = self.flags
        return m


class Tracer:
    """Records spans of one device and publishes them over an MQTT v5 client."""

    def __init__(self, client: mqtt.Client, device_id: str, resource: dict[str, AttrValue] | None = None,
                 topic: str | None = None, max_batch: int = 128, qos: int = 1, max_delay: float = 0.5,
                 max_message: int = 256 * 1024) -> None:
        self._client = client
        self.device_id = device_id
        self.topic = topic or f"helix/sdk/{device_id}/spans"
        self.resource: dict[str, AttrValue] = {"service.name": device_id, "device.id": device_id, **(resource or {})}
        self.scope = ("helix.sdk", __version__)
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_message = max_message  # bytes; the agent's default sources.mqtt.max_payload
        self.qos = qos
        self._pending: list[SdkSpan] = []
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._flusher: threading.Thread | None = None
        self.published_messages = 0
        self.publish_failures = 0
        # Spans still waiting at exit are sent (while the application's paho loop still runs).
        atexit.register(_flush_at_exit, weakref.ref(self))

    def start_span(self, name: str, kind: SpanKind | int = SpanKind.INTERNAL,
                   parent: SdkSpan | SpanContext | None = None, attributes: dict[str, AttrValue] | None = None,
                   start_ns: int | None = None) -> SdkSpan:
        """Start a span; the parent defaults to the current span of this context (or none: a new trace)."""
        if parent is None:
            parent = _current.get()
        if parent is None:
            return SdkSpan(self, name, kind, _new_id(128), b"", 1, "", True, attributes, start_ns or _time_ns())
        if type(parent) is SdkSpan:
            return SdkSpan(self, name, kind, parent.trace_id, parent.span_id, parent.flags, parent.trace_state,
                           False, attributes, start_ns or _time_ns())
        return SdkSpan(self, name, kind, parent.trace_id, parent.span_id, parent.flags, parent.trace_state, True,
                       attributes, start_ns or _time_ns())

    def span(self, name: str, kind: SpanKind | int = SpanKind.INTERNAL, parent: SdkSpan | SpanContext | None = None,
             attributes: dict[str, AttrValue] | None = None) -> SdkSpan:
        """For `with`: the span is current inside the block, ended after it, and failed on an exception."""
        return self.start_span(name, kind, parent, attributes)

    def _on_end(self, span: SdkSpan) -> None:
        with self._lock:
            self._pending.append(span)
            n = len(self._pending)
        if n >= self.max_batch or (self.max_delay <= 0 and span.local_root):
            self.flush()
        elif n == 1 and self.max_delay > 0:
            if self._flusher is None:
                self._start_flusher()
            self._due.set()

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is None:
                self._flusher = threading.Thread(target=_flush_loop, args=(weakref.ref(self), self._due),
                                                 name="helix-sdk-flush", daemon=True)
                self._flusher.start()

    def flush(self) -> None:
        """Publish every ended span now (call before disconnecting the client)."""
        with self._lock:
            spans, self._pending = self._pending, []
        if spans:
            self._publish(spans)

    def _publish(self, spans: list[SdkSpan]) -> None:
        maps = [s._map() for s in spans]
        # Numbered and handed to paho under one lock, so the broker gets the numbers in order.
        with _seq_lock:
            seq = _next_seq.get(self.topic, 0)
            run = _runs.get(self.topic)
            if run is None:
                run = _runs[self.topic] = getrandbits(32)
            payload = cbor2.dumps({0: 1, 1: self.resource, 2: self.scope, 3: maps, 6: run, 4: seq}, default=_unknown)
            fits = len(payload) <= self.max_message or len(spans) == 1
            if fits:
                _next_seq[self.topic] = (seq + 1) & 0xFFFFFFFF
                info = self._client.publish(self.topic, payload, qos=self.qos)
        if not fits:  # over what the agent takes (sources.mqtt.max_payload): in halves, each numbered
            half = len(spans) // 2
            self._publish(spans[:half])
            self._publish(spans[half:])
            return
        if info.rc:
            self.publish_failures += 1  # and the agent counts the gap in the sequence
            log.warning("span publish failed rc=%s topic=%s spans=%d", info.rc, self.topic, len(spans))
        else:
            self.published_messages += 1

    def current_span(self) -> SdkSpan | None:
        """The span current in this context, if any."""
        return _current.get()


def _flush_loop(ref: weakref.ref[Tracer], due: threading.Event) -> None:
    # One thread per tracer: woken when a batch starts, it publishes the batch max_delay later.
    while True:
        due.wait()
        due.clear()
        tracer = ref()
        if tracer is None:
            return
        delay = tracer.max_delay
        del tracer
        time.sleep(delay)
        tracer = ref()
        if tracer is None:
            return
        tracer.flush()
        del tracer


def _flush_at_exit(ref: weakref.ref[Tracer]) -> None:
    tracer = ref()
    if tracer is not None:
        tracer.flush()
