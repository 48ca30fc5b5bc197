"""Batches of versions 3 and 4 decoded straight into their OTLP export request, as the gateway exports them.

The request's bytes are those `edge.codec.otlp_writer.request_bytes` writes of the decoded spans (same grouping, same
fields), but written from the body's checked columns: no span objects and no attribute dicts are built (events,
links and new resources, which few spans carry, still are), and the bytes the request takes are counted against the
gateway's bound as each span is written, in the order the span decoder counts them, so the same batches are refused.
A batch whose request cannot be written (a value OTLP cannot hold) is decoded into spans instead, so the export
fails on it exactly as it does for spans.

Sans-I/O; the same hostile-input rules as uplink/wire/columnar.py, whose checks it shares.
"""
from __future__ import annotations

from typing import Any, Final

from edge.codec.otlp_writer import (
    _KINDS,
    _PARENT_8,
    _SOURCE_FIELDS,
    _SPAN_END,
    _SPAN_ID_8,
    _SPAN_PARENT,
    _SPAN_SPAN_ID,
    _SPAN_START,
    _SPAN_STATUS,
    _SPAN_TRACE_ID,
    _SPAN_TRACE_STATE,
    _SS_SPANS,
    _STATUS_CODE,
    _STATUS_MESSAGE,
    _TRACE_ID_16,
    _U64,
    _SPAN_FLAGS,
    _SPAN_NAME,
    _event,
    _field,
    _fixed64,
    _id,
    _link,
    _ONE_BYTE,
    _pack_fixed32,
    _pack_times,
    _text,
    Grouping,
    attribute_field,
)
from edge.errors import DecodeError
from edge.model import Resource, Scope

from .columnar import MAX_SPANS, Body, Extra, decode_doc, load, read_body
from .frame import Batch, BatchHeader
from .tables import TableSet
from .values import _ITEM, _SOURCE_ATTRIBUTE, _SPAN, SOURCES, Expansion

__all__ = ["decode_request"]

_NO_LIMIT: Final = 1 << 62  # counting without a bound: never reached by a batch that inflates to at most a few MiB
_FLAGS_1: Final = _SPAN_FLAGS + _pack_fixed32(1)  # the span model's default flags (sampled): nearly every span's
_SOURCES: Final = tuple([_SOURCE_FIELDS[s] for s in SOURCES])  # by wire code


def decode_request(data: bytes, header: BatchHeader, tables: TableSet | None, max_bytes: int,
                   max_spans: int = MAX_SPANS, max_expanded: int | None = None) -> Batch:
    """Decode one batch of version 3 or 4 into its OTLP request (`Batch.request`, its `span_count` spans; no
    `spans`), with the errors of `columnar.decode` on the same arguments. A batch whose request cannot be written
    comes back as spans (`request` None), whose export then fails as it would."""
    doc, found = load(data, header, tables, max_bytes)
    body = read_body(doc, found, header, max_spans)
    try:
        request, expanded = _request(body, max_expanded)
    except DecodeError:  # over the bound
        raise
    except Exception:  # noqa: BLE001 - a value OTLP cannot hold: the spans decoder counts and the export reports it
        return decode_doc(doc, found, header, max_spans, max_expanded)
    return Batch(node_id=body.node_id, seq=body.seq, created_ns=body.created, version=body.version,
                 table_id=body.table_id, expanded=expanded if max_expanded is not None else 0, request=request,
                 request_spans=body.n)


def _text_size(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


class _Plan:
    """How the lists of one shape's keys write their attributes: the entries that stay once the keys are a dict (a
    key twice keeps its first place and its last value) and their keys, the keys' part of the expansion count, and
    whether `helix.source` is among them."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        place: dict[str, int] = {}
        take: list[int] = []
        fixed = 0
        for e, k in enumerate(keys):
            at = place.get(k)
            if at is None:
                place[k] = len(take)
                take.append(e)
                fixed += 2 * _ITEM + _text_size(k)
            else:
                take[at] = e
        self.take = take
        self.keys = [keys[e] for e in take]
        self.whole = len(take) == len(keys)
        self.fixed = fixed
        self.has_source = "helix.source" in place


# Plans by keys: a node's batches bring the same shapes again and again. Bounded by starting over.
_plans: dict[tuple[str, ...], _Plan] = {}
_PLANS_MAX = 4096


class _Shape:
    """Where the spans of one shape in a batch find their attribute values, and how many of them were written."""

    def __init__(self, plan: _Plan, of: list[int], firsts: list[int], decoded: list[list[Any]]) -> None:
        self.cols = [decoded[j] for j in of] if plan.whole else [decoded[of[e]] for e in plan.take]
        self.rows = firsts if plan.whole else [firsts[e] for e in plan.take]
        self.keys = plan.keys
        self.fixed = plan.fixed
        self.has_source = plan.has_source
        self.next = 0


def _shape(keys: tuple[str, ...], of: list[int], firsts: list[int], decoded: list[list[Any]]) -> _Shape:
    plan = _plans.get(keys)
    if plan is None:
        if len(_plans) >= _PLANS_MAX:
            _plans.clear()
        plan = _plans[keys] = _Plan(keys)
    return _Shape(plan, of, firsts, decoded)


def _request(body: Body, max_expanded: int | None) -> tuple[bytes, int]:
    """The request's bytes and the expansion count of a checked body; ExpansionExceeded past `max_expanded`."""
    counter = Expansion(max_expanded if max_expanded is not None else _NO_LIMIT, body.node_id, body.seq)
    columns = body.columns
    decoded = columns.decoded
    shapes: dict[int, _Shape] = {}
    for ref in body.span_uses:
        shapes[ref] = _shape(body.keys_of[ref], columns.of[ref], columns.firsts[ref], decoded)
    grouping = Grouping()
    last_r: object = None
    last_sc: object = None
    members: list[bytes] = []
    values: list[Any] = []
    trace_ids, span_ids, parent_ids, names = body.trace_ids, body.span_ids, body.parent_ids, body.names
    starts, ends, packed = body.starts, body.ends, body.packed
    res_of, res_col, scopes, scope_col = body.resources, body.resource_col, body.scopes, body.scope_col
    shape_col, events, extras = body.shape_col, body.events, body.extras
    for i in range(body.n):
        r: Resource = res_of[res_col[i]]
        sc: Scope = scopes[scope_col[i]]
        if r is not last_r or sc is not last_sc:  # neighbours usually share both
            last_r, last_sc = r, sc
            counter.group(r, sc)  # counted as the span decoder counts
            members = grouping.members(r, sc)

        x: Extra | None = extras.get(i) if extras else None
        parts: list[bytes] = []
        tid = trace_ids[i]
        if tid:
            parts.append(_TRACE_ID_16 + tid if len(tid) == 16 else _field(_SPAN_TRACE_ID, tid))
        sid = span_ids[i]
        if sid:
            parts.append(_SPAN_ID_8 + sid if len(sid) == 8 else _field(_SPAN_SPAN_ID, sid))
        state = ""
        if x is not None and x.trace_state is not None:
            state = x.trace_state
            if state:
                parts.append(_text(_SPAN_TRACE_STATE, state))
        pid = parent_ids[i]
        if pid:
            parts.append(_id(_SPAN_PARENT, _PARENT_8, 8, pid))
        name = names[i]
        if name:
            parts.append(_text(_SPAN_NAME, name))
        b = packed[i]
        if b & 7:
            parts.append(_KINDS[b & 7])
        start = starts[i]
        end = ends[i]
        if start and end and 0 < start < _U64 and 0 < end < _U64:
            parts.append(_pack_times(_SPAN_START, start, _SPAN_END, end))
        else:
            if start:
                parts.append(_fixed64(_SPAN_START, start))
            if end:
                parts.append(_fixed64(_SPAN_END, end))
        # The span's attribute values, sized as Expansion.attributes sizes them; the span is counted before any of them
        # is written, so a text shared by reference (one object here, a copy per use there) is refused before its
        # copies exist.
        shape = shapes[shape_col[i]]
        k = shape.next
        shape.next = k + 1
        size = shape.fixed
        values.clear()
        for col, o in zip(shape.cols, shape.rows):
            v = col[o + k]
            values.append(v)
            size += counter.attribute_value(v)
        message = ""
        if x is not None and x.status_message is not None:
            message = x.status_message
        counter.add(_SPAN + _SOURCE_ATTRIBUTE + len(tid) + len(sid) + len(pid)
                    + (len(name) if name.isascii() else _text_size(name)) + (_text_size(state) if state else 0)
                    + (_text_size(message) if message else 0) + size)
        for key, v in zip(shape.keys, values):
            parts.append(attribute_field(key, v))
        if not shape.has_source:
            parts.append(_SOURCES[b >> 5])
        span_events = events[i] if events is not None else ()
        links = x.links if x is not None and x.links is not None else ()
        if span_events or links:
            # Counted before they are written: what they copy is bounded as the attributes were.
            counter.events_and_links(span_events, links)
            for e in span_events:
                parts.append(_event(e))
            for lk in links:
                parts.append(_link(lk))
        code = (b >> 3) & 3
        if code or message:
            parts.append(_field(_SPAN_STATUS, (_text(_STATUS_MESSAGE, message) if message else b"")
                                + (_STATUS_CODE + _ONE_BYTE[code] if code else b"")))
        flags = x.flags if x is not None and x.flags is not None else 1
        if flags == 1:
            parts.append(_FLAGS_1)
        elif flags & 0xFF:
            parts.append(_SPAN_FLAGS + _pack_fixed32(flags & 0xFF))
        members.append(_field(_SS_SPANS, b"".join(parts)))
    return grouping.request(), counter.total
