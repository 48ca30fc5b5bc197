"""Spans packed into compact bytes while they wait for a tail decision, and unpacked when a rule keeps them.

Most spans the head sampler rejects are dropped once the decision wait has passed, so the tail buffer holds them
in the form that costs least: one bytes object of CBOR per span, beside references to its (shared) resource and
scope. Attribute keys, the span name and repeated text values are written as numbers into a table of words,
so a typical span holds a few hundred bytes less than as objects (bench/span_memory.py has the figures).

The packed form lives only in this process's memory; it is not a wire format and is never stored or sent.
"""
from __future__ import annotations

from typing import Any, Union

import cbor2

from ..model import Span, SpanKind, StatusCode

__all__ = ["Packed", "SpanPacker", "packed_size"]

# (resource, scope, source, word table, CBOR bytes). A span that cannot be packed exactly is held as it is.
Packed = Union[tuple, Span]

_TUPLE5 = 96  # a 5-tuple with its GC header
_BYTES = 33  # a bytes object's header
_PLAIN = (str, int, float, bool, bytes, list, dict)
_WORD_BYTES = 110
_MAX_CANDIDATES = 1024


def packed_size(p: Packed) -> int:
    """The bytes a packed span holds (a span kept unpacked: its usual estimate)."""
    if type(p) is tuple:
        return _TUPLE5 + _BYTES + len(p[4])
    return p.approx_size()  # type: ignore[union-attr]


class SpanPacker:
    """Packs spans with a table of words (keys, names, values seen twice) shared by the spans it packs.

    When the table is full a new one starts; spans packed earlier keep theirs (it goes when the last of them
    does), so the tables are bounded by what is waiting, like share()'s.
    """

    __slots__ = ("max_words", "_index", "_words", "_candidates")

    def __init__(self, max_words: int = 4096) -> None:
        self.max_words = max_words
        self._index: dict[str, int] = {}
        self._words: list[str] = []
        self._candidates: dict[str, None] = {}  # text values seen once: a second sighting makes them words

    def __len__(self) -> int:
        return len(self._words)

    @property
    def bytes(self) -> int:
        """Memory of the tables: dict and list slots, and the strings only they may still hold."""
        return (len(self._words) + len(self._candidates)) * _WORD_BYTES

    def clear(self) -> None:
        """Start a new table (spans packed before keep the old one)."""
        self._index, self._words = {}, []
        self._candidates.clear()

    def _word(self, s: str) -> int:
        i = self._index.get(s)
        if i is not None:
            return i
        if len(self._words) >= self.max_words:
            self.clear()
        i = self._index[s] = len(self._words)
        self._words.append(s)
        return i

    def pack(self, s: Span) -> Packed:
        """The span in its compact form; a span with values CBOR would not give back exactly stays as it is."""
        if s.events or s.links or len(s.attributes) > 60:
            return s  # rare; not worth a second layout
        if len(self._words) + len(s.attributes) + 1 > self.max_words:
            self.clear()  # every word of this span goes into one table
        index, word = self._index, self._word
        keys: list[int] = []
        values: list[Any] = []
        words = 0  # bit i set: values[i] is a word number
        for i, (k, v) in enumerate(s.attributes.items()):
            t = type(v)
            if t not in _PLAIN:
                return s
            keys.append(word(k))
            if t is str:
                w = index.get(v)
                if w is None and len(v) <= 64:
                    if v in self._candidates:
                        w = word(v)
                    else:
                        if len(self._candidates) >= _MAX_CANDIDATES:
                            self._candidates.clear()
                        self._candidates[v] = None
                if w is not None:
                    words |= 1 << i
                    v = w
            values.append(v)
        try:
            data = cbor2.dumps((s.trace_id, s.span_id, word(s.name), s.start_ns, s.end_ns - s.start_ns,
                                s.parent_span_id, int(s.kind), int(s.status_code), s.status_message, keys, values,
                                words, s.trace_state, s.flags))
        except (cbor2.CBOREncodeError, TypeError, ValueError):
            return s
        return (s.resource, s.scope, s.source, self._words, data)

    @staticmethod
    def unpack(p: Packed) -> Span:
        """The span as it was packed."""
        if type(p) is not tuple:
            return p  # type: ignore[return-value]
        resource, scope, source, w, data = p
        (trace_id, span_id, name, start, duration, parent, kind, status, message, keys, values, words, trace_state,
         flags) = cbor2.loads(data)
        attrs = {}
        for i, k in enumerate(keys):
            v = values[i]
            attrs[w[k]] = w[v] if words >> i & 1 else v
        return Span(trace_id=trace_id, span_id=span_id, name=w[name], start_ns=start, end_ns=start + duration,
                    parent_span_id=parent, kind=SpanKind(kind), status_code=StatusCode(status),
                    status_message=message, attributes=attrs, resource=resource, scope=scope, source=source,
                    trace_state=trace_state, flags=flags)
