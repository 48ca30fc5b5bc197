"""OTLP export requests written as protobuf bytes straight from the span model.

The bytes are those the official classes serialize for `request_from_spans(spans).SerializeToString()` (edge/codec/
otlp.py): the same grouping by resource and scope, fields in field-number order, proto3 defaults left out. Writing
them directly skips building a message object per span, attribute and value. A value OTLP cannot hold fails as it
does there: ValueError for an integer outside int64 or a time outside uint64, UnicodeEncodeError for a lone surrogate.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from ..model import Attributes, Event, Link, Source, Span

__all__ = ["request_bytes"]

_U64 = 1 << 64
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_ONE_BYTE = [bytes([i]) for i in range(128)]
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack

# Tags (field number << 3 | wire type) of the fields written here; names follow opentelemetry-proto.
_REQ_RESOURCE_SPANS = b"\x0a"
_RS_RESOURCE, _RS_SCOPE_SPANS = b"\x0a", b"\x12"
_RESOURCE_ATTRIBUTES = b"\x0a"
_SS_SCOPE, _SS_SPANS = b"\x0a", b"\x12"
_SCOPE_NAME, _SCOPE_VERSION = b"\x0a", b"\x12"
_SPAN_TRACE_ID, _SPAN_SPAN_ID, _SPAN_TRACE_STATE, _SPAN_PARENT, _SPAN_NAME = b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x2a"
_SPAN_KIND, _SPAN_START, _SPAN_END, _SPAN_ATTRIBUTES = b"\x30", b"\x39", b"\x41", b"\x4a"
_SPAN_EVENTS, _SPAN_LINKS, _SPAN_STATUS, _SPAN_FLAGS = b"\x5a", b"\x6a", b"\x7a", b"\x85\x01"
_EVENT_TIME, _EVENT_NAME, _EVENT_ATTRIBUTES = b"\x09", b"\x12", b"\x1a"
_LINK_TRACE_ID, _LINK_SPAN_ID, _LINK_TRACE_STATE, _LINK_ATTRIBUTES = b"\x0a", b"\x12", b"\x1a", b"\x22"
_STATUS_MESSAGE, _STATUS_CODE = b"\x12", b"\x18"
_KV_KEY, _KV_VALUE = b"\x0a", b"\x12"
_ANY_STRING, _ANY_BOOL, _ANY_INT, _ANY_DOUBLE = b"\x0a", b"\x10", b"\x18", b"\x21"
_ANY_ARRAY, _ANY_KVLIST, _ANY_BYTES = b"\x2a", b"\x32", b"\x3a"
_LIST_VALUES = b"\x0a"

# Encoded attributes (with their tag) by key and text value: spans of a service repeat the same few hundred pairs.
# Bounded by starting over; texts longer than _CACHED_LEN are one-off values (ids, stacks, queries) and not kept.
_CACHE_MAX = 8192
_CACHED_LEN = 96


def _varint(n: int) -> bytes:
    if n < 128:
        return _ONE_BYTE[n]
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int64(v: int) -> bytes:
    if v < 0:
        if v < _I64_MIN:
            raise ValueError(f"Value out of range: {v}")
        return _varint(v + _U64)
    if v > _I64_MAX:
        raise ValueError(f"Value out of range: {v}")
    return _varint(v)


def _fixed64(tag: bytes, v: int) -> bytes:
    if not 0 <= v < _U64:
        raise ValueError(f"Value out of range: {v}")
    return tag + _pack_fixed64(v)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _text(tag: bytes, s: str) -> bytes:
    b = s.encode("utf-8")
    return tag + _varint(len(b)) + b


def _any(v: Any) -> bytes:
    """An AnyValue's payload, as edge/codec/otlp.py's _value_to_pb sets it."""
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, int):
        return _ANY_INT + _int64(v)
    if isinstance(v, float):
        return _ANY_DOUBLE + _pack_double(v)
    if isinstance(v, str):
        return _text(_ANY_STRING, v)
    if isinstance(v, (bytes, bytearray)):
        return _field(_ANY_BYTES, bytes(v))
    if isinstance(v, (list, tuple)):
        return _field(_ANY_ARRAY, b"".join([_field(_LIST_VALUES, _any(x)) for x in v]))
    if isinstance(v, dict):
        return _field(_ANY_KVLIST, b"".join([_field(_LIST_VALUES, _key_value(k, x)) for k, x in v.items()]))
    return _text(_ANY_STRING, str(v))


def _key_value(k: str, v: Any) -> bytes:
    if not isinstance(k, str):
        raise TypeError(f"attribute key {k!r} is not text")
    key = _text(_KV_KEY, k) if k else b""
    return key + _field(_KV_VALUE, _any(v))


_caches: dict[bytes, dict[str, dict[str, bytes]]] = {}
_cached = 0


def _attributes(out: list[bytes], tag: bytes, attrs: Attributes) -> None:
    """Append each attribute as a KeyValue field with `tag`."""
    global _cached
    cache = _caches.get(tag)
    if cache is None:
        cache = _caches[tag] = {}
    for k, v in attrs.items():
        if type(v) is str and type(k) is str and len(v) <= _CACHED_LEN:
            by_value = cache.get(k)
            if by_value is None:
                by_value = cache[k] = {}
            kv = by_value.get(v)
            if kv is None:
                kv = _field(tag, _key_value(k, v))
                if _cached >= _CACHE_MAX:
                    for c in _caches.values():
                        c.clear()
                    _cached = 0
                    by_value = cache[k] = {}
                by_value[v] = kv
                _cached += 1
            out.append(kv)
        else:
            out.append(_field(tag, _key_value(k, v)))


_SOURCE_FIELDS = {src: _field(_SPAN_ATTRIBUTES, _key_value("helix.source", src.value)) for src in Source}


def _event(e: Event) -> bytes:
    parts: list[bytes] = []
    if e.time_ns:
        parts.append(_fixed64(_EVENT_TIME, e.time_ns))
    if e.name:
        parts.append(_text(_EVENT_NAME, e.name))
    _attributes(parts, _EVENT_ATTRIBUTES, e.attributes)
    return _field(_SPAN_EVENTS, b"".join(parts))


def _link(lk: Link) -> bytes:
    parts: list[bytes] = []
    if lk.trace_id:
        parts.append(_field(_LINK_TRACE_ID, bytes(lk.trace_id)))
    if lk.span_id:
        parts.append(_field(_LINK_SPAN_ID, bytes(lk.span_id)))
    if lk.trace_state:
        parts.append(_text(_LINK_TRACE_STATE, lk.trace_state))
    _attributes(parts, _LINK_ATTRIBUTES, lk.attributes)
    return _field(_SPAN_LINKS, b"".join(parts))


def _span(s: Span, source_attribute: bool) -> bytes:
    parts: list[bytes] = []
    append = parts.append
    if s.trace_id:
        append(_field(_SPAN_TRACE_ID, bytes(s.trace_id)))
    if s.span_id:
        append(_field(_SPAN_SPAN_ID, bytes(s.span_id)))
    if s.trace_state:
        append(_text(_SPAN_TRACE_STATE, s.trace_state))
    if s.parent_span_id:
        append(_field(_SPAN_PARENT, bytes(s.parent_span_id)))
    if s.name:
        append(_text(_SPAN_NAME, s.name))
    kind = int(s.kind)
    if kind:
        append(_SPAN_KIND + _int64(kind))
    if s.start_ns:
        append(_fixed64(_SPAN_START, s.start_ns))
    if s.end_ns:
        append(_fixed64(_SPAN_END, s.end_ns))
    attrs = s.attributes
    _attributes(parts, _SPAN_ATTRIBUTES, attrs)
    if source_attribute and "helix.source" not in attrs:
        append(_SOURCE_FIELDS[s.source])
    for e in s.events:
        append(_event(e))
    for lk in s.links:
        append(_link(lk))
    code = int(s.status_code)
    if code or s.status_message:
        status = (_text(_STATUS_MESSAGE, s.status_message) if s.status_message else b"") + \
            (_STATUS_CODE + _int64(code) if code else b"")
        append(_field(_SPAN_STATUS, status))
    flags = s.flags & 0xFF
    if flags:
        append(_SPAN_FLAGS + _pack_fixed32(flags))
    return _field(_SS_SPANS, b"".join(parts))


def request_bytes(spans: Sequence[Span], source_attribute: bool = True) -> bytes:
    """An OTLP ExportTraceServiceRequest of `spans`, serialized: grouped by resource, then scope, in order of first
    appearance; `helix.source` is added to each span's attributes unless it has one (or not asked)."""
    # Equal resources are one group (as request_from_spans' dict does); a node's spans share a few resource objects,
    # so each object is looked up by value once.
    groups: dict[Any, dict[tuple[str, str], list[Span]]] = {}
    by_object: dict[int, dict[tuple[str, str], list[Span]]] = {}
    resources: list[Any] = []
    for s in spans:
        r = s.resource
        scopes = by_object.get(id(r))
        if scopes is None:
            scopes = groups.get(r.attributes)
            if scopes is None:
                scopes = groups[r.attributes] = {}
                resources.append(r)
            by_object[id(r)] = scopes
        sc = s.scope
        key = (sc.name, sc.version)
        members = scopes.get(key)
        if members is None:
            members = scopes[key] = []
        members.append(s)
    out: list[bytes] = []
    for r in resources:
        parts: list[bytes] = []
        attrs = r.as_dict()
        if attrs:
            res: list[bytes] = []
            _attributes(res, _RESOURCE_ATTRIBUTES, attrs)
            parts.append(_field(_RS_RESOURCE, b"".join(res)))
        for (name, version), members in groups[r.attributes].items():
            scope = (_text(_SCOPE_NAME, name) if name else b"") + (_text(_SCOPE_VERSION, version) if version else b"")
            body = [_field(_SS_SCOPE, scope)]
            body += [_span(s, source_attribute) for s in members]
            parts.append(_field(_RS_SCOPE_SPANS, b"".join(body)))
        out.append(_field(_REQ_RESOURCE_SPANS, b"".join(parts)))
    return b"".join(out)
