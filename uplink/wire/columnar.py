"""Span batch format versions 3 and 4, columnar: spans -> columns referring to a learned table set -> zstd.

Each batch names the table set it was encoded with (uplink/wire/tables.py) by its 8-byte id and decodes with that
set alone: what the set does not hold, the batch carries. Attributes are stored a column per key and value type,
each text column referring to its key's own value table; ids, times and durations sit in their own planes. The
layout is specified in docs/uplink-format-v3.md; version 4 differs only in how a text column carries its new texts
(hexadecimal, UUID, decimal and IPv4 texts in binary form).

Sans-I/O. Decoding treats its input as hostile: the span count and decompressed size are bounded before anything
is built, and every problem is a DecodeError naming it.
"""
from __future__ import annotations

import dataclasses
import math
import re
import struct
import time
from collections.abc import Sequence
from typing import Any, Final, cast

import cbor2

from edge.errors import DecodeError
from edge.model import Event, Link, Resource, Scope, Span, SpanKind, StatusCode

from . import cbor_writer
from .frame import NO_TABLES, SPANS_MAGIC, TABLES_HEADER, Batch, BatchHeader, decompress_with
from .tables import (
    EMPTY,
    T_ANY,
    T_BOOL,
    T_BYTES,
    T_FLOAT,
    T_INT,
    T_STR,
    TYPE_CODES,
    TableSet,
    TrainingLimits,
    freeze_value,
    thaw_value,
    train,
)
from .values import MAX_DEPTH, SOURCES, array, check_native, expanded_size, expect, native, planes, source_code, \
    time_parents, unplane, unplanes, zigzag

__all__ = [
    "VERSION",
    "VERSIONS",
    "BODY_FIELDS",
    "MAX_SPANS",
    "UnknownTableSet",
    "encode",
    "body",
    "body_fields",
    "decode",
    "learn",
]

VERSION = 4  # what encode writes unless told otherwise
VERSIONS = (3, 4)  # every columnar version ever shipped; decode reads them all
MAX_SPANS = 1 << 16  # per batch; nodes send at most a few thousand
MAX_EVENTS_PER_SPAN = 1024  # on average over a batch, bounds what a hostile count column can ask for
_MAX_UNIT = 1 << 64

# Keys of the sparse per-span extras map.
_X_STATUS_MESSAGE, _X_LINKS, _X_TRACE_STATE, _X_FLAGS = 1, 2, 3, 4

# Body fields, in order (docs/uplink-format.md, version 3, "Body").
BODY_FIELDS = ("node_id", "seq", "created_ns", "n", "span_ids", "trace_ids", "trace_column", "parent_column", "packed",
               "time_units", "base", "starts", "ends", "names", "new_resources", "resource_column", "new_scopes",
               "scope_column", "new_keys", "new_shapes", "shape_column", "attribute_columns", "events", "extras")
_N_FIELDS = len(BODY_FIELDS)


class UnknownTableSet(DecodeError):
    """The batch names a table set the caller did not supply; `table_id` says which one to fetch."""

    def __init__(self, table_id: bytes) -> None:
        self.table_id = table_id
        super().__init__(f"uplink batch needs table set {table_id.hex()}, which this gateway does not hold")


# ---------------------------------------------------------------------------------------------------- encoding

class _Domain:
    """References into one table: the table set's entries first, then the batch's new ones in order of first use."""

    __slots__ = ("learned", "base", "new", "index")

    def __init__(self, learned: dict[Any, int]) -> None:
        self.learned = learned
        self.base = len(learned)
        self.new: list[Any] = []
        self.index: dict[Any, int] = {}

    def ref(self, x: Any) -> int:
        r = self.learned.get(x)
        if r is None:
            r = self.index.get(x)
            if r is None:
                r = self.index[x] = self.base + len(self.new)
                self.new.append(x)
        return r


# Texts that version 4 carries in binary form (lowercase only: the binary form turns back into lowercase), told
# apart by one regular expression: a decimal (group 1), a UUID (group 2), lowercase hex of 4 bytes or more (group 3),
# an IPv4 address in dotted-decimal form without leading zeros (group 4).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_FORMS = re.compile(r"(-?[1-9][0-9]{3,19})\Z|([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\Z"
                    rf"|((?:[0-9a-f]{{2}}){{4,}})\Z|((?:{_OCTET}\.){{3}}{_OCTET})\Z")
_FORM_FIRST = frozenset("-0123456789abcdef")  # most texts are told apart by their first character alone
_UUID_TAG = 37  # CBOR's tag for a 16-byte UUID
_IPV4_TAG = 52  # CBOR's tag for an IPv4 address (RFC 9164), here always 4 bytes
_MIN_INT = -(1 << 64)  # CBOR's integer range: what a decoder accepts for a decimal text
_MAX_INT = 1 << 64


def _compact(t: str) -> Any:
    """A new text in version 4's binary form when it has one: a decimal as an integer, a UUID as a tagged 16-byte
    string (CBOR tag 37), other lowercase hex of 4 bytes or more as its bytes, an IPv4 address as a tagged 4-byte
    string (CBOR tag 52); any other text as itself."""
    if t[:1] not in _FORM_FIRST:
        return t
    m = _FORMS.match(t)
    if m is None:
        return t
    form = m.lastindex
    if form == 1:
        v = int(t)
        return v if _MIN_INT <= v < _MAX_INT else t
    if form == 2:
        return cbor2.CBORTag(_UUID_TAG, bytes.fromhex(t.replace("-", "")))
    if form == 3:
        return bytes.fromhex(t)
    return cbor2.CBORTag(_IPV4_TAG, bytes([int(octet) for octet in t.split(".")]))  # checked by _FORMS


class _Formed:
    """A UUID (tag 37) or an IPv4 address (tag 52) as read from a body: its text, which only a version 4 text
    column's new texts may hold (everywhere else it is a value of no type the span model has, and refused)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _read_uuid(v: Any, immutable: bool) -> _Formed:
    # The CBOR library reads the tag into a uuid.UUID, whose text is then built in Python code: both cost more.
    if type(v) is not bytes or len(v) != 16:
        raise ValueError("a UUID (tag 37) must be 16 bytes")
    h = v.hex()
    return _Formed(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")


def _read_ipv4(v: Any, immutable: bool) -> _Formed:
    # Networks and interfaces (tag 52 around [prefix, bytes]) are no text form: refused here as anywhere else.
    if type(v) is not bytes or len(v) != 4:
        raise ValueError("an IPv4 address (tag 52) must be 4 bytes")
    return _Formed(f"{v[0]}.{v[1]}.{v[2]}.{v[3]}")


_SEMANTIC = {_UUID_TAG: _read_uuid, _IPV4_TAG: _read_ipv4}


def _expand(x: Any, what: str) -> str:
    """A new text of a version 4 text column from its binary form (see _compact)."""
    if type(x) is str:
        return x
    if type(x) is bytes:
        return x.hex()
    if type(x) is int:
        expect(_MIN_INT <= x < _MAX_INT, f"{what} holds a decimal text out of range")
        return str(x)
    expect(type(x) is _Formed, f"{what} holds a new text that is not text, bytes, an integer, a UUID or an IPv4 "
                               "address")
    f: _Formed = x
    return f.text


def _text_refs(values: Sequence[str], learned: dict[str, int], compact: bool = True) -> list[Any]:
    """A text column as [new texts, references]: 0 takes the next new text, k > 0 is entry k - 1 of the table (the
    learned entries, then the new ones). `learned` maps a text to its reference (index + 1). `compact`: new texts
    in version 4's binary forms."""
    refs = [learned.get(v) for v in values]
    if None not in refs:
        return [[], refs]
    new: list[str] = []
    seen: dict[str, int] = {}
    base = len(learned) + 1
    for i, r in enumerate(refs):
        if r is None:
            v = values[i]
            r = seen.get(v)
            if r is None:
                seen[v] = base + len(new)
                new.append(v)
                r = 0
            refs[i] = r
    return [[_compact(t) for t in new] if compact else new, refs]


class _Attributes:
    """Attribute lists of one batch as shapes and columns (shared by spans, events and new resources)."""

    __slots__ = ("keys", "shapes", "idx", "compact", "sig_ref", "shape_cids", "rows", "columns")

    def __init__(self, keys: _Domain, shapes: _Domain, idx: Any, compact: bool) -> None:
        self.compact = compact
        self.keys = keys
        self.shapes = shapes
        self.idx = idx
        self.sig_ref: dict[tuple[tuple[str, ...], tuple[type, ...]], int] = {}
        self.shape_cids: dict[int, tuple[tuple[str, int], ...]] = {}
        self.rows: dict[int, list[tuple[Any, ...]]] = {}  # shape -> value rows, in order of the shape's first use
        self.columns: dict[tuple[str, int], list[Any]] = {}

    def add(self, ks: tuple[str, ...], vals: tuple[Any, ...]) -> int:
        """Record one attribute list; return its shape reference."""
        sig = (ks, tuple([type(v) for v in vals]))
        ref = self.sig_ref.get(sig)
        if ref is None:
            ref = self._shape(sig)
        rows = self.rows.get(ref)
        if rows is None:
            rows = self.rows[ref] = []
        rows.append(vals)
        return ref

    def _shape(self, sig: tuple[tuple[str, ...], tuple[type, ...]]) -> int:
        # The table set remembers what it found for a signature, across batches: most are learned shapes.
        known = self.idx.signatures.get(sig)
        if known is None:
            ks, types = sig
            codes = tuple([TYPE_CODES.get(t, T_ANY) for t in types])
            known = (self.idx.shapes.get((ks, codes)), codes, tuple(zip(ks, codes)))
            if len(self.idx.signatures) < _MAX_SIGNATURES:
                self.idx.signatures[sig] = known
        ref, codes, cids = known
        if ref is None:
            for k in sig[0]:
                self.keys.ref(k)
            ref = self.shapes.ref((sig[0], codes))
        self.sig_ref[sig] = ref
        self.shape_cids[ref] = cids
        return ref

    def body(self) -> list[Any]:
        """The columns, in order of first use over shapes in order of first use; each holds, shape by shape, the
        values of the lists of that shape in order."""
        columns = self.columns
        for ref, rows in self.rows.items():
            cids = self.shape_cids[ref]
            if not cids:
                continue
            for cid, vals in zip(cids, zip(*rows)):
                col = columns.get(cid)
                if col is None:
                    columns[cid] = list(vals)
                else:
                    col.extend(vals)
        out: list[Any] = []
        values = self.idx.values
        for (key, ty), col_values in columns.items():
            if ty == T_STR:
                out.append(_text_refs(col_values, values.get(key, _NO_VALUES), self.compact))
            elif ty == T_FLOAT:
                out.append(_float_planes(col_values))
            elif ty == T_ANY:
                out.append([native(v) for v in col_values])
            else:
                out.append(col_values)
        return out


_NO_VALUES: dict[str, int] = {}
_MAX_SIGNATURES = 4096  # attribute signatures a table set remembers for the encoder


def _float_planes(vals: list[float]) -> bytes:
    raw = struct.pack(f">{len(vals)}d", *vals)
    return b"".join([raw[k::8] for k in range(8)])


def body(spans: Sequence[Span], node_id: str, seq: int, tables: TableSet = EMPTY,
         created_ns: int | None = None, version: int = VERSION) -> bytes:
    """The CBOR body of a batch before compression (what a table set's zstd dictionary is trained on)."""
    return _dumps(body_fields(spans, node_id, seq, tables, created_ns, version)[0])


# The same bytes either way; the typed writer is faster than cbor2 only compiled (docs/benchmarks.md), which the
# accelerator (edge/accel.py) loads in place of the source where it was built from exactly these sources.
_dumps = cbor2.dumps if (cbor_writer.__file__ or "").endswith(".py") else cbor_writer.dumps


def body_fields(spans: Sequence[Span], node_id: str, seq: int, tables: TableSet = EMPTY,
                created_ns: int | None = None,
                version: int = VERSION) -> tuple[list[Any], list[tuple[str, int]]]:
    """The body's fields before CBOR, and the (key, value type) of each attribute column in field 21's order."""
    if version not in VERSIONS:
        raise ValueError(f"columnar batch versions are {VERSIONS}, not {version}")
    compact = version >= 4
    n = len(spans)
    if n > MAX_SPANS:
        raise ValueError(f"a batch holds at most {MAX_SPANS} spans, got {n}")
    idx = tables.encoder_index()
    created = time.time_ns() if created_ns is None else created_ns

    keys = _Domain(idx.keys)
    shapes = _Domain(idx.shapes)
    scopes = _Domain(idx.scopes)
    resources = _Domain(idx.resources)
    attrs = _Attributes(keys, shapes, idx, compact)

    first_index: dict[bytes, int] = {}
    for i, s in enumerate(spans):
        first_index.setdefault(s.span_id, i)
    parents = [first_index.get(s.parent_span_id) if s.parent_span_id else None for s in spans]

    # Trace ids: a table of the distinct 16-byte ids, and per span the step from the previous span's entry.
    trace_index: dict[bytes, int] = {}
    for s in spans:
        if len(s.trace_id) == 16:
            trace_index.setdefault(s.trace_id, len(trace_index))
    trace_refs = [trace_index.get(s.trace_id, -1) for s in spans]
    trace_col: list[Any] = []
    prev_trace = 0
    for s, t in zip(spans, trace_refs):
        if t < 0:
            trace_col.append(bytes(s.trace_id))
        else:
            trace_col.append(t - prev_trace)  # neighbours usually share a trace: mostly 0
            prev_trace = t
    parent_col = [p - i if p is not None else (bytes(s.parent_span_id) if s.parent_span_id else None)
                  for i, (s, p) in enumerate(zip(spans, parents))]
    packed = bytes([s.kind | (s.status_code << 3) | (source_code(s.source) << 5) for s in spans])
    resource_col = _refs_by_identity([s.resource for s in spans], resources, Resource.exact_key)
    scope_col = _scope_refs([s.scope for s in spans], scopes)
    # attrs.add called as a method (not bound to a local): compiled, a bound method is a Python call per use.
    shape_col = [attrs.add(tuple(a), tuple(a.values())) for a in [s.attributes for s in spans]]
    any_events = any(s.events for s in spans)
    extras = {i: _extras(s, trace_index) for i, s in enumerate(spans)
              if s.status_message or s.links or s.trace_state or s.flags != 1}

    units = _units(spans, resource_col)
    span_units = [units[r] for r in resource_col]
    refs = time_parents(parents)
    starts, ends = _time_columns(spans, refs, span_units)
    base = next((s.start_ns for s, r in zip(spans, refs) if r is None), 0)
    events = _events(spans, span_units, idx, attrs) if any_events else None
    # New resources are attribute lists like any other: a shape, and values in the batch's columns.
    res_shapes = [attrs.add(tuple(k for k, _ in r.attributes), tuple(thaw_value(v) for _, v in r.attributes))
                  for r, _ in resources.new]
    columns = attrs.body()
    new_shapes: list[list[int]] = []
    if shapes.new:
        # Every key of a new shape was given its reference (keys.ref) when the shape was: learned or new.
        learned_keys, new_keys = keys.learned, keys.index
        new_shapes = [[(learned_keys[k] if k in learned_keys else new_keys[k]) * 8 + ty for k, ty in zip(ks, codes)]
                      for ks, codes in shapes.new]
    span_ids: Any = b"".join([s.span_id for s in spans])
    if len(span_ids) != 8 * n or not all(len(s.span_id) == 8 for s in spans):
        span_ids = [bytes(s.span_id) for s in spans]
    doc = [
        node_id, seq, created, n,
        span_ids, b"".join(trace_index), trace_col, parent_col, packed,
        {r: u for r, u in units.items() if u != 1}, base, planes(zigzag(starts)), planes(zigzag(ends)),
        _text_refs([s.name for s in spans], idx.names, compact),
        res_shapes, resource_col,
        [x for sc in scopes.new for x in sc], scope_col,
        keys.new, new_shapes, shape_col, columns,
        events, extras,
    ]
    return doc, list(attrs.columns)


def _refs_by_identity(objs: list[Any], domain: _Domain, key: Any) -> list[int]:
    """Domain references of objects that spans share (a node's resources are a few shared objects): hashed once
    per object, not once per span. `key` turns an object into the domain's key."""
    by_id: dict[int, int] = {}
    out = []
    for o in objs:
        r = by_id.get(id(o))
        if r is None:
            r = by_id[id(o)] = domain.ref(key(o) if key else o)
        out.append(r)
    return out


def _scope_refs(objs: list[Scope], domain: _Domain) -> list[int]:
    """Domain references of the spans' scopes, keyed by (name, version): a tuple hashes in C, a dataclass in Python.
    Spans of one export share a scope object, but sources may give each span its own."""
    by_id: dict[int, int] = {}
    learned = domain.learned
    out = []
    for sc in objs:
        r = by_id.get(id(sc))
        if r is None:
            key = (sc.name, sc.version)
            r = learned.get(key)
            if r is None:
                r = domain.ref(key)
            by_id[id(sc)] = r
        out.append(r)
    return out


def _extras(s: Span, trace_index: dict[bytes, int]) -> dict[int, Any]:
    x: dict[int, Any] = {}
    if s.status_message:
        x[_X_STATUS_MESSAGE] = s.status_message
    if s.links:
        x[_X_LINKS] = [[trace_index.get(lk.trace_id, bytes(lk.trace_id)), bytes(lk.span_id), lk.trace_state,
                        native(lk.attributes)] for lk in s.links]
    if s.trace_state:
        x[_X_TRACE_STATE] = s.trace_state
    if s.flags != 1:
        x[_X_FLAGS] = s.flags
    return x


def _units(spans: Sequence[Span], resource_col: list[int]) -> dict[int, int]:
    """Per resource of the batch, the largest unit dividing every time of its spans (1000 for microsecond clocks)."""
    gcd = math.gcd
    per_span = [gcd(s.start_ns, s.end_ns, *[e.time_ns for e in s.events]) if s.events else gcd(s.start_ns, s.end_ns)
                for s in spans]
    units: dict[int, int] = {}
    for r, g in zip(resource_col, per_span):
        units[r] = gcd(units.get(r, 0), g)
    return {r: u if 0 < u < _MAX_UNIT else 1 for r, u in units.items()}


def _time_columns(spans: Sequence[Span], refs: list[int | None], units: list[int]) -> tuple[list[int], list[int]]:
    """The start and end columns (before zigzag; docs: "Times")."""
    gcd = math.gcd
    starts: list[int] = []
    ends: list[int] = []
    prev = -1
    for i, s in enumerate(spans):
        u = units[i]
        dur = s.end_ns - s.start_ns
        r = refs[i]
        if r is None:
            starts.append((s.start_ns - spans[prev].start_ns) // gcd(u, units[prev]) if prev >= 0 else 0)
            ends.append(dur // u * 2)
            prev = i
        else:
            # Children start shortly after their parent and (client/server pairs) end shortly before it.
            p = spans[r]
            g = gcd(u, units[r])
            starts.append((s.start_ns - p.start_ns) // g)
            before = p.end_ns - s.end_ns
            ends.append(before // g * 2 + 1 if abs(before) < abs(dur) else dur // u * 2)
    return starts, ends


def _events(spans: Sequence[Span], units: list[int], idx: Any, attrs: _Attributes) -> list[Any]:
    events = [e for s in spans for e in s.events]
    times = [(e.time_ns - s.start_ns) // u for s, u in zip(spans, units) for e in s.events]
    shape_col = [attrs.add(tuple(a), tuple(a.values())) for a in [e.attributes for e in events]]
    return [[len(s.events) for s in spans], _text_refs([e.name for e in events], idx.event_names, attrs.compact),
            planes(zigzag(times)), shape_col]


def encode(spans: Sequence[Span], node_id: str, seq: int, tables: TableSet = EMPTY, level: int = 3,
           created_ns: int | None = None, version: int = VERSION) -> bytes:
    """Encode spans as one batch of `version` (3 or 4) referencing `tables` (header + zstd frame of the CBOR body)."""
    raw = body(spans, node_id, seq, tables, created_ns, version)
    return TABLES_HEADER.pack(SPANS_MAGIC, version, tables.id) + tables.compressor(level).compress(raw)


# Batch sizes of the bodies a table set's zstd dictionary is trained on: what quiet and busy nodes send.
_SAMPLE_SIZES = (16, 32, 64, 128)


def _sample_bodies(spans: Sequence[Span], tables: TableSet) -> list[bytes]:
    out = []
    i = k = 0
    while i < len(spans):
        size = _SAMPLE_SIZES[k % len(_SAMPLE_SIZES)]
        out.append(body(spans[i:i + size], tables.node_id, k, tables, created_ns=tables.created_ns))
        i += size
        k += 1
    return out


def learn(spans: Sequence[Span], limits: TrainingLimits = TrainingLimits(), node_id: str = "",
          created_ns: int | None = None) -> TableSet:
    """A table set learned from a node's recent spans (oldest first), its zstd dictionary trained on batches of
    them encoded with its tables."""
    return train(spans, limits, node_id, created_ns, _sample_bodies)


# ---------------------------------------------------------------------------------------------------- decoding

def decode(data: bytes, header: BatchHeader, tables: TableSet | None, max_bytes: int,
           max_spans: int = MAX_SPANS, max_expanded: int | None = None) -> Batch:
    """Decode one batch of version 3 or 4 whose header was read, with the table set it names; at most `max_bytes` are
    decompressed and at most `max_spans` spans built. UnknownTableSet if `tables` is not that set; ExpansionExceeded
    if its spans would take more than `max_expanded` bytes in their OTLP request (None: no bound); DecodeError for
    anything else wrong."""
    doc, found = load(data, header, tables, max_bytes)
    return decode_doc(doc, found, header, max_spans, max_expanded)


def load(data: bytes, header: BatchHeader, tables: TableSet | None, max_bytes: int) -> tuple[Any, TableSet]:
    """The body of a batch of version 3 or 4 as CBOR items, and the table set it is decoded with; UnknownTableSet if
    `tables` is not the set it names, DecodeError if it does not inflate or is not CBOR."""
    table_id = header.table_id
    if table_id == NO_TABLES:
        tables = EMPTY
    elif tables is None or tables.id != table_id:
        raise UnknownTableSet(table_id)
    raw = decompress_with(tables.decompressor(), bytes(data[header.size:]), max_bytes, "uplink batch")
    try:
        doc = cbor2.loads(raw, max_depth=MAX_DEPTH + 4, semantic_decoders=_SEMANTIC)
    except Exception as e:  # noqa: BLE001 - the CBOR library raises several types on hostile input
        raise DecodeError(f"uplink batch body is not valid CBOR: {e}") from None
    return doc, tables


def decode_doc(doc: Any, tables: TableSet, header: BatchHeader, max_spans: int = MAX_SPANS,
               max_expanded: int | None = None) -> Batch:
    """The spans of a body `load` returned (see decode)."""
    body = read_body(doc, tables, header, max_spans)
    try:
        return _decode_body(body, max_expanded)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - last line of defence: a shape not foreseen is still bad input
        raise DecodeError(f"uplink batch body has the wrong shape: {type(e).__name__}: {e}") from None


def read_body(doc: Any, tables: TableSet, header: BatchHeader, max_spans: int = MAX_SPANS) -> Body:
    """A body's columns, every one checked; DecodeError for anything wrong."""
    try:
        expect(header.version in VERSIONS, f"columnar batch version {header.version} is not one of {VERSIONS}")
        return _read_body(doc, tables, header.table_id, max_spans, header.version)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - last line of defence: a shape not foreseen is still bad input
        raise DecodeError(f"uplink batch body has the wrong shape: {type(e).__name__}: {e}") from None


# Loops rather than bulk builtins (a set of types, min and max): compiled, a loop allocates nothing and passes once.

def _all_of(xs: list[Any], t: type) -> bool:
    for x in xs:
        if type(x) is not t:
            return False
    return True


def _uints(x: Any, what: str, n: int | None, limit: int) -> list[int]:
    """An array of integers in [0, limit) (n of them, unless n is None)."""
    xs = array(x, what, n)
    for v in xs:
        if type(v) is not int or not 0 <= v < limit:
            raise DecodeError(f"uplink batch: {what} holds a non-integer or refers outside its table of {limit}")
    return xs


def _texts(x: Any, what: str) -> list[str]:
    xs = array(x, what)
    if not _all_of(xs, str):
        raise DecodeError(f"uplink batch: {what} holds a non-text")
    return xs


# Column readers run once per column, and a batch of wide spans has a hundred columns of a few values: they check
# in bulk, and name what is wrong (building the message) only when something is.

def _text_column(field_: Any, learned: list[str], what: str, n: int, compact: bool,
                 key: str | None = None) -> list[str]:
    """The n texts of a text column ([new texts, references]; see _text_refs); `compact`: version 4's binary forms
    of new texts are read. Messages name `what`, followed by `key` when given (an attribute column's)."""
    if type(field_) is not list or len(field_) != 2:
        array(field_, _name(what, key), 2)
    new, refs = field_
    if type(new) is not list:
        array(new, _name(what, key) + " new texts")
    if type(refs) is not list or len(refs) != n:
        array(refs, _name(what, key) + " references", n)
    if new and not _all_of(new, str):
        if not compact:
            raise DecodeError(f"uplink batch: {_name(what, key)} new texts holds a non-text")
        name = _name(what, key) + " new texts"
        new = [x if type(x) is str else _expand(x, name) for x in new]
    limit = len(learned) + len(new) + 1
    if not refs:
        return refs
    top = 0
    for r in refs:
        if type(r) is not int or not 0 <= r < limit:
            raise DecodeError(f"uplink batch: {_name(what, key)} references holds a non-integer or refers outside its "
                              f"table of {limit}")
        if r > top:
            top = r
    if len(new) >= n and top == 0:  # every value new (a cold batch, unique values): the new texts in order
        return new if len(new) == n else new[:n]
    if not new:
        table = [""] + learned
        return [table[r] for r in refs]
    table = [""] + learned + new
    take = iter(new).__next__
    try:
        return [table[r] if r else take() for r in refs]
    except StopIteration:
        raise DecodeError(f"uplink batch: {_name(what, key)} takes more new texts than it carries") from None


def _name(what: str, key: str | None) -> str:
    # Built on failure only: a batch of wide spans reads a hundred attribute columns.
    return what if key is None else f"{what} {key!r}"


def _floats(x: Any, what: str, n: int) -> list[float]:
    expect(type(x) is bytes and len(x) == 8 * n, f"{what} must be {8 * n} bytes of float planes")
    return list(struct.unpack(f">{n}d", unplane(x, n, 8)))


_VALUE_TYPE = {T_INT: int, T_BOOL: bool, T_BYTES: bytes}


def _column(col: Any, key: str, ty: int, count: int, values: dict[str, list[str]], checked: set[int],
            compact: bool) -> list[Any]:
    if ty == T_STR:
        return _text_column(col, values.get(key, _NO_TEXTS), "attribute column", count, compact, key)
    if ty == T_FLOAT:
        if type(col) is bytes and len(col) == 8 * count:
            return list(struct.unpack(f">{count}d", unplane(col, count, 8)))
        return _floats(col, f"attribute column {key!r}", count)
    if type(col) is not list or len(col) != count:
        array(col, f"attribute column {key!r}", count)
    want = _VALUE_TYPE.get(ty)
    if want is not None:
        if not _all_of(col, want):
            raise DecodeError(f"uplink batch: attribute column {key!r} holds a value that is not {want.__name__}")
    else:
        expect(ty == T_ANY, f"attribute column {key!r} has an unknown value type {ty}")
        for v in col:
            check_native(v, f"attribute column {key!r}", 0, checked)
    return col


_NO_TEXTS: list[str] = []


class Columns:
    """The attribute columns of a body, decoded, and where each shape's lists find their values: list k (in order of
    use: spans, then events, then new resources) of shape r takes row `firsts[r][e] + k` of column `of[r][e]` for
    its entry e."""

    def __init__(self, decoded: list[list[Any]], kinds: list[tuple[str, int]], of: dict[int, list[int]],
                 firsts: dict[int, list[int]], uses: dict[int, int]) -> None:
        self.decoded = decoded
        self.kinds = kinds  # each column's key and value type
        self.of = of
        self.firsts = firsts
        self.uses = uses

    def rows(self, skip: dict[int, int] | None = None, only: list[int] | None = None) -> dict[int, Any]:
        """Per shape (of `only`, if given), a function giving the value rows of its lists in order, the first
        `skip[r]` left out."""
        out: dict[int, Any] = {}
        decoded = self.decoded
        uses = self.uses
        for r in (uses if only is None else only):
            if r in out:
                continue
            c = uses[r]
            k = skip.get(r, 0) if skip is not None else 0
            parts = []
            for j, o in zip(self.of[r], self.firsts[r]):
                col = decoded[j]
                parts.append(col if k == 0 and c == len(col) else col[o + k:o + c])
            out[r] = iter(zip(*parts)).__next__ if parts else iter([()] * (c - k)).__next__
        return out


def _columns(refs: list[int], shapes: list[tuple[tuple[str, int], ...]], cols_field: Any,
             values: dict[str, list[str]], checked: set[int], compact: bool) -> Columns:
    """The attribute columns of the shapes used in `refs` (docs: "Attributes"), decoded and checked."""
    uses: dict[int, int] = {}  # shape -> lists using it, in order of first use
    for r in refs:
        uses[r] = uses.get(r, 0) + 1
    order: dict[tuple[str, int], int] = {}
    counts: list[int] = []
    of: dict[int, list[int]] = {}
    for r, c in uses.items():
        js: list[int] = []
        for cid in shapes[r]:  # each (key, type) looked up once: hashing a tuple is not cached
            j = order.get(cid)
            if j is None:
                j = order[cid] = len(counts)
                counts.append(0)
            counts[j] += c
            js.append(j)
        of[r] = js
    cols = array(cols_field, "attribute columns", len(counts))
    decoded = [_column(col, key, ty, count, values, checked, compact)
               for (key, ty), count, col in zip(order, counts, cols)]
    offsets = [0] * len(counts)
    firsts: dict[int, list[int]] = {}
    for r, c in uses.items():
        os_: list[int] = []
        for j in of[r]:
            os_.append(offsets[j])
            offsets[j] += c
        firsts[r] = os_
    return Columns(decoded, list(order), of, firsts, uses)


class Extra:
    """What the sparse extras map sets on one span (None: left as the span model's default)."""

    def __init__(self) -> None:
        self.status_message: str | None = None
        self.trace_state: str | None = None
        self.flags: int | None = None
        self.links: tuple[Link, ...] | None = None


class Body:
    """A body's columns, every one checked, per span where the request or the span needs them."""

    def __init__(self, node_id: str, seq: int, created: int, version: int, table_id: bytes, n: int,
                 trace_ids: list[bytes], span_ids: list[bytes], parent_ids: list[bytes], names: list[str],
                 starts: list[int], ends: list[int], packed: bytes, resources: list[Resource], resource_col: list[int],
                 scopes: list[Scope], scope_col: list[int], shapes: list[tuple[tuple[str, int], ...]],
                 shape_col: list[int], span_uses: dict[int, int], keys_of: dict[int, tuple[str, ...]],
                 columns: Columns, events: list[tuple[Event, ...]] | None, extras: dict[int, Extra]) -> None:
        self.node_id = node_id
        self.seq = seq
        self.created = created
        self.version = version
        self.table_id = table_id
        self.n = n
        self.trace_ids = trace_ids
        self.span_ids = span_ids
        self.parent_ids = parent_ids
        self.names = names
        self.starts = starts
        self.ends = ends
        self.packed = packed  # kind, status and source of each span, checked
        self.resources = resources
        self.resource_col = resource_col
        self.scopes = scopes
        self.scope_col = scope_col
        self.shapes = shapes
        self.shape_col = shape_col
        self.span_uses = span_uses  # lists of each shape the spans take (their rows come first in the shape's)
        self.keys_of = keys_of
        self.columns = columns
        self.events = events
        self.extras = extras


_CONTAINERS = (list, dict)


def _shape_entries(x: Any, keys: list[str]) -> tuple[tuple[str, int], ...]:
    sh = array(x, "new shape")
    n_keys = len(keys)
    out: list[tuple[str, int]] = []
    for e in sh:
        # One typed pass: compiled, the bulk builtins (min, max, a list of masks) were generic calls on each entry.
        if type(e) is not int:
            raise DecodeError(f"uplink batch: shape entry {e!r} is invalid")
        v: int = e
        if v < 0 or (v >> 3) >= n_keys or (v & 7) > _MAX_TYPE:
            raise DecodeError(f"uplink batch: shape entry {e!r} is invalid")
        out.append((keys[v >> 3], v & 7))
    return tuple(out)


_MAX_TYPE: Final = 5
assert _MAX_TYPE == T_ANY


def _read_body(doc: Any, tables: TableSet, table_id: bytes, max_spans: int, version: int) -> Body:
    expect(type(doc) is list and len(doc) == _N_FIELDS, f"body must be an array of {_N_FIELDS} fields")
    (node_id, seq, created, n, span_ids_f, traces, trace_col, parent_col, packed, unit_map, base, starts_f, ends_f,
     names_f, res_shapes_f, resource_col_f, new_scopes, scope_col_f, new_keys, new_shapes, shape_col_f, cols_f,
     events_f, extras) = doc
    expect(type(node_id) is str, "node id must be text")
    expect(type(seq) is int and seq >= 0, "sequence number must be a non-negative integer")
    expect(type(created) is int, "creation time must be an integer")
    expect(type(n) is int and 0 <= n <= max_spans, f"span count {n!r} is not in 0..{max_spans}")
    expect(type(base) is int, "base time must be an integer")
    dt = tables.decoder_tables()

    if type(span_ids_f) is bytes:
        expect(len(span_ids_f) == 8 * n, f"span-id column holds {len(span_ids_f)} bytes for {n} spans")
        span_ids = [span_ids_f[i:i + 8] for i in range(0, 8 * n, 8)]
    else:
        span_ids = array(span_ids_f, "span-id column", n)
        expect(_all_of(span_ids, bytes), "span-id column holds a non-bytes id")
    expect(type(traces) is bytes and len(traces) % 16 == 0, "trace-id table must be bytes, a multiple of 16 long")
    trace_table = [traces[i:i + 16] for i in range(0, len(traces), 16)]
    array(trace_col, "trace column", n)
    array(parent_col, "parent column", n)
    expect(type(packed) is bytes and len(packed) == n, "kind/status/source column must be n bytes")

    compact = version >= 4
    names = _text_column(names_f, dt.names, "name column", n, compact)
    keys = dt.keys + _texts(new_keys, "new keys") if new_keys else dt.keys
    shapes = dt.shapes
    if new_shapes:
        shapes = shapes + [_shape_entries(sh, keys) for sh in array(new_shapes, "new shapes")]
    res_shapes = _uints(res_shapes_f, "new resource shapes", None, len(shapes))
    resources: list[Any] = dt.resources + [None] * len(res_shapes) if res_shapes else dt.resources
    resource_col = _uints(resource_col_f, "resource column", n, len(resources))
    scopes = dt.scopes + _scopes(new_scopes) if new_scopes else dt.scopes
    scope_col = _uints(scope_col_f, "scope column", n, len(scopes))
    shape_col = _uints(shape_col_f, "shape column", n, len(shapes))

    events = None
    ev_shapes: list[int] = []
    counts: list[int] = []
    if events_f is not None:
        events = array(events_f, "events", 4)
        counts = array(events[0], "event counts", n)
        expect(_all_of(counts, int) and (not counts or min(counts) >= 0), "event counts must be non-negative")
        total = sum(counts)
        expect(total <= MAX_EVENTS_PER_SPAN * max(n, 1), "too many events for the batch")
        ev_shapes = _uints(events[3], "event shape column", total, len(shapes))

    # Columns hold the values of span, event and new-resource attribute lists, shape by shape; the spans' rows come
    # first in each shape, and are read by whoever makes the spans (or their request) of them.
    checked: set[int] = set()  # plain-CBOR values checked so far (CBOR may share one among many lists)
    columns = _columns(shape_col + ev_shapes + res_shapes, shapes, cols_f, dt.values, checked, compact)
    span_uses: dict[int, int] = {}
    for r in shape_col:
        span_uses[r] = span_uses.get(r, 0) + 1
    rows = columns.rows(span_uses, ev_shapes + res_shapes) if ev_shapes or res_shapes else {}
    keys_of = {r: tuple([k for k, _ in shapes[r]]) for r in columns.uses}
    ev_attrs = [dict(zip(keys_of[r], rows[r]())) for r in ev_shapes]
    if res_shapes:
        base_r = len(dt.resources)
        for j, r in enumerate(res_shapes):
            resources[base_r + j] = Resource(tuple([(k, freeze_value(v) if type(v) in _CONTAINERS else v)
                                                    for k, v in zip(keys_of[r], rows[r]())]))

    expect(type(unit_map) is dict, "time units must be a map")
    for r, u in unit_map.items():
        expect(type(r) is int and 0 <= r < len(resources) and type(u) is int and 1 <= u < _MAX_UNIT,
                f"time unit {u!r} of resource {r!r} is invalid")
    span_units = [unit_map.get(r, 1) for r in resource_col] if unit_map else [1] * n
    in_batch: list[int | None] = [None] * n
    for i, p in enumerate(parent_col):
        if type(p) is int:
            if not 0 <= i + p < n:
                raise DecodeError(f"uplink batch: span {i} parent offset {p} is outside the batch")
            in_batch[i] = i + p
        else:
            if p is not None and type(p) is not bytes:
                raise DecodeError(f"uplink batch: span {i} parent must be null, an offset or bytes")
    starts, ends = _times(unplanes(starts_f, n, "start column"), unplanes(ends_f, n, "end column"),
                          time_parents(in_batch), base, span_units)
    span_events = _decode_events(events, counts, starts, span_units, dt, ev_attrs, compact) \
        if events is not None else None

    trace_ids: list[bytes] = []
    parent_ids: list[bytes] = []
    prev_trace = 0
    n_traces = len(trace_table)
    # Typed views of the checked columns: compiled, indexing them then needs no generic calls.
    kinds_b: bytes = packed
    trace_refs: list[Any] = trace_col
    parent_refs: list[Any] = parent_col
    for i in range(n):
        tr = trace_refs[i]
        if type(tr) is int:
            prev_trace += tr
            if not 0 <= prev_trace < n_traces:
                raise DecodeError(f"uplink batch: span {i} refers to missing trace {prev_trace}")
            trace_ids.append(trace_table[prev_trace])
        else:
            if type(tr) is not bytes:
                raise DecodeError(f"uplink batch: span {i} trace must be a reference or bytes")
            trace_ids.append(tr)
        p = parent_refs[i]
        parent_ids.append(span_ids[i + p] if type(p) is int else (p if p is not None else b""))
        b = kinds_b[i]
        if (b & 7) > 5 or ((b >> 3) & 3) > 2 or (b >> 5) >= _N_SOURCES:
            raise DecodeError(f"uplink batch: span {i} has an invalid kind/status/source byte {b}")
    expect(type(extras) is dict, "extras must be a map")
    read: dict[int, Extra] = {}
    for i, x in extras.items():
        expect(type(i) is int and 0 <= i < n, f"extras refer to missing span {i!r}")
        read[i] = _read_extras(x, trace_table, f"span {i}", checked)
    return Body(node_id, seq, created, version, table_id, n, trace_ids, span_ids, parent_ids, names, starts, ends,
                packed, resources, resource_col, scopes, scope_col, shapes, shape_col, span_uses, keys_of, columns,
                span_events, read)


def _decode_body(body: Body, max_expanded: int | None) -> Batch:
    n = body.n
    rows = body.columns.rows()
    keys_of = body.keys_of
    attrs = [dict(zip(keys_of[r], rows[r]())) for r in body.shape_col]
    span_events = body.events
    resources, resource_col, scopes, scope_col = body.resources, body.resource_col, body.scopes, body.scope_col
    names, starts, ends, span_ids, parent_ids, trace_ids = (body.names, body.starts, body.ends, body.span_ids,
                                                            body.parent_ids, body.trace_ids)
    kinds_b: bytes = body.packed
    spans: list[Span] = []
    for i in range(n):
        b = kinds_b[i]
        # Positional, in the order of _SPAN_FIELDS: a keyword call costs a dataclass __init__ twice as much.
        spans.append(Span(
            trace_ids[i],
            span_ids[i],
            names[i],
            starts[i],
            ends[i],
            parent_ids[i],
            _KINDS[b & 7],
            _STATUSES[(b >> 3) & 3],
            "",
            attrs[i],
            span_events[i] if span_events is not None else (),
            (),
            resources[resource_col[i]],
            scopes[scope_col[i]],
            SOURCES[b >> 5],
        ))
    for i, x in body.extras.items():
        span = spans[i]
        if x.status_message is not None:
            span.status_message = x.status_message
        if x.trace_state is not None:
            span.trace_state = x.trace_state
        if x.flags is not None:
            span.flags = x.flags
        if x.links is not None:
            span.links = x.links
    expanded = expanded_size(spans, max_expanded, body.node_id, body.seq)
    return Batch(node_id=body.node_id, seq=body.seq, created_ns=body.created, spans=spans, version=body.version,
                 table_id=body.table_id, expanded=expanded)


_KINDS = tuple(SpanKind(k) for k in range(6))
_N_SOURCES = len(SOURCES)
_SPAN_FIELDS = ("trace_id", "span_id", "name", "start_ns", "end_ns", "parent_span_id", "kind", "status_code",
                "status_message", "attributes", "events", "links", "resource", "scope", "source")
assert tuple(f.name for f in dataclasses.fields(Span))[:len(_SPAN_FIELDS)] == _SPAN_FIELDS, \
    "the decoder builds spans positionally: update it with the span model"
_STATUSES = tuple(StatusCode(k) for k in range(3))


def _scopes(x: Any) -> list[Scope]:
    flat = _texts(x, "new scopes")
    expect(len(flat) % 2 == 0, "new scopes must be name/version pairs")
    return [Scope(flat[j], flat[j + 1]) for j in range(0, len(flat), 2)]


def _times(starts: list[int], ends: list[int], refs: list[int | None], base: int,
           units: list[int]) -> tuple[list[int], list[int]]:
    """Absolute start and end of every span: anchors first in order, then each span after its time parent."""
    n = len(refs)
    if n and units.count(units[0]) == n:
        return _times_one_unit(starts, ends, refs, base, units[0])
    gcd = math.gcd
    s_abs, e_abs = [0] * n, [0] * n
    done = bytearray(n)
    prev = -1
    for i in range(n):
        if refs[i] is None:
            u = units[i]
            s_abs[i] = base + starts[i] * u if prev < 0 else s_abs[prev] + starts[i] * gcd(u, units[prev])
            e = ends[i]
            if e & 1:
                raise DecodeError(f"uplink batch: span {i} end is marked parent-relative but the span has no usable "
                                  "parent")
            e_abs[i] = s_abs[i] + (e >> 1) * u
            done[i] = 1
            prev = i
    for i in range(n):
        if done[i]:
            continue
        stack = [i]
        while stack:
            j = stack[-1]
            r = refs[j]
            assert r is not None  # chains of time parents end at anchors, which are done
            if not done[r]:
                stack.append(r)
                continue
            g = gcd(units[j], units[r])
            s_abs[j] = s_abs[r] + starts[j] * g
            v = ends[j]
            e_abs[j] = e_abs[r] - (v >> 1) * g if v & 1 else s_abs[j] + (v >> 1) * units[j]
            done[j] = 1
            stack.pop()
    return s_abs, e_abs


def _times_one_unit(starts: list[int], ends: list[int], refs: list[int | None], base: int,
                    u: int) -> tuple[list[int], list[int]]:
    """_times where every span has the same unit `u` (the greatest common divisor of two equal units is the unit)."""
    n = len(refs)
    s_abs, e_abs = [0] * n, [0] * n
    done = bytearray(n)
    at = base
    first = True
    for i in range(n):
        if refs[i] is None:
            at = base + starts[i] * u if first else at + starts[i] * u
            first = False
            s_abs[i] = at
            e = ends[i]
            if e & 1:
                raise DecodeError(f"uplink batch: span {i} end is marked parent-relative but the span has no usable "
                                  "parent")
            e_abs[i] = at + (e >> 1) * u
            done[i] = 1
    up = cast("list[int]", refs)  # the spans not done yet are those with a time parent
    for i in range(n):
        if done[i]:
            continue
        path = [i]
        r = up[i]
        while not done[r]:  # chains of time parents end at anchors, which are done
            path.append(r)
            r = up[r]
        for j in reversed(path):
            r = up[j]
            s = s_abs[r] + starts[j] * u
            s_abs[j] = s
            v = ends[j]
            e_abs[j] = e_abs[r] - (v >> 1) * u if v & 1 else s + (v >> 1) * u
            done[j] = 1
    return s_abs, e_abs


def _decode_events(f: list[Any], counts: list[int], starts: list[int], units: list[int], dt: Any,
                   attrs: list[dict[str, Any]], compact: bool) -> list[tuple[Event, ...]]:
    total = len(attrs)
    names = _text_column(f[1], dt.event_names, "event names", total, compact)
    times = unplanes(f[2], total, "event times")
    out: list[tuple[Event, ...]] = []
    j = 0
    for i, c in enumerate(counts):
        if not c:
            out.append(())
            continue
        s, u = starts[i], units[i]
        out.append(tuple([Event(names[k], s + times[k] * u, attrs[k]) for k in range(j, j + c)]))
        j += c
    return out


def _read_extras(x: Any, trace_table: list[bytes], what: str, checked: set[int]) -> Extra:
    expect(type(x) is dict, f"{what} extras must be a map")
    out = Extra()
    for key, v in x.items():
        if key == _X_STATUS_MESSAGE:
            expect(type(v) is str, f"{what} status message must be text")
            out.status_message = v
        elif key == _X_TRACE_STATE:
            expect(type(v) is str, f"{what} trace state must be text")
            out.trace_state = v
        elif key == _X_FLAGS:
            expect(type(v) is int, f"{what} flags must be an integer")
            out.flags = v
        elif key == _X_LINKS:
            links = []
            for lk in array(v, what + " links"):
                tr, sid, state, attrs = array(lk, what + " link", 4)
                if type(tr) is int:
                    expect(0 <= tr < len(trace_table), f"{what} link refers to missing trace {tr}")
                    tr = trace_table[tr]
                expect(type(tr) is bytes and type(sid) is bytes and type(state) is str and type(attrs) is dict,
                        f"{what} link must be [trace, span id, trace state, attributes]")
                check_native(attrs, what + " link attributes", 0, checked)
                links.append(Link(tr, sid, state, attrs))
            out.links = tuple(links)
        else:
            raise DecodeError(f"uplink batch: {what} has an unknown extras key {key!r}")
    return out
