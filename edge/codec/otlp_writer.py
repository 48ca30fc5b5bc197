"""OTLP export requests written as protobuf bytes straight from the span model.

The bytes are those the official classes serialize for `request_from_spans(spans).SerializeToString()` (edge/codec/
otlp.py): the same grouping by resource and scope, fields in field-number order, proto3 defaults left out. Writing
them directly skips building a message object per span, attribute and value. A value OTLP cannot hold fails as it
does there: ValueError for an integer outside int64 or a time outside uint64, UnicodeEncodeError for a lone surrogate.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final, cast

from ..model import Attributes, Event, Link, Resource, Scope, Source, Span

__all__ = ["request_bytes", "Grouping", "attribute_field", "value_key"]

_U64: Final = 1 << 64
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_ONE_BYTE: Final = [bytes([i]) for i in range(128)]
_HIGH_BYTE: Final = [bytes([i | 128]) for i in range(128)]  # a varint's first byte of two, by its low 7 bits
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32: Final = struct.Struct("<I").pack

# Tags (field number << 3 | wire type) of the fields written here; names follow opentelemetry-proto.
_REQ_RESOURCE_SPANS = b"\x0a"
_RS_RESOURCE, _RS_SCOPE_SPANS = b"\x0a", b"\x12"
_RESOURCE_ATTRIBUTES = b"\x0a"
_SS_SCOPE: Final = b"\x0a"
_SS_SPANS: Final = b"\x12"
_SCOPE_NAME, _SCOPE_VERSION = b"\x0a", b"\x12"
# Final: compiled, the straight path (uplink/wire/columnar_otlp.py) then reads them as C statics, not from a dict.
_SPAN_TRACE_ID: Final = b"\x0a"
_SPAN_SPAN_ID: Final = b"\x12"
_SPAN_TRACE_STATE: Final = b"\x1a"
_SPAN_PARENT: Final = b"\x22"
_SPAN_NAME: Final = b"\x2a"
_SPAN_KIND: Final = b"\x30"
_SPAN_START: Final = b"\x39"
_SPAN_END: Final = b"\x41"
_SPAN_ATTRIBUTES: Final = b"\x4a"
_SPAN_EVENTS, _SPAN_LINKS = b"\x5a", b"\x6a"
_SPAN_STATUS: Final = b"\x7a"
_SPAN_FLAGS: Final = b"\x85\x01"
_EVENT_TIME, _EVENT_NAME, _EVENT_ATTRIBUTES = b"\x09", b"\x12", b"\x1a"
_LINK_TRACE_ID, _LINK_SPAN_ID, _LINK_TRACE_STATE, _LINK_ATTRIBUTES = b"\x0a", b"\x12", b"\x1a", b"\x22"
_STATUS_MESSAGE: Final = b"\x12"
_STATUS_CODE: Final = b"\x18"
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
    if n < 16384:  # most lengths of a span's fields; compiled, a bytearray's appends are Python method calls
        return _HIGH_BYTE[n & 127] + _ONE_BYTE[n >> 7]
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


# Per tag: encoded KeyValue fields by key, then by value, one map per value type (True, 1 and 1.0 are equal keys of
# one map but are written differently; floats are not kept: 0.0 equals -0.0).
_caches: dict[bytes, tuple[dict[str, dict[str, bytes]], dict[str, dict[int, bytes]]]] = {}
_cached = 0


def _clear_caches() -> None:
    global _cached
    for texts, ints in _caches.values():
        texts.clear()
        ints.clear()
    _resources.clear()
    _resource_values.clear()
    _cached = 0


def _attributes(out: list[bytes], tag: bytes, attrs: Attributes) -> None:
    """Append each attribute as a KeyValue field with `tag`."""
    pair = _caches.get(tag)
    if pair is None:
        pair = _caches[tag] = ({}, {})
    texts, ints = pair
    for k, v in attrs.items():
        out.append(_attribute(tag, texts, ints, k, v))


def _attribute(tag: bytes, texts: dict[str, dict[str, bytes]], ints: dict[str, dict[int, bytes]], k: str,
               v: Any) -> bytes:
    """The KeyValue field of k = v with `tag`, through the tag's caches of text and integer values."""
    if type(k) is not str:
        return _field(tag, _key_value(k, v))
    if type(v) is int:
        return _remembered(ints, tag, k, v)
    if type(v) is str and len(cast(str, v)) <= _CACHED_LEN:
        return _remembered(texts, tag, k, v)
    return _field(tag, _key_value(k, v))


def _remembered(cache: dict[str, Any], tag: bytes, k: str, v: Any) -> bytes:
    """The KeyValue field of k = v with `tag`, from `cache` (values of one type by key) or written and kept there."""
    global _cached
    # Typed, so that compiled, the lookups are dict operations rather than method calls on an unknown object.
    by_value: dict[Any, bytes] | None = cache.get(k)
    if by_value is None:
        by_value = cache[k] = {}
    kv = by_value.get(v)
    if kv is None:
        kv = _field(tag, _key_value(k, v))
        if _cached >= _CACHE_MAX:
            _clear_caches()
            by_value = cache[k] = {}
        by_value[v] = kv
        _cached += 1
    return kv


# Encoded resources: a gateway's batches name the same few resource objects (a table set's), and a node's spans share
# theirs. By object (kept here, so its id stays its own), then by value: each batch without a table set brings its own
# objects of the same few resources. Bounded with the attribute caches.
_resources: dict[int, tuple[Resource, bytes]] = {}
_resource_values: dict[tuple[Any, int], bytes] = {}


def value_key(frozen: Any) -> tuple[Any, int] | None:
    """A key for a resource's frozen attributes that equals another's only where both are written the same: text
    keys with text, bytes, integer or boolean values, the booleans marked (True == 1 in Python, not in OTLP); None
    for any other (floats: 0.0 == -0.0; containers may nest such values)."""
    bools = 0
    bit = 1
    for kv in frozen:
        k, v = kv
        tv = type(v)
        if type(k) is not str:
            return None
        if tv is bool:
            bools |= bit
        elif tv is not str and tv is not int and tv is not bytes:
            return None
        bit <<= 1
    return (frozen, bools)


def _resource(r: Resource) -> bytes:
    """The Resource field of a ResourceSpans (empty when it has no attributes)."""
    hit = _resources.get(id(r))
    if hit is not None and hit[0] is r:
        return hit[1]
    key = value_key(r.attributes)
    known = _resource_values.get(key) if key is not None else None
    if known is not None:
        out = known
    else:
        attrs = r.as_dict()
        out = b""
        if attrs:
            res: list[bytes] = []
            _attributes(res, _RESOURCE_ATTRIBUTES, attrs)
            out = _field(_RS_RESOURCE, b"".join(res))
        if key is not None:
            if len(_resource_values) >= _RESOURCES_MAX:
                _resource_values.clear()
            _resource_values[key] = out
    if len(_resources) >= _RESOURCES_MAX:
        _resources.clear()
    _resources[id(r)] = (r, out)
    return out


_RESOURCES_MAX = 1024


_SOURCE_FIELDS: Final = {src: _field(_SPAN_ATTRIBUTES, _key_value("helix.source", src.value)) for src in Source}


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


# Tag and length of the ids as they usually are (16-byte trace ids, 8-byte span ids), and of each span kind.
_TRACE_ID_16: Final = _SPAN_TRACE_ID + b"\x10"
_SPAN_ID_8: Final = _SPAN_SPAN_ID + b"\x08"
_PARENT_8: Final = _SPAN_PARENT + b"\x08"
_KINDS: Final = [b""] + [_SPAN_KIND + _ONE_BYTE[k] for k in range(1, 128)]
_pack_times: Final = struct.Struct("<cQcQ").pack


def _id(tag: bytes, usual: bytes, size: int, v: bytes) -> bytes:
    """An id field; `usual` is its tag and length for an id of the usual `size`."""
    if len(v) == size:
        return usual + (v if type(v) is bytes else bytes(v))
    return _field(tag, bytes(v))


def _span(s: Span, source_attribute: bool) -> bytes:
    parts: list[bytes] = []
    append = parts.append
    if s.trace_id:
        append(_id(_SPAN_TRACE_ID, _TRACE_ID_16, 16, s.trace_id))
    if s.span_id:
        append(_id(_SPAN_SPAN_ID, _SPAN_ID_8, 8, s.span_id))
    if s.trace_state:
        append(_text(_SPAN_TRACE_STATE, s.trace_state))
    if s.parent_span_id:
        append(_id(_SPAN_PARENT, _PARENT_8, 8, s.parent_span_id))
    name: str = s.name
    if name:
        append(_text(_SPAN_NAME, name))
    kind = int(s.kind)
    if 0 <= kind < 128:
        if kind:
            append(_KINDS[kind])
    else:
        append(_SPAN_KIND + _int64(kind))
    start: int = s.start_ns
    end: int = s.end_ns
    if start and end and 0 < start < _U64 and 0 < end < _U64:
        append(_pack_times(_SPAN_START, start, _SPAN_END, end))
    else:
        if start:
            append(_fixed64(_SPAN_START, start))
        if end:
            append(_fixed64(_SPAN_END, end))
    attrs = s.attributes
    _attributes(parts, _SPAN_ATTRIBUTES, attrs)
    if source_attribute and "helix.source" not in attrs:
        append(_SOURCE_FIELDS[s.source])
    if s.events:
        for e in s.events:
            append(_event(e))
    if s.links:
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
    grouping = Grouping()
    for s in spans:
        grouping.members(s.resource, s.scope).append(_span(s, source_attribute))
    return grouping.request()


class Grouping:
    """Written spans grouped as their request holds them: by resource, then scope (name, version), each in order of
    first appearance. Equal resources are one group (as request_from_spans' dict makes them); spans share a few
    resource objects, so each object is looked up by value once."""

    def __init__(self) -> None:
        self.groups: dict[Any, dict[tuple[str, str], list[bytes]]] = {}
        self.by_object: dict[int, dict[tuple[str, str], list[bytes]]] = {}
        self.resources: list[Resource] = []
        self.last_r: object = None
        self.last_sc: object = None
        self.last: list[bytes] = []

    def members(self, r: Resource, sc: Scope) -> list[bytes]:
        """Where the written spans of resource `r` and scope `sc` go (`r` must outlive the grouping)."""
        if r is self.last_r and sc is self.last_sc:  # neighbours usually share both
            return self.last
        scopes = self.by_object.get(id(r))
        if scopes is None:
            scopes = self.groups.get(r.attributes)
            if scopes is None:
                scopes = self.groups[r.attributes] = {}
                self.resources.append(r)
            self.by_object[id(r)] = scopes
        key = (sc.name, sc.version)
        members = scopes.get(key)
        if members is None:
            members = scopes[key] = []
        self.last_r, self.last_sc, self.last = r, sc, members
        return members

    def request(self) -> bytes:
        """The request of the spans grouped so far."""
        return _assemble(self.resources, self.groups)


def _assemble(resources: list[Resource], groups: dict[Any, dict[tuple[str, str], list[bytes]]]) -> bytes:
    """The request of written Span fields grouped by resource (`groups` by each resource's attributes, in the order
    of `resources`), then by scope (name, version)."""
    out: list[bytes] = []
    for r in resources:
        parts: list[bytes] = []
        res = _resource(r)
        if res:
            parts.append(res)
        for (name, version), members in groups[r.attributes].items():
            scope = (_text(_SCOPE_NAME, name) if name else b"") + (_text(_SCOPE_VERSION, version) if version else b"")
            body = [_field(_SS_SCOPE, scope)]
            body += members
            parts.append(_field(_RS_SCOPE_SPANS, b"".join(body)))
        out.append(_field(_REQ_RESOURCE_SPANS, b"".join(parts)))
    return b"".join(out)


# The span attributes' caches, held here so that the straight path reaches them without a lookup by tag (cleared in
# place, never replaced).
_SPAN_TEXTS: Final[dict[str, dict[str, bytes]]] = {}
_SPAN_INTS: Final[dict[str, dict[int, bytes]]] = {}
_caches[_SPAN_ATTRIBUTES] = (_SPAN_TEXTS, _SPAN_INTS)


def attribute_field(key: str, v: Any) -> bytes:
    """The span-attribute KeyValue field of `key` = `v`, as a span's attributes are written."""
    return _attribute(_SPAN_ATTRIBUTES, _SPAN_TEXTS, _SPAN_INTS, key, v)
