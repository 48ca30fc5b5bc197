"""The data model inside Helix Edge: spans, and the metrics the agent derives from them (RED, its own health).

Wire formats are decoded into it at the edges and encoded from it.
"""
from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from sys import getsizeof as _getsizeof
from typing import Any, Union

__all__ = [
    "AttrValue",
    "Attributes",
    "SpanKind",
    "StatusCode",
    "Source",
    "Event",
    "Link",
    "Resource",
    "Scope",
    "Span",
    "new_trace_id",
    "new_span_id",
    "INVALID_TRACE_ID",
    "INVALID_SPAN_ID",
    "share",
    "frozen",
    "is_shared",
    "SUM",
    "GAUGE",
    "HISTOGRAM",
    "SumPoint",
    "HistogramPoint",
    "Metric",
    "ResourceMetrics",
    "MetricBatch",
]

# OpenTelemetry's AnyValue: scalars, homogeneous-or-not arrays and key/value lists.
AttrValue = Union[str, bool, int, float, bytes, list["AttrValue"], dict[str, "AttrValue"]]
Attributes = dict[str, AttrValue]

INVALID_TRACE_ID = bytes(16)
INVALID_SPAN_ID = bytes(8)

# Decoders hand every attribute key, span name and short text value through share(): spans of the same service
# repeat the same few hundred strings, and one copy each instead of one per span is most of a decoded span's size
# (docs/benchmarks.md, "What a decoded span costs"). The table is bounded: when it fills (ids, addresses and other
# one-off values do that), it starts over, and spans keep the copies they already hold.
_SHARED: dict[str, str] = {}
_SHARED_MAX = 4096
_SHARED_LEN = 64


def _one_copy(table: dict, x: Any, max_entries: int, key: Any = None) -> Any:
    # Bounded by starting over: holders keep the copies they have, later ones get a new first copy.
    k = x if key is None else key
    t = table.get(k)
    if t is not None:
        return t
    if len(table) >= max_entries:
        table.clear()
    table[k] = x
    return x


def share(s: str) -> str:
    """The agent's one copy of a short, repeated string (a key, a span name, an enum-like value)."""
    t = _SHARED.get(s)  # the hit, inline: this runs for every key and short value decoded
    if t is not None:
        return t
    return s if len(s) > _SHARED_LEN else _one_copy(_SHARED, s, _SHARED_MAX)


def is_shared(s: str) -> bool:
    """True if `s` is the copy share() hands out now (memory accounting counts it once, not per span).

    The table may start over at any time, so a decoder takes a span's size estimate right after building it.
    """
    return _SHARED.get(s) is s


class SpanKind(enum.IntEnum):
    """Span kind with OTLP's numbering, so conversion is the identity."""

    UNSPECIFIED = 0
    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class StatusCode(enum.IntEnum):
    """Span status with OTLP's numbering."""

    UNSET = 0
    OK = 1
    ERROR = 2


class Source(enum.Enum):
    """Where a span entered the agent; kept on the span as `helix.source`."""

    SDK_MQTT = "sdk-mqtt"
    SDK_OTLP = "sdk-otlp"
    EBPF = "ebpf"


@dataclass(slots=True)
class Event:
    """A timestamped annotation on a span (an exception, a log line, a TCP retransmit)."""

    name: str
    time_ns: int
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class Link:
    """A reference to a span in this or another trace."""

    trace_id: bytes
    span_id: bytes
    trace_state: str = ""
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Resource:
    """The entity that produced a span (`service.name`, `host.name`, ...). Immutable so spans can share it."""

    attributes: tuple[tuple[str, AttrValue], ...] = ()

    @classmethod
    def of(cls, attrs: Attributes) -> Resource:
        """Build a resource from a mapping, with a stable key order; equal resources are one shared object."""
        r = cls(tuple(sorted((k, _freeze(v)) for k, v in attrs.items())))
        return _one_copy(_RESOURCES, r, _RESOURCES_MAX, key=r.exact_key())

    def exact_key(self) -> tuple[Resource, object]:
        """A key for tables of resources that tells True, 1 and 1.0 apart, which == on resources does not."""
        return (self, tuple(_shape(v) for _, v in self.attributes))

    def as_dict(self) -> Attributes:
        """Return the attributes as a plain dict."""
        return {k: _thaw(v) for k, v in self.attributes}

    @property
    def service_name(self) -> str:
        """`service.name`, or OpenTelemetry's fallback for an unnamed service."""
        for k, v in self.attributes:
            if k == "service.name" and isinstance(v, str):
                return v
        return "unknown_service"


# Every export request and MQTT message brings its resource again; a device sending one span per message would
# otherwise pay a whole resource (~1.5 KiB) per span. Bounded like the string table.
_RESOURCES: dict[tuple[Resource, tuple[object, ...]], Resource] = {}
_RESOURCES_MAX = 256


@dataclass(slots=True, frozen=True)
class Scope:
    """The instrumentation scope (library) that created a span."""

    name: str = ""
    version: str = ""


@dataclass(slots=True)
class Span:
    """One operation. Ids are raw bytes (16 for traces, 8 for spans); times are Unix-epoch nanoseconds."""

    trace_id: bytes
    span_id: bytes
    name: str
    start_ns: int
    end_ns: int
    parent_span_id: bytes = b""
    kind: SpanKind = SpanKind.INTERNAL
    status_code: StatusCode = StatusCode.UNSET
    status_message: str = ""
    attributes: Attributes = field(default_factory=dict)
    # Held as tuples (lists passed in are converted): most spans have neither, and the shared empty tuple costs
    # nothing where an empty list costs 56 bytes (~8 % of a decoded span); one type also keeps spans comparable.
    events: Sequence[Event] = ()
    links: Sequence[Link] = ()
    resource: Resource = field(default_factory=Resource)
    scope: Scope = field(default_factory=Scope)
    source: Source = Source.SDK_OTLP
    trace_state: str = ""
    flags: int = 1  # W3C trace-flags; bit 0 is "sampled"
    # approx_size(), taken once: every buffer asks (inbox, assembler, tail, uplink) and it cost an eighth of the
    # agent's CPU in a burst. Later changes (stitching links, a parent) move the true size by a few bytes only.
    _size: int = field(default=0, repr=False, compare=False)
    # In durable mode, the number of the accepted-log record this span came in (edge/agent/accepted_log.py): the log
    # keeps a record until no span of it is held in the pipeline any more. 0: not logged.
    logged: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.events) is not tuple:
            self.events = tuple(self.events)
        if type(self.links) is not tuple:
            self.links = tuple(self.links)

    @property
    def duration_ns(self) -> int:
        """End minus start, never negative."""
        return max(0, self.end_ns - self.start_ns)

    @property
    def is_root(self) -> bool:
        """True when the span names no parent."""
        return not self.parent_span_id or self.parent_span_id == INVALID_SPAN_ID

    def approx_size(self) -> int:
        """The bytes this span holds as Python objects, estimated closely enough for memory accounting.

        A string the span owns counts its object header too (an estimate that left headers out held budgets at
        about half their true cost); a string it shares (see share()) counts once for the whole agent, not here.
        Kernel spans' keys are string constants of the span builder, so shared too.
        """
        if self._size:
            return self._size
        size = _SPAN_FIXED + len(self.trace_state) + _getsizeof(self.attributes)
        if not is_shared(self.name):
            size += _STR + len(self.name)
        size += _attrs_size(self.attributes, constant_keys=self.source is Source.EBPF)
        if self.events:
            size += _getsizeof(self.events)
            for ev in self.events:
                size += _EVENT_FIXED + len(ev.name) + _getsizeof(ev.attributes) + _attrs_size(ev.attributes)
        if self.links:
            size += _getsizeof(self.links) + _LINK_FIXED * len(self.links)
        self._size = size
        return size


# CPython 3.11 object sizes (64-bit): a str header is 49 bytes, bytes 33, int 28, float 24; a slotted Span 216.
_STR = 49
# The object, three id bytes objects, two start/end ints, trace state.
_SPAN_FIXED = 216 + 3 * 33 + 16 + 8 + 8 + 2 * 32 + _STR
_EVENT_FIXED = 72 + _STR + 28
_LINK_FIXED = 96 + 2 * 33 + 16 + 8 + _STR


def _attrs_size(attrs: Attributes, constant_keys: bool = False) -> int:
    # The common value types by exact type, inline: this runs for every attribute of every span entering the agent
    # (a call per value was most of the inbox's cost). Anything else, subclasses included, goes to _value_size, which
    # answers the same for these.
    size = 0
    shared = _SHARED.get
    for k, v in attrs.items():
        if not constant_keys and shared(k) is not k:
            size += _STR + len(k)
        t = type(v)
        if t is str:
            if shared(v) is not v:  # type: ignore[arg-type]
                size += _STR + len(v)  # type: ignore[arg-type]
        elif t is int or t is float:
            size += 28
        elif t is not bool:
            size += _value_size(v)
    return size


def _value_size(v: AttrValue) -> int:
    if isinstance(v, str):
        return 0 if is_shared(v) else _STR + len(v)
    if isinstance(v, bytes):
        return 33 + len(v)
    if isinstance(v, bool):
        return 0  # True and False are shared
    if isinstance(v, (int, float)):
        return 28
    if isinstance(v, list):
        return 56 + sum(8 + _value_size(x) for x in v)
    if isinstance(v, dict):
        return _getsizeof(v) + _attrs_size(v)
    return 16


class _FrozenMap(tuple):  # type: ignore[type-arg]
    """A key/value list frozen for hashing; a distinct type so it never reads back as an array."""

    __slots__ = ()


def frozen(v: AttrValue) -> AttrValue:
    """A value as a Resource holds it (arrays as tuples, maps as sorted key/value tuples), never an interned copy:
    True, 1 and 1.0 are equal, so an interned copy could come back with another type."""
    return _freeze(v)


def _freeze(v: AttrValue) -> AttrValue:
    # Resources are hashable and shared, so nested containers become tuples.
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)  # type: ignore[return-value]
    if isinstance(v, dict):
        return _FrozenMap(sorted((k, _freeze(x)) for k, x in v.items()))  # type: ignore[return-value]
    return v


def _shape(v: object) -> object:
    """A frozen value's types, nested: what equality of True, 1 and 1.0 does not tell apart."""
    if isinstance(v, tuple):
        return (type(v), tuple(_shape(x) for x in v))
    return type(v)


def _thaw(v: AttrValue) -> AttrValue:
    if isinstance(v, _FrozenMap):
        return {k: _thaw(x) for k, x in v}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def new_trace_id() -> bytes:
    """A random, valid W3C trace id."""
    while True:
        tid = os.urandom(16)
        if tid != INVALID_TRACE_ID:
            return tid


def new_span_id() -> bytes:
    """A random, valid W3C span id."""
    while True:
        sid = os.urandom(8)
        if sid != INVALID_SPAN_ID:
            return sid


# ---------------------------------------------------------------------------------------------------- metrics

SUM, GAUGE, HISTOGRAM = "sum", "gauge", "histogram"


@dataclass(slots=True)
class SumPoint:
    """One cumulative sum or gauge value for one attribute set."""

    attributes: dict[str, AttrValue]
    value: int | float


@dataclass(slots=True)
class HistogramPoint:
    """One cumulative explicit-bucket histogram: bucket i counts values in (bounds[i-1], bounds[i]]."""

    attributes: dict[str, AttrValue]
    count: int
    sum: float
    bounds: tuple[float, ...]
    bucket_counts: list[int]
    min: float | None = None
    max: float | None = None


@dataclass(slots=True)
class Metric:
    """A named metric and its points; `kind` is 'sum', 'gauge' or 'histogram'."""

    name: str
    kind: str
    unit: str = ""
    description: str = ""
    monotonic: bool = True  # sums only
    points: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class ResourceMetrics:
    """The metrics of one resource (a service, or the agent itself)."""

    resource: Resource
    scope: Scope
    metrics: list[Metric] = field(default_factory=list)


@dataclass(slots=True)
class MetricBatch:
    """A node's metrics at `time_ns`, cumulative since `start_ns`."""

    node_id: str
    seq: int
    start_ns: int
    time_ns: int
    resources: list[ResourceMetrics] = field(default_factory=list)

    def point_count(self) -> int:
        """Data points in the batch."""
        return sum(len(m.points) for r in self.resources for m in r.metrics)
