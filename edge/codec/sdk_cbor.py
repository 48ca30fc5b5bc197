"""The lightweight-SDK span schema: CBOR maps with small integer keys, small enough for microcontrollers.

The schema is specified in docs/sdk-cbor-schema.md so that a C or MicroPython device can emit it without our
code; this module is the reference encoder and the agent's decoder. Decoding is strict about types and
per-span: one malformed span is dropped (and counted by the caller) without losing its neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2

from ..errors import DecodeError, describe
from ..model import AttrValue, Attributes, Event, Link, Resource, Scope, Source, Span, SpanKind, StatusCode, share
from ..propagation import SpanContext

__all__ = [
    "SCHEMA_VERSION",
    "Key",
    "DecodedPayload",
    "encode_payload",
    "decode_payload",
    "span_to_map",
]

SCHEMA_VERSION = 1

# Limits that keep one device from flooding the agent; beyond them a span is refused, not truncated silently.
MAX_SPANS_PER_MESSAGE = 10_000
MAX_ATTRIBUTES = 128
MAX_EVENTS = 128
MAX_LINKS = 32
MAX_STRING = 16 * 1024
MAX_DEPTH = 4


class Key:
    """Integer keys of the span map (see docs/sdk-cbor-schema.md)."""

    TRACE_ID = 1
    SPAN_ID = 2
    PARENT_ID = 3
    NAME = 4
    KIND = 5
    START = 6
    DURATION = 7
    STATUS = 8
    STATUS_MESSAGE = 9
    ATTRIBUTES = 10
    EVENTS = 11
    LINKS = 12
    TRACE_STATE = 13
    FLAGS = 14


class EnvKey:
    """Integer keys of the envelope map."""

    VERSION = 0
    RESOURCE = 1
    SCOPE = 2
    SPANS = 3
    SEQ = 4
    CUT = 5
    RUN = 6


# Envelope key 5: what the device cut to fit its buffers, by kind (docs/sdk-cbor-schema.md).
CUT_KINDS = {1: "spans", 2: "attributes", 3: "events", 4: "strings"}
MAX_SEQ = 2**32 - 1
_TIME_END = 2**64  # times are unsigned 64-bit nanoseconds, as OTLP's fixed64 carries them


@dataclass(slots=True)
class DecodedPayload:
    """What one MQTT message held: the good spans and one reason per refused span."""

    spans: list[Span] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seq: int | None = None  # the device's message sequence number, when it sends one
    run: int | None = None  # the device's run id: drawn at each start, so a restart is told from a late message
    cut: dict[str, int] = field(default_factory=dict)  # what the device cut to fit, by kind


def _check_value(v: Any, where: str, depth: int = 0) -> AttrValue:
    if depth > MAX_DEPTH:
        raise DecodeError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(v, bool | int | float):
        if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
            raise DecodeError(f"{where}: integer out of 64-bit range")
        return v
    if isinstance(v, str | bytes):
        if len(v) > MAX_STRING:
            raise DecodeError(f"{where}: value longer than {MAX_STRING} bytes")
        return share(v) if isinstance(v, str) else v
    if isinstance(v, list):
        return [_check_value(x, where, depth + 1) for x in v]
    if isinstance(v, dict):
        return {_check_key(k, where): _check_value(x, where, depth + 1) for k, x in v.items()}
    raise DecodeError(f"{where}: unsupported value type {type(v).__name__}")


def _check_key(k: Any, where: str) -> str:
    if not isinstance(k, str) or not k or len(k) > 256:
        raise DecodeError(f"{where}: attribute keys must be non-empty text up to 256 characters, got {describe(k)}")
    return share(k)


def _attrs(v: Any, where: str) -> Attributes:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise DecodeError(f"{where}: expected a map of attributes, got {type(v).__name__}")
    if len(v) > MAX_ATTRIBUTES:
        raise DecodeError(f"{where}: more than {MAX_ATTRIBUTES} attributes")
    return {_check_key(k, where): _check_value(x, f"{where}.{k}") for k, x in v.items()}


def _uint(m: dict[int, Any], key: int, where: str, required: bool = False, default: int = 0) -> int:
    v = m.get(key)
    if v is None:
        if required:
            raise DecodeError(f"{where}: missing key {key}")
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64:
        raise DecodeError(f"{where}: key {key} must be an unsigned integer, got {describe(v)}")
    return v


def _text(m: dict[int, Any], key: int, where: str, required: bool = False) -> str:
    v = m.get(key)
    if v is None:
        if required:
            raise DecodeError(f"{where}: missing key {key}")
        return ""
    if not isinstance(v, str) or len(v) > MAX_STRING:
        raise DecodeError(f"{where}: key {key} must be text up to {MAX_STRING} characters")
    return v


def _id(m: dict[int, Any], key: int, size: int, where: str) -> bytes | None:
    v = m.get(key)
    if v is None:
        return None
    if not isinstance(v, bytes) or len(v) != size or not any(v):
        raise DecodeError(f"{where}: key {key} must be a non-zero byte string of length {size}")
    return v


def _span_from_map(m: Any, idx: int, resource: Resource, scope: Scope, remote: SpanContext | None,
                   ids: dict[bytes, bytes]) -> Span:
    where = f"span[{idx}]"
    if not isinstance(m, dict):
        raise DecodeError(f"{where}: expected a map, got {type(m).__name__}")
    span_id = _id(m, Key.SPAN_ID, 8, where)
    if span_id is None:
        raise DecodeError(f"{where}: missing span id (key 2)")
    trace_id = _id(m, Key.TRACE_ID, 16, where)
    parent = _id(m, Key.PARENT_ID, 8, where)
    trace_state = _text(m, Key.TRACE_STATE, where)
    # A span that names no trace continues the context carried by the message's traceparent user property.
    if trace_id is None:
        if remote is None:
            raise DecodeError(f"{where}: no trace id (key 1) and the message carries no valid traceparent")
        trace_id = remote.trace_id
    if parent is None and remote is not None and trace_id == remote.trace_id:
        parent = remote.span_id
        trace_state = trace_state or remote.trace_state
    kind = _uint(m, Key.KIND, where, default=SpanKind.INTERNAL)
    if kind > 5:
        raise DecodeError(f"{where}: kind must be 0-5, got {kind}")
    start = _uint(m, Key.START, where, required=True)
    duration = _uint(m, Key.DURATION, where, required=True)
    if start + duration >= _TIME_END:
        raise DecodeError(f"{where}: start + duration is past the year 2554 (64-bit nanoseconds)")
    status = _uint(m, Key.STATUS, where)
    if status > 2:
        raise DecodeError(f"{where}: status must be 0 (unset), 1 (ok) or 2 (error), got {status}")
    events_raw = m.get(Key.EVENTS) or []
    links_raw = m.get(Key.LINKS) or []
    if not isinstance(events_raw, list) or len(events_raw) > MAX_EVENTS:
        raise DecodeError(f"{where}: events (key 11) must be an array of at most {MAX_EVENTS}")
    if not isinstance(links_raw, list) or len(links_raw) > MAX_LINKS:
        raise DecodeError(f"{where}: links (key 12) must be an array of at most {MAX_LINKS}")
    events = []
    for i, ev in enumerate(events_raw):
        if not isinstance(ev, list) or not 2 <= len(ev) <= 3 or not isinstance(ev[0], str) \
                or isinstance(ev[1], bool) or not isinstance(ev[1], int) or not 0 <= ev[1] < _TIME_END - start:
            raise DecodeError(f"{where}.events[{i}]: expected [name, offset_ns, attributes?]")
        events.append(Event(share(ev[0]), start + ev[1], _attrs(ev[2] if len(ev) > 2 else None, f"{where}.events[{i}]")))
    links = []
    for i, lk in enumerate(links_raw):
        if not isinstance(lk, list) or not 2 <= len(lk) <= 3 or not isinstance(lk[0], bytes) or len(lk[0]) != 16 \
                or not isinstance(lk[1], bytes) or len(lk[1]) != 8:
            raise DecodeError(f"{where}.links[{i}]: expected [trace_id(16 bytes), span_id(8 bytes), attributes?]")
        links.append(Link(lk[0], lk[1], "", _attrs(lk[2] if len(lk) > 2 else None, f"{where}.links[{i}]")))
    flags = _uint(m, Key.FLAGS, where, default=1)
    return Span(
        trace_id=ids.setdefault(trace_id, trace_id),
        span_id=ids.setdefault(span_id, span_id),
        parent_span_id=ids.setdefault(parent, parent) if parent else b"",
        name=share(_text(m, Key.NAME, where, required=True)),
        kind=SpanKind(kind),
        start_ns=start,
        end_ns=start + duration,
        status_code=StatusCode(status),
        status_message=_text(m, Key.STATUS_MESSAGE, where),
        attributes=_attrs(m.get(Key.ATTRIBUTES), f"{where}.attributes"),
        events=tuple(events),
        links=tuple(links),
        resource=resource,
        scope=scope,
        source=Source.SDK_MQTT,
        trace_state=trace_state,
        flags=flags & 0xFF,
    )


def decode_payload(data: bytes, default_resource: Attributes, remote: SpanContext | None = None) -> DecodedPayload:
    """Decode one MQTT payload: an envelope map or a bare array of span maps.

    `default_resource` fills resource keys the device left out (e.g. `service.name` from the topic).
    Raises DecodeError only when the message as a whole is unusable; bad spans are listed in `errors`.
    """
    try:
        doc = cbor2.loads(data)
    except Exception as e:  # noqa: BLE001 - cbor2 raises many types on garbage
        raise DecodeError(f"payload is not CBOR: {describe(str(e), 120)}") from None
    try:
        return _decode_doc(doc, default_resource, remote)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the bytes, a message is refused, never the agent stopped
        raise DecodeError(f"malformed span message ({type(e).__name__})") from None


def _decode_doc(doc: Any, default_resource: Attributes, remote: SpanContext | None) -> DecodedPayload:
    res_attrs: Attributes = {}
    scope = Scope()
    if isinstance(doc, dict):
        version = doc.get(EnvKey.VERSION, SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise DecodeError(f"unsupported schema version {describe(version)} (this agent reads version {SCHEMA_VERSION})")
        res_attrs = _attrs(doc.get(EnvKey.RESOURCE), "resource")
        sc = doc.get(EnvKey.SCOPE)
        if sc is not None:
            if not isinstance(sc, list) or not 1 <= len(sc) <= 2 or not all(isinstance(x, str) for x in sc):
                raise DecodeError("scope (key 2) must be [name, version?]")
            scope = Scope(sc[0], sc[1] if len(sc) > 1 else "")
        spans_raw = doc.get(EnvKey.SPANS)
        seq, run, cut = _seq_and_cut(doc)
    elif isinstance(doc, list):
        spans_raw, seq, run, cut = doc, None, None, {}
    else:
        raise DecodeError(f"payload must be an envelope map or an array of spans, got {type(doc).__name__}")
    if not isinstance(spans_raw, list):
        raise DecodeError("spans (key 3) must be an array")
    if len(spans_raw) > MAX_SPANS_PER_MESSAGE:
        raise DecodeError(f"more than {MAX_SPANS_PER_MESSAGE} spans in one message")
    resource = Resource.of({**default_resource, **res_attrs})
    out = DecodedPayload(seq=seq, run=run, cut=cut)
    ids: dict[bytes, bytes] = {}  # one copy of each trace id and span id in the message (parents repeat them)
    for i, m in enumerate(spans_raw):
        try:
            span = _span_from_map(m, i, resource, scope, remote, ids)
            span.approx_size()  # now, while the strings it shares are still the table's (see share())
            out.spans.append(span)
        except DecodeError as e:
            out.errors.append(str(e))
        except Exception as e:  # noqa: BLE001 - one span this decoder did not foresee costs only itself
            out.errors.append(f"span[{i}]: malformed ({type(e).__name__})")
    return out


def _uint32(doc: dict[Any, Any], key: int, name: str) -> int | None:
    v = doc.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SEQ):
        raise DecodeError(f"{name} (key {key}) must be an unsigned 32-bit integer")
    return v


def _seq_and_cut(doc: dict[Any, Any]) -> tuple[int | None, int | None, dict[str, int]]:
    seq = _uint32(doc, EnvKey.SEQ, "seq")
    run = _uint32(doc, EnvKey.RUN, "run")
    raw = doc.get(EnvKey.CUT)
    if raw is None:
        return seq, run, {}
    if not isinstance(raw, dict) or len(raw) > len(CUT_KINDS) or not all(
            k in CUT_KINDS and not isinstance(v, bool) and isinstance(v, int) and 0 <= v <= MAX_SEQ
            for k, v in raw.items()):
        raise DecodeError("cut counts (key 5) must map 1-4 to unsigned 32-bit integers")
    return seq, run, {CUT_KINDS[k]: v for k, v in raw.items() if v}


def span_to_map(span: Span, omit_trace: bool = False) -> dict[int, Any]:
    """Encode one span as a schema map; `omit_trace` leaves out ids the message's traceparent already carries."""
    m: dict[int, Any] = {Key.SPAN_ID: span.span_id, Key.NAME: span.name,
                         Key.START: span.start_ns, Key.DURATION: span.duration_ns}
    if not omit_trace:
        m[Key.TRACE_ID] = span.trace_id
        if span.parent_span_id:
            m[Key.PARENT_ID] = span.parent_span_id
    if span.kind != SpanKind.INTERNAL:
        m[Key.KIND] = int(span.kind)
    if span.status_code:
        m[Key.STATUS] = int(span.status_code)
    if span.status_message:
        m[Key.STATUS_MESSAGE] = span.status_message
    if span.attributes:
        m[Key.ATTRIBUTES] = span.attributes
    if span.events:
        m[Key.EVENTS] = [[e.name, max(0, e.time_ns - span.start_ns)] + ([e.attributes] if e.attributes else [])
                         for e in span.events]
    if span.links:
        m[Key.LINKS] = [[lk.trace_id, lk.span_id] + ([lk.attributes] if lk.attributes else []) for lk in span.links]
    if span.trace_state:
        m[Key.TRACE_STATE] = span.trace_state
    if span.flags != 1:
        m[Key.FLAGS] = span.flags
    return m


def encode_payload(spans: list[Span], resource: Attributes, scope: Scope | None = None,
                   seq: int | None = None, run: int | None = None) -> bytes:
    """Encode spans of one resource as an envelope map (with the device's run id and message number if given)."""
    env: dict[int, Any] = {EnvKey.VERSION: SCHEMA_VERSION, EnvKey.RESOURCE: resource,
                           EnvKey.SPANS: [span_to_map(s) for s in spans]}
    if scope is not None and scope.name:
        env[EnvKey.SCOPE] = [scope.name, scope.version] if scope.version else [scope.name]
    if seq is not None:
        env[EnvKey.SEQ] = seq & MAX_SEQ
    if run is not None:
        env[EnvKey.RUN] = run & MAX_SEQ
    return cbor2.dumps(env)
