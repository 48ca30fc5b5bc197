"""What the span batch formats share: the wire codes of sources, attribute values as CBOR carries them, zigzagged
byte planes, time parents, and the checks every decoder applies to hostile input.

Sans-I/O. Every decoding problem is a DecodeError whose message starts with "uplink batch: ".
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

from edge.codec.otlp_writer import value_key
from edge.errors import DecodeError
from edge.model import HISTOGRAM, Attributes, Event, Link, MetricBatch, Resource, Scope, Source, Span

__all__ = ["SOURCES", "MAX_DEPTH", "MAX_PLANE_WIDTH", "source_code", "expect", "array", "native", "check_native", "zigzag",
           "planes", "unplane", "unplanes", "time_parents", "ExpansionExceeded", "Expansion"]

# Fixed codes for Source in a batch's packed byte; appending keeps old batches decodable, codes are never reused.
SOURCES: tuple[Source, ...] = (Source.SDK_OTLP, Source.SDK_MQTT, Source.EBPF)
assert set(SOURCES) == set(Source), "every Source needs a wire code in uplink/wire/values.py"
MAX_DEPTH = 32  # nesting of plain-CBOR attribute values
MAX_PLANE_WIDTH = 16  # bytes per zigzagged value in a plane column; 9 covers every difference of two uint64 times


def source_code(src: Source) -> int:
    """The wire code of a span's source."""
    # Identity tests: hashing an Enum member runs Python code, and this runs for every span.
    return 0 if src is Source.SDK_OTLP else 1 if src is Source.SDK_MQTT else 2


def expect(cond: bool, what: str) -> None:
    """DecodeError("uplink batch: <what>") unless `cond`."""
    if not cond:
        raise DecodeError(f"uplink batch: {what}")


def array(x: Any, what: str, n: int | None = None) -> list[Any]:
    """`x` if it is an array (of `n` entries, unless n is None); DecodeError naming `what` otherwise."""
    # Messages are formatted on failure only: these checks run a few dozen times a batch.
    if type(x) is not list:
        raise DecodeError(f"uplink batch: {what} must be an array, got {type(x).__name__}")
    if n is not None and len(x) != n:
        raise DecodeError(f"uplink batch: {what} has {len(x)} entries, expected {n}")
    return x


def native(v: Any) -> Any:
    """An attribute value as plain CBOR: the model's tuples as arrays, maps as maps."""
    if isinstance(v, (list, tuple)):
        return [native(x) for x in v]
    if isinstance(v, dict):
        return {k: native(x) for k, x in v.items()}
    return v


def check_native(v: Any, what: str, depth: int = 0, checked: set[int] | None = None) -> Any:
    """`v` if it is a value the span model holds (str, bool, int, float, bytes, arrays and text-keyed maps, nested at
    most MAX_DEPTH deep); DecodeError naming `what` otherwise. Containers whose id is in `checked` were checked
    before (CBOR's shared values make one container appear many times); the ones checked here are added."""
    tv = type(v)
    if tv in (str, bool, int, float, bytes):
        return v
    if checked is not None:
        if id(v) in checked:
            return v
        checked.add(id(v))
    if depth >= MAX_DEPTH:  # messages are formatted on failure only: this runs for every nested value
        raise DecodeError(f"uplink batch: {what} nests deeper than {MAX_DEPTH}")
    if tv is list:
        for x in v:
            check_native(x, what, depth + 1, checked)
        return v
    if tv is dict:
        for k, x in v.items():
            if type(k) is not str:
                raise DecodeError(f"uplink batch: {what} has a map key that is not text: {k!r}")
            check_native(x, what, depth + 1, checked)
        return v
    raise DecodeError(f"uplink batch: {what} holds a value of unsupported type {tv.__name__}")


# Request bytes of resources of scalar values, by value_key (bounded by starting over).
_resource_sizes: dict[tuple[Any, int], int] = {}
_RESOURCE_SIZES_MAX = 1024


class ExpansionExceeded(DecodeError):
    """A batch's spans would expand, once exported, past the bytes its decoder was allowed (`expanded` counted when
    it stopped, `limit`); `node_id` and `seq` say which batch, so it can be refused for good."""

    def __init__(self, node_id: str, seq: int, expanded: int, limit: int) -> None:
        self.node_id = node_id
        self.seq = seq
        self.expanded = expanded
        self.limit = limit
        super().__init__(f"uplink batch seq {seq} of node {node_id[:64]!r} expands to more than {limit} bytes of "
                         f"spans when exported (counted {expanded} when decoding stopped): it repeats shared values "
                         "too often")


# Bytes the OTLP request spends on one item beyond its text: tags, lengths, the value wrapper; and on one span, event
# or link beyond its texts, ids and attributes: times, kind, flags, status, framing.
_ITEM: Final = 8
_SPAN: Final = 48
_EVENT = 16
_LINK = 16
_METRIC = 16  # a metric beyond its texts: kind, temporality, monotonic, framing
_POINT = 48  # a data point beyond its attributes and buckets: two times, the value (or count, sum, min, max), framing
_SOURCE_ATTRIBUTE: Final = len("helix.source") + len("sdk-mqtt") + _ITEM  # the exporter adds it to every span


def _text(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


class Expansion:
    """Counts the bytes decoded spans will take in their OTLP export request: a text or byte string shared by
    reference is one object here but a copy for every use there. Over `limit`, ExpansionExceeded."""

    __slots__ = ("limit", "total", "node_id", "seq", "_sizes", "_groups", "_resources")

    def __init__(self, limit: int, node_id: str = "", seq: int = 0) -> None:
        self.limit = limit
        self.total = 0
        self.node_id = node_id
        self.seq = seq
        self._sizes: dict[int, int] = {}  # id -> size of containers already measured (shared ones are common)
        self._groups: set[tuple[int, int]] = set()  # (resource, scope) pairs counted, by object
        self._resources: set[int] = set()

    def add(self, n: int) -> None:
        """Count `n` more bytes; ExpansionExceeded once the total is over the limit."""
        self.total += n
        if self.total > self.limit:
            raise ExpansionExceeded(self.node_id, self.seq, self.total, self.limit)

    def value(self, v: Any) -> int:
        """The bytes of one attribute value (checked by check_native, or frozen in a Resource) in the request."""
        tv = type(v)
        if tv is str:
            return _ITEM + _text(v)
        if tv is bytes:
            return _ITEM + len(v)
        if tv is bool or tv is int or tv is float:
            return _ITEM
        known = self._sizes.get(id(v))
        if known is not None:
            return known
        items = v.items() if tv is dict else v  # a frozen map is a tuple of (key, value) tuples
        size = _ITEM + sum([self.value(k) + self.value(x) for k, x in items] if tv is dict else map(self.value, items))
        self._sizes[id(v)] = size
        if size > self.limit:  # one value alone is too big: stop before measuring what holds it
            self.add(size)
        return size

    def attributes(self, attrs: dict[str, Any]) -> int:
        """The bytes of an attribute list in the request."""
        n = 2 * _ITEM * len(attrs)
        for k, v in attrs.items():
            n += (len(k) if k.isascii() else _text(k)) + self.attribute_value(v)
        return n

    def attribute_value(self, v: Any) -> int:
        """The bytes of one attribute value in the request beyond its key's and the item's."""
        # `value` inlined for the common scalars: this runs for every attribute of every span the gateway takes.
        tv = type(v)
        if tv is str:
            return len(v) if v.isascii() else _text(v)
        if tv is bytes:
            return len(v)
        if tv is int or tv is float or tv is bool:
            return 0
        return self.value(v) - _ITEM

    def spans(self, spans: list[Span]) -> None:
        """Count the request the export builds of `spans`: each distinct resource once, each (resource, scope) pair
        once, then every span with its texts, ids, attributes, events and links."""
        # Methods called on self, not bound to locals: compiled, a bound method is a Python call per use.
        last_r: object = None
        last_sc: object = None
        for s in spans:
            r, sc = s.resource, s.scope
            if r is not last_r or sc is not last_sc:  # neighbours usually share both
                last_r, last_sc = r, sc
                self.group(r, sc)
            name = s.name
            self.add(_SPAN + _SOURCE_ATTRIBUTE + len(s.trace_id) + len(s.span_id) + len(s.parent_span_id)
                     + (len(name) if name.isascii() else _text(name)) + _text(s.trace_state) + _text(s.status_message)
                     + self.attributes(s.attributes))
            if s.events or s.links:
                self.events_and_links(s.events, s.links)

    def group(self, r: Resource, sc: Scope) -> None:
        """Count the (resource, scope) pair of a span the first time it comes, and its resource the first time."""
        group = (id(r), id(sc))
        if group not in self._groups:
            self._groups.add(group)
            self.add(2 * _ITEM + _text(sc.name) + _text(sc.version))
            if id(r) not in self._resources:
                self._resources.add(id(r))
                # Typed as Any: compiled, the model's types would refuse the tuples values are frozen into.
                frozen: Any = r.attributes
                # By value too: each batch without a table set brings its own objects of the same few resources.
                key = value_key(frozen)
                size = _resource_sizes.get(key) if key is not None else None
                if size is None:
                    size = sum([_ITEM + _text(k) + self.value(v) for k, v in frozen])
                    if key is not None:
                        if len(_resource_sizes) >= _RESOURCE_SIZES_MAX:
                            _resource_sizes.clear()
                        _resource_sizes[key] = size
                self.add(size)

    def events_and_links(self, events: Sequence[Event], links: Sequence[Link]) -> None:
        """Count a span's events, then its links."""
        for e in events:
            self.add(_EVENT + _text(e.name) + self.attributes(e.attributes))
        for lk in links:
            self.add(_LINK + len(lk.trace_id) + len(lk.span_id) + _text(lk.trace_state) + self.attributes(lk.attributes))

    def metrics(self, batch: MetricBatch) -> None:
        """Count the OTLP metrics request the export builds of `batch`: every resource and scope, every metric with
        its texts, every point with its attributes (a map shared by many points is copied into each), times and
        buckets."""
        add, attributes, value = self.add, self.attributes, self.value
        for rm in batch.resources:
            frozen: Any = rm.resource.attributes  # as in spans(): frozen values are tuples
            add(4 * _ITEM + _text(rm.scope.name) + _text(rm.scope.version)
                + sum([_ITEM + _text(k) + value(v) for k, v in frozen]))
            for m in rm.metrics:
                add(_METRIC + _text(m.name) + _text(m.unit) + _text(m.description))
                for p in m.points:
                    buckets = len(p.bounds) + len(p.bucket_counts) if m.kind == HISTOGRAM else 0
                    add(_POINT + 8 * buckets + attributes(p.attributes))


def expanded_size(spans: list[Span], max_expanded: int | None, node_id: str, seq: int) -> int:
    """The bytes `spans` take in their OTLP export (0 when not counted); ExpansionExceeded past `max_expanded`."""
    if max_expanded is None:
        return 0
    counter = Expansion(max_expanded, node_id, seq)
    counter.spans(spans)
    return counter.total


def zigzag(values: list[int]) -> list[int]:
    """Signed integers as non-negative ones: 2v for v >= 0, -2v - 1 otherwise."""
    return [v << 1 if v >= 0 else ((-v) << 1) - 1 for v in values]


def planes(zs: list[int]) -> bytes:
    """Non-negative integers at one fixed width (the smallest that holds the largest, at least 1), most significant
    byte of every value first: the high planes are mostly zero and the low ones noise, which zstd handles far better
    than interleaved variable-length integers."""
    width = max(1, (max(zs, default=0).bit_length() + 7) // 8)
    if width == 1:
        return bytes(zs)
    if width <= 8:  # packed as 8-byte integers in C, then the planes cut from their low `width` bytes
        raw = struct.pack(f">{len(zs)}Q", *zs)
        return b"".join([raw[k::8] for k in range(8 - width, 8)])
    raw = b"".join([z.to_bytes(width, "big") for z in zs])
    return b"".join([raw[k::width] for k in range(width)])


def unplane(data: bytes, n: int, width: int) -> bytearray:
    """Byte planes of n values of `width` bytes back to the values' bytes one after another."""
    raw = bytearray(n * width)
    for k in range(width):
        raw[k::width] = data[k * n:(k + 1) * n]
    return raw


def unplanes(data: Any, n: int, what: str) -> list[int]:
    """n signed values from zigzagged byte planes; the width is the length / n, at most MAX_PLANE_WIDTH."""
    expect(type(data) is bytes, f"{what} must be bytes")
    if n == 0:
        expect(len(data) <= MAX_PLANE_WIDTH, f"{what} holds bytes for no values")
        return []
    width, rest = divmod(len(data), n)
    expect(rest == 0 and 1 <= width <= MAX_PLANE_WIDTH, f"{what} holds {len(data)} bytes for {n} values")
    if width == 1:
        zs: Any = data
    elif width <= 8:  # planes laid into 8-byte integers (high bytes zero), unpacked in C
        raw = bytearray(8 * n)
        for k in range(width):
            raw[8 - width + k::8] = data[k * n:(k + 1) * n]
        zs = struct.unpack(f">{n}Q", raw)
    else:
        raw = unplane(data, n, width)
        frm = int.from_bytes
        zs = [frm(raw[i:i + width], "big") for i in range(0, len(raw), width)]
    return [z >> 1 if not z & 1 else -((z + 1) >> 1) for z in zs]


def time_parents(parents: list[int | None]) -> list[int | None]:
    """Per span, the in-batch parent its times are relative to: its parent, when following parents from there ends
    at a span without one (ids can form a cycle in bad data); None makes the span an anchor. Encoder and decoder both
    derive this from the parent column, so it costs no bytes."""
    n = len(parents)
    state = bytearray(n)  # 0 unknown, 1 chain ends at a root, 2 chain loops, 3 on the path being walked
    for i in range(n):
        if state[i]:
            continue
        path = []
        j: int | None = i
        while j is not None and not state[j]:
            state[j] = 3
            path.append(j)
            j = parents[j]
        verdict = 1 if j is None or state[j] == 1 else 2
        for k in path:
            state[k] = verdict
    return [p if p is not None and state[p] == 1 else None for p in parents]
