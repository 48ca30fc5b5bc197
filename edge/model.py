"""The one span model inside Helix Edge. Wire formats are decoded into it at the edges and encoded from it."""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from sys import getsizeof as _getsizeof
from typing import Union

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
]

# OpenTelemetry's AnyValue: scalars, homogeneous-or-not arrays and key/value lists.
AttrValue = Union[str, bool, int, float, bytes, list["AttrValue"], dict[str, "AttrValue"]]
Attributes = dict[str, AttrValue]

INVALID_TRACE_ID = bytes(16)
INVALID_SPAN_ID = bytes(8)


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
        """Build a resource from a mapping, with a stable key order."""
        return cls(tuple(sorted((k, _freeze(v)) for k, v in attrs.items())))

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
    events: list[Event] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    resource: Resource = field(default_factory=Resource)
    scope: Scope = field(default_factory=Scope)
    source: Source = Source.SDK_OTLP
    trace_state: str = ""
    flags: int = 1  # W3C trace-flags; bit 0 is "sampled"
    # approx_size(), taken once: every buffer asks (inbox, assembler, tail, uplink) and it cost an eighth of the
    # agent's CPU in a burst. Later changes (stitching links, a parent) move the true size by a few bytes only.
    _size: int = field(default=0, repr=False, compare=False)

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

        Decoded spans own every string (keys included: a decoder does not intern them), so each counts its object
        header; an estimate that left these out held budgets at about half their true cost.
        """
        if self._size:
            return self._size
        size = _SPAN_FIXED + len(self.name) + len(self.trace_state) + _getsizeof(self.attributes)
        for k, v in self.attributes.items():
            size += _STR + len(k) + _value_size(v)
        if self.events:
            size += _getsizeof(self.events)
            for ev in self.events:
                size += _EVENT_FIXED + len(ev.name) + _getsizeof(ev.attributes)
                for k, v in ev.attributes.items():
                    size += _STR + len(k) + _value_size(v)
        if self.links:
            size += _getsizeof(self.links) + _LINK_FIXED * len(self.links)
        self._size = size
        return size


# CPython 3.11 object sizes (64-bit): a str header is 49 bytes, bytes 33, int 28, float 24; a slotted Span 208.
_STR = 49
_SPAN_FIXED = 208 + 3 * 33 + 16 + 8 + 8 + 2 * _STR  # the object, three id bytes objects, name and trace state
_EVENT_FIXED = 72 + _STR + 28
_LINK_FIXED = 96 + 2 * 33 + 16 + 8 + _STR


def _value_size(v: AttrValue) -> int:
    if isinstance(v, str):
        return _STR + len(v)
    if isinstance(v, bytes):
        return 33 + len(v)
    if isinstance(v, bool):
        return 0  # True and False are shared
    if isinstance(v, (int, float)):
        return 28
    if isinstance(v, list):
        return 56 + sum(8 + _value_size(x) for x in v)
    if isinstance(v, dict):
        return _getsizeof(v) + sum(_STR + len(k) + _value_size(x) for k, x in v.items())
    return 16


class _FrozenMap(tuple):  # type: ignore[type-arg]
    """A key/value list frozen for hashing; a distinct type so it never reads back as an array."""

    __slots__ = ()


def _freeze(v: AttrValue) -> AttrValue:
    # Resources are hashable and shared, so nested containers become tuples.
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)  # type: ignore[return-value]
    if isinstance(v, dict):
        return _FrozenMap(sorted((k, _freeze(x)) for k, x in v.items()))  # type: ignore[return-value]
    return v


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
