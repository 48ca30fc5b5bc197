"""Span batch format versions 1 and 2: spans -> compact CBOR (a string table, deltas, columns) -> zstd with a shipped
dictionary, and back.

Sans-I/O. The layout is specified in docs/uplink-format.md. Version 2 differs from version 1 only in the two time
columns: a span's start is relative to its parent's start when the parent is in the batch, and its end is relative
either to its own start or to its parent's end, whichever is smaller. Decoding treats its input as hostile: any
problem, from a truncated frame to a zip bomb or a well-formed CBOR document of the wrong shape, is a DecodeError
naming it. uplink/wire/batch.py chooses between this and version 3 by the header's version.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import cbor2

from edge.errors import DecodeError
from edge.model import AttrValue, Attributes, Event, Link, Resource, Scope, Span, SpanKind, StatusCode

from . import dictionaries
from .frame import SPANS_HEADER, SPANS_MAGIC, Batch, BatchHeader, compress, decompress
from .values import MAX_DEPTH, SOURCES, array, check_native, expanded_size, expect, native, planes, source_code, \
    time_parents, unplanes, zigzag

__all__ = ["VERSIONS", "encode", "decode", "body"]

VERSIONS = (1, 2)

# Field positions in the top-level CBOR array of format version 1.
_F_NODE, _F_SEQ, _F_CREATED, _F_STRINGS, _F_TRACES, _F_RESOURCES, _F_SCOPES, _F_ORIGINS = range(8)
_F_BASE, _F_SPAN_IDS, _F_TRACE_COL, _F_PARENT_COL, _F_NAME_COL, _F_PACKED, _F_ORIGIN_COL = range(8, 15)
_F_START_COL, _F_DUR_COL, _F_ATTR_COL, _F_EXTRAS = range(15, 19)
_N_FIELDS = 19

# Keys of the sparse per-span extras map: fields that are usually at their default.
_X_STATUS_MESSAGE, _X_EVENTS, _X_LINKS, _X_TRACE_STATE, _X_FLAGS = 1, 2, 3, 4, 5


# ---------------------------------------------------------------------------------------------------- encoding

class _Tables:
    """Per-batch interning of strings and trace ids, in order of first use."""

    __slots__ = ("strings", "string_index", "traces", "trace_index")

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.string_index: dict[str, int] = {}
        self.traces: list[bytes] = []
        self.trace_index: dict[bytes, int] = {}

    def s(self, value: str) -> int:
        i = self.string_index.get(value)
        if i is None:
            i = self.string_index[value] = len(self.strings)
            self.strings.append(value)
        return i

    def trace(self, tid: bytes) -> int | bytes:
        # Only well-formed ids go to the table (it is a concatenation of 16-byte entries); others travel raw.
        if len(tid) != 16:
            return bytes(tid)
        i = self.trace_index.get(tid)
        if i is None:
            i = self.trace_index[tid] = len(self.traces)
            self.traces.append(tid)
        return i

    def attrs(self, attrs: Attributes) -> list[Any]:
        out: list[Any] = []
        for k, v in attrs.items():
            # Top-level string values go through the table; the low bit of the key reference says so.
            if type(v) is str:
                out.append(self.s(k) * 2 + 1)
                out.append(self.s(v))
            else:
                out.append(self.s(k) * 2)
                out.append(native(v))
        return out


def encode(spans: Sequence[Span], node_id: str, seq: int, level: int = 3, created_ns: int | None = None,
           dictionary: int | None = None, version: int = 2) -> bytes:
    """Encode spans as one batch of version 2 (or 1) (header + zstd frame of the CBOR body).

    `dictionary`: the id of a shipped zstd dictionary, 0 for none, None for the current one if it is installed.
    """
    raw = body(spans, node_id, seq, created_ns, version)
    if dictionary is None:
        dictionary = dictionaries.CURRENT if dictionaries.available(dictionaries.CURRENT) else 0
    return SPANS_HEADER.pack(SPANS_MAGIC, version, dictionary) + compress(raw, level, dictionary)


def body(spans: Sequence[Span], node_id: str, seq: int, created_ns: int | None = None, version: int = 2) -> bytes:
    """The CBOR body of a batch, before compression (what a dictionary is trained on)."""
    if version not in VERSIONS:
        raise ValueError(f"cannot write uplink format version {version}")
    t = _Tables()
    n = len(spans)
    created = time.time_ns() if created_ns is None else created_ns

    resources: list[list[Any]] = []
    resource_index: dict[tuple[Resource, object], int] = {}
    scopes: list[int] = []
    scope_index: dict[Scope, int] = {}
    origins: list[int] = []
    origin_index: dict[tuple[int, int], int] = {}

    first_index: dict[bytes, int] = {}
    for i, s in enumerate(spans):
        first_index.setdefault(s.span_id, i)
    parents: list[int | None] = [first_index.get(s.parent_span_id) if s.parent_span_id else None for s in spans]
    refs = time_parents(parents) if version >= 2 else [None] * n
    anchors = [s.start_ns for s, r in zip(spans, refs) if r is None]
    base = anchors[0] if anchors else 0

    span_ids_ok = all(len(s.span_id) == 8 for s in spans)
    span_id_col: bytes | list[bytes] = b"".join(s.span_id for s in spans) if span_ids_ok else [bytes(s.span_id) for s in spans]
    trace_col: list[Any] = []
    parent_col: list[Any] = []
    name_col: list[int] = []
    packed = bytearray(n)
    origin_col: list[int] = []
    start_col: list[int] = []
    dur_col: list[int] = []
    attr_col: list[list[Any]] = []
    extras: dict[int, dict[int, Any]] = {}

    prev_trace = 0
    prev_start = base
    for i, s in enumerate(spans):
        tr = t.trace(s.trace_id)
        if isinstance(tr, int):
            trace_col.append(tr - prev_trace)  # neighbours usually share a trace: deltas are mostly 0
            prev_trace = tr
        else:
            trace_col.append(tr)

        if not s.parent_span_id:
            parent_col.append(None)
        else:
            p = first_index.get(s.parent_span_id)
            parent_col.append(p - i if p is not None else bytes(s.parent_span_id))

        name_col.append(t.s(s.name))
        packed[i] = int(s.kind) | (int(s.status_code) << 3) | (source_code(s.source) << 5)

        rk = s.resource.exact_key()
        ri = resource_index.get(rk)
        if ri is None:
            ri = resource_index[rk] = len(resources)
            resources.append(_resource_attrs(t, s.resource))
        si = scope_index.get(s.scope)
        if si is None:
            si = scope_index[s.scope] = len(scopes) // 2
            scopes += (t.s(s.scope.name), t.s(s.scope.version))
        oi = origin_index.get((ri, si))
        if oi is None:
            oi = origin_index[(ri, si)] = len(origins) // 2
            origins += (ri, si)
        origin_col.append(oi)

        r = refs[i]
        dur = s.end_ns - s.start_ns
        if r is None:
            start_col.append(s.start_ns - prev_start)
            prev_start = s.start_ns
            dur_col.append(dur if version == 1 else dur * 2)
        else:
            # Children start shortly after their parent and (client/server pairs) end shortly before it.
            parent = spans[r]
            start_col.append(s.start_ns - parent.start_ns)
            before_parent_end = parent.end_ns - s.end_ns
            dur_col.append(before_parent_end * 2 + 1 if abs(before_parent_end) < abs(dur) else dur * 2)
        attr_col.append(t.attrs(s.attributes))

        x: dict[int, Any] = {}
        if s.status_message:
            x[_X_STATUS_MESSAGE] = t.s(s.status_message)
        if s.events:
            x[_X_EVENTS] = [[t.s(e.name), e.time_ns - s.start_ns, t.attrs(e.attributes)] for e in s.events]
        if s.links:
            x[_X_LINKS] = [[t.trace(lk.trace_id), bytes(lk.span_id), t.s(lk.trace_state), t.attrs(lk.attributes)]
                           for lk in s.links]
        if s.trace_state:
            x[_X_TRACE_STATE] = t.s(s.trace_state)
        if s.flags != 1:
            x[_X_FLAGS] = s.flags
        if x:
            extras[i] = x

    times: tuple[Any, Any] = (start_col, dur_col) if version == 1 else (planes(zigzag(start_col)), planes(zigzag(dur_col)))
    doc = [
        node_id, seq, created, t.strings, b"".join(t.traces), resources, scopes, origins,
        base, span_id_col, trace_col, parent_col, name_col, bytes(packed), origin_col,
        times[0], times[1], attr_col, extras,
    ]
    return cbor2.dumps(doc)


def _resource_attrs(t: _Tables, resource: Resource) -> list[Any]:
    # Keep the resource's own key order (and any repeated key) rather than going through a dict.
    out: list[Any] = []
    for k, frozen in resource.attributes:
        v = Resource(((k, frozen),)).as_dict()[k]
        out += t.attrs({k: v})
    return out


# ---------------------------------------------------------------------------------------------------- decoding

def decode(data: bytes, header: BatchHeader, max_bytes: int, max_spans: int, max_expanded: int | None = None) -> Batch:
    """Decode one batch of version 1 or 2 whose header was read; at most `max_bytes` are ever decompressed, a batch
    of more than `max_spans` spans is refused before any span is built, and one whose spans would take more than
    `max_expanded` bytes in their OTLP request (None: no bound) is refused with ExpansionExceeded."""
    raw = decompress(bytes(data[header.size:]), header.dict_id, max_bytes, "uplink batch")
    try:
        doc = cbor2.loads(raw, max_depth=MAX_DEPTH)
    except Exception as e:  # noqa: BLE001 - the CBOR library may raise several types on hostile input
        raise DecodeError(f"uplink batch body is not valid CBOR: {e}") from None
    try:
        return _decode_body(doc, header.version, header.dict_id, max_spans, max_expanded)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - last line of defence: a shape we did not foresee is still bad input
        raise DecodeError(f"uplink batch body has the wrong shape: {type(e).__name__}: {e}") from None


def _is_int(x: Any) -> bool:
    return type(x) is int


class _Reader:
    """Resolves table references with range checks."""

    __slots__ = ("strings", "traces", "checked")

    def __init__(self, strings: list[str], traces: bytes) -> None:
        self.strings = strings
        self.traces = traces
        self.checked: set[int] = set()  # plain-CBOR values checked so far (CBOR may share one among many spans)

    def s(self, ref: Any, what: str) -> str:
        expect(_is_int(ref) and 0 <= ref < len(self.strings), f"{what} is not a valid string reference: {ref!r}")
        return self.strings[ref]

    def trace(self, ref: Any, what: str) -> bytes:
        if type(ref) is bytes:
            return ref
        expect(_is_int(ref) and 0 <= ref < len(self.traces) // 16, f"{what} is not a valid trace reference: {ref!r}")
        return self.traces[ref * 16:ref * 16 + 16]

    def attrs(self, x: Any, what: str) -> Attributes:
        flat = array(x, what)
        expect(len(flat) % 2 == 0, f"{what} must hold key/value pairs")
        out: Attributes = {}
        for j in range(0, len(flat), 2):
            ref, v = flat[j], flat[j + 1]
            expect(_is_int(ref) and ref >= 0, f"{what} has an invalid key reference {ref!r}")
            key = self.s(ref >> 1, what + " key")
            out[key] = self.s(v, what + f" value of {key!r}") if ref & 1 else check_native(v, what, 0, self.checked)
        return out


def _decode_body(body: Any, version: int, dict_id: int, max_spans: int, max_expanded: int | None) -> Batch:
    expect(type(body) is list, f"body must be an array, got {type(body).__name__}")
    expect(len(body) == _N_FIELDS, f"body must have {_N_FIELDS} fields for format version {version}, got {len(body)}")
    node_id, seq, created = body[_F_NODE], body[_F_SEQ], body[_F_CREATED]
    expect(type(node_id) is str, "node id must be a string")
    expect(_is_int(seq) and seq >= 0, "sequence number must be a non-negative integer")
    expect(_is_int(created), "creation time must be an integer")

    strings = array(body[_F_STRINGS], "string table")
    expect(all(type(s) is str for s in strings), "string table holds a non-string")
    traces = body[_F_TRACES]
    expect(type(traces) is bytes and len(traces) % 16 == 0, "trace-id table must be bytes, a multiple of 16 long")
    r = _Reader(strings, traces)

    resources = [_resource(r.attrs(a, "resource")) for a in array(body[_F_RESOURCES], "resource table")]
    flat = array(body[_F_SCOPES], "scope table")
    expect(len(flat) % 2 == 0, "scope table must hold name/version pairs")
    scopes = [Scope(r.s(flat[j], "scope name"), r.s(flat[j + 1], "scope version")) for j in range(0, len(flat), 2)]
    flat = array(body[_F_ORIGINS], "origin table")
    expect(len(flat) % 2 == 0, "origin table must hold resource/scope pairs")
    origins: list[tuple[Resource, Scope]] = []
    for j in range(0, len(flat), 2):
        ri, si = flat[j], flat[j + 1]
        expect(_is_int(ri) and 0 <= ri < len(resources), f"origin refers to missing resource {ri!r}")
        expect(_is_int(si) and 0 <= si < len(scopes), f"origin refers to missing scope {si!r}")
        origins.append((resources[ri], scopes[si]))

    base = body[_F_BASE]
    expect(_is_int(base), "base time must be an integer")
    packed = body[_F_PACKED]
    expect(type(packed) is bytes, "kind/status/source column must be bytes")
    n = len(packed)
    expect(n <= max_spans, f"{n} spans, over the limit of {max_spans} per batch")
    raw_ids = body[_F_SPAN_IDS]
    if type(raw_ids) is bytes:
        expect(len(raw_ids) == 8 * n, f"span-id column holds {len(raw_ids)} bytes for {n} spans")
        span_ids = [raw_ids[i * 8:i * 8 + 8] for i in range(n)]
    else:
        span_ids = array(raw_ids, "span-id column", n)
        expect(all(type(x) is bytes for x in span_ids), "span-id column holds a non-bytes id")
    trace_col = array(body[_F_TRACE_COL], "trace column", n)
    parent_col = array(body[_F_PARENT_COL], "parent column", n)
    name_col = array(body[_F_NAME_COL], "name column", n)
    origin_col = array(body[_F_ORIGIN_COL], "origin column", n)
    if version == 1:
        start_col = array(body[_F_START_COL], "start column", n)
        dur_col = array(body[_F_DUR_COL], "duration column", n)
    else:
        start_col = unplanes(body[_F_START_COL], n, "start column")
        dur_col = unplanes(body[_F_DUR_COL], n, "end column")
    attr_col = array(body[_F_ATTR_COL], "attribute column", n)
    extras = body[_F_EXTRAS]
    expect(type(extras) is dict, "extras must be a map")
    for k in extras:
        expect(_is_int(k) and 0 <= k < n, f"extras refer to missing span {k!r}")

    in_batch: list[int | None] = []
    for i, p in enumerate(parent_col):
        if _is_int(p):
            expect(0 <= i + p < n, f"span {i} parent index {p!r} is outside the batch")
            in_batch.append(i + p)
        else:
            in_batch.append(None)
    starts, ends = _decode_times(start_col, dur_col, time_parents(in_batch) if version >= 2 else [None] * n, base, version)

    spans: list[Span] = []
    prev_trace = 0
    for i in range(n):
        what = f"span {i}"
        tr = trace_col[i]
        if _is_int(tr):
            prev_trace += tr
            trace_id = r.trace(prev_trace, what + " trace")
        else:
            expect(type(tr) is bytes, f"{what} trace must be a reference or bytes")
            trace_id = tr

        p = parent_col[i]
        if p is None:
            parent = b""
        elif type(p) is bytes:
            parent = p
        else:
            expect(_is_int(p) and 0 <= i + p < n, f"{what} parent index {p!r} is outside the batch")
            parent = span_ids[i + p]

        b = packed[i]
        kind, status, src = b & 7, (b >> 3) & 3, b >> 5
        expect(kind <= 5 and status <= 2 and src < len(SOURCES), f"{what} has an invalid kind/status/source byte {b}")
        oi = origin_col[i]
        expect(_is_int(oi) and 0 <= oi < len(origins), f"{what} refers to missing origin {oi!r}")
        resource, scope = origins[oi]


        span = Span(
            trace_id=trace_id,
            span_id=span_ids[i],
            name=r.s(name_col[i], what + " name"),
            start_ns=starts[i],
            end_ns=ends[i],
            parent_span_id=parent,
            kind=SpanKind(kind),
            status_code=StatusCode(status),
            attributes=r.attrs(attr_col[i], what + " attributes"),
            resource=resource,
            scope=scope,
            source=SOURCES[src],
        )
        x = extras.get(i)
        if x is not None:
            _apply_extras(span, x, r, what)
        spans.append(span)
    expanded = expanded_size(spans, max_expanded, node_id, seq)
    return Batch(node_id=node_id, seq=seq, created_ns=created, spans=spans, version=version, dict_id=dict_id,
                 expanded=expanded)


def _decode_times(start_col: list[Any], end_col: list[Any], refs: list[int | None], base: int,
                  version: int) -> tuple[list[int], list[int]]:
    """Start and end of every span from the two time columns (see `time_parents` and the encoder)."""
    n = len(refs)
    starts, ends = [0] * n, [0] * n
    for i in range(n):
        expect(_is_int(start_col[i]) and _is_int(end_col[i]), f"span {i} times must be integers")
    prev = base
    done = [r is None for r in refs]
    for i in range(n):
        if refs[i] is None:
            prev += start_col[i]
            starts[i] = prev
            e = end_col[i]
            if version >= 2:
                expect(e & 1 == 0, f"span {i} end is marked parent-relative but the span has no usable parent")
                e >>= 1
            ends[i] = prev + e
    for i in range(n):
        stack = [i]
        while stack and not done[i]:
            j = stack[-1]
            r = refs[j]
            assert r is not None  # anchors are done; chains of refs end at anchors
            if not done[r]:
                stack.append(r)
                continue
            starts[j] = starts[r] + start_col[j]
            v = end_col[j]
            ends[j] = ends[r] - (v >> 1) if v & 1 else starts[j] + (v >> 1)
            done[j] = True
            stack.pop()
    return starts, ends


def _apply_extras(span: Span, x: Any, r: _Reader, what: str) -> None:
    expect(type(x) is dict, f"{what} extras must be a map")
    for key, v in x.items():
        if key == _X_STATUS_MESSAGE:
            span.status_message = r.s(v, what + " status message")
        elif key == _X_TRACE_STATE:
            span.trace_state = r.s(v, what + " trace state")
        elif key == _X_FLAGS:
            expect(_is_int(v), f"{what} flags must be an integer")
            span.flags = v
        elif key == _X_EVENTS:
            events = []
            for ev in array(v, what + " events"):
                ev = array(ev, what + " event")
                expect(len(ev) == 3 and _is_int(ev[1]), f"{what} event must be [name, time, attributes]")
                events.append(Event(r.s(ev[0], what + " event name"), span.start_ns + ev[1],
                                    r.attrs(ev[2], what + " event attributes")))
            span.events = tuple(events)
        elif key == _X_LINKS:
            links = []
            for lk in array(v, what + " links"):
                lk = array(lk, what + " link")
                expect(len(lk) == 4 and type(lk[1]) is bytes, f"{what} link must be [trace, span id, state, attributes]")
                links.append(Link(r.trace(lk[0], what + " link trace"), lk[1], r.s(lk[2], what + " link state"),
                                  r.attrs(lk[3], what + " link attributes")))
            span.links = tuple(links)
        else:
            raise DecodeError(f"uplink batch: {what} has an unknown extras key {key!r}")


def _resource(attrs: Mapping[str, AttrValue]) -> Resource:
    # Rebuild in the order sent, freezing values the way Resource.of does.
    return Resource(tuple((k, Resource.of({k: v}).attributes[0][1]) for k, v in attrs.items()))
