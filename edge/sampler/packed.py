"""Spans packed into compact bytes while they wait for a tail decision, and unpacked when a rule keeps them.

Most spans the head sampler rejects are dropped once the decision wait has passed, so the tail buffer holds them
in the form that costs least: one bytes object of CBOR per span, beside references to its (shared) resource and
scope. Attribute keys are not written: spans of one instrumentation repeat the same keys in the same order, so
the keys are kept once per distinct sequence (a shape) and the span refers to its shape by number. A span packs in
~2 µs and holds ~250 bytes instead of ~630 as objects (bench/span_memory.py has the figures).

The packed form lives only in this process's memory; it is not a wire format and is never stored or sent. It
gives back what was packed, except that an int subclass comes back as an int and a tuple inside a value as a list
(CBOR has one integer and one array type); the exporters write both the same way.
"""
from __future__ import annotations

from typing import Union

import cbor2

from ..model import Span, SpanKind, StatusCode

__all__ = ["Packed", "SpanPacker", "packed_size"]

# (resource, scope, source, shape table, CBOR bytes). A span that cannot be packed is held as it is.
Packed = Union[tuple, Span]

_TUPLE5 = 96  # a 5-tuple with its GC header
_BYTES = 33  # a bytes object's header
_SHAPE_BYTES = 200  # a shape: its keys tuple (the keys themselves are shared strings) and its table slots


def packed_size(p: Packed) -> int:
    """The bytes a packed span holds (a span kept unpacked: its usual estimate)."""
    if type(p) is tuple:
        return _TUPLE5 + _BYTES + len(p[4])
    return p.approx_size()  # type: ignore[union-attr]


class SpanPacker:
    """Packs spans, keeping each distinct sequence of attribute keys once, in a table the packed spans share.

    When the table is full a new one starts; spans packed earlier keep theirs (it goes when the last of them
    does), so the tables are bounded by what is waiting, like share()'s.
    """

    __slots__ = ("max_shapes", "_index", "_shapes")

    def __init__(self, max_shapes: int = 1024) -> None:
        self.max_shapes = max_shapes
        self._index: dict[tuple[str, ...], int] = {}
        self._shapes: list[tuple[str, ...]] = []

    def __len__(self) -> int:
        return len(self._shapes)

    @property
    def bytes(self) -> int:
        """Memory of the current shape table."""
        return len(self._shapes) * _SHAPE_BYTES

    def clear(self) -> None:
        """Start a new table (spans packed before keep the old one)."""
        self._index, self._shapes = {}, []

    def pack(self, s: Span) -> Packed:
        """The span in its compact form; a span with events or links, or values CBOR cannot write, stays as it is."""
        if s.events or s.links:
            return s  # rare; not worth a second layout
        attrs = s.attributes
        keys = tuple(attrs)
        shape = self._index.get(keys)
        if shape is None:
            if len(self._shapes) >= self.max_shapes:
                self.clear()
            shape = self._index[keys] = len(self._shapes)
            self._shapes.append(keys)
        try:
            data = cbor2.dumps((s.trace_id, s.span_id, s.name, s.start_ns, s.end_ns - s.start_ns, s.parent_span_id,
                                int(s.kind), int(s.status_code), s.status_message, shape, tuple(attrs.values()),
                                s.trace_state, s.flags))
        except (cbor2.CBOREncodeError, TypeError, ValueError):
            return s
        return (s.resource, s.scope, s.source, self._shapes, data)

    @staticmethod
    def unpack(p: Packed) -> Span:
        """The span as it was packed."""
        if type(p) is not tuple:
            return p  # type: ignore[return-value]
        resource, scope, source, shapes, data = p
        (trace_id, span_id, name, start, duration, parent, kind, status, message, shape, values, trace_state,
         flags) = cbor2.loads(data)
        return Span(trace_id=trace_id, span_id=span_id, name=name, start_ns=start, end_ns=start + duration,
                    parent_span_id=parent, kind=SpanKind(kind), status_code=StatusCode(status),
                    status_message=message, attributes=dict(zip(shapes[shape], values)), resource=resource,
                    scope=scope, source=source, trace_state=trace_state, flags=flags)
