"""Which trace a joined group of spans leaves in, and the traces moved under another.

A group is what parent links join: one top span and everything under it. Its trace:

- the top's own, when the top's trace is the application's: an SDK span, or a kernel span whose context came off
  the wire (the upstream application trace is never rewritten);
- else (the top is a kernel span with no context: an uninstrumented caller) the trace an SDK started below it, read
  off the wire in the request's calls (`born`, found when a kernel call carries context its request did not bring)
  or taken from the SDK span of the request; the one nearest the top, then the earliest. The kernel-only caller is
  joined into the SDK's trace: kernel trace ids are the agent's to choose;
- else the top's own kernel trace id.

Every other trace an SDK started inside the group (after an uninstrumented hop that dropped the context) is moved
under the group's: each of its spans, SDK or kernel, takes the group's trace id and keeps its own as
`helix.trace.original_id`, with a span link to its original parent (to itself for the trace's root), so that a
search by the id the application logged still finds it. A trace is never moved into a trace the agent minted.
"""
from __future__ import annotations

from collections import OrderedDict

from ..model import Link, Span
from .index import Entry, TraceCtx

__all__ = ["TraceMoves", "ORIGINAL_TRACE"]

ORIGINAL_TRACE = "helix.trace.original_id"
_CHAIN = 8  # a moved trace's target may itself have been moved


class TraceMoves:
    """Traces an SDK started for a request (by trace id: the request's kernel server span), and where moved ones
    went. Both bounded: a late SDK span needs them for as long as its SDK may be late, no longer."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.born: OrderedDict[bytes, Entry] = OrderedDict()  # SDK-started trace -> kernel server span of its request
        self.moved: OrderedDict[bytes, TraceCtx] = OrderedDict()  # moved trace -> the trace it went under

    def birth(self, twin: Entry, ctx: TraceCtx) -> None:
        """`twin`'s request started trace `ctx`."""
        if twin.born is None:
            twin.born = ctx
        self.born[ctx[0]] = twin
        self.born.move_to_end(ctx[0])
        if len(self.born) > self.max_entries:
            self.born.popitem(last=False)

    def move(self, trace: bytes, to: TraceCtx) -> None:
        """Every span of `trace` from now on leaves in `to`."""
        if trace == to[0] or self.resolve((to[0], to[1], to[2]))[0] == trace:
            return  # never into itself, nor in a circle
        self.moved[trace] = to
        self.moved.move_to_end(trace)
        if len(self.moved) > self.max_entries:
            self.moved.popitem(last=False)

    def resolve(self, ctx: TraceCtx) -> TraceCtx:
        """Where a trace went, following moves."""
        for _ in range(_CHAIN):
            to = self.moved.get(ctx[0])
            if to is None:
                return ctx
            ctx = to
        return ctx

    def twin_of(self, trace: bytes) -> Entry | None:
        """The kernel server span of the request whose SDK started `trace`."""
        return self.born.get(trace)

    @property
    def entries(self) -> int:
        """Traces remembered (for the memory estimate)."""
        return len(self.born) + len(self.moved)


def mark_moved(span: Span, original: bytes, original_parent: bytes) -> None:
    """A span moved out of its application trace keeps where it came from: the id as an attribute and a link."""
    span.attributes[ORIGINAL_TRACE] = original.hex()
    kind = "original_parent" if original_parent else "original_trace"
    span.links = (*span.links, Link(original, original_parent or span.span_id, span.trace_state,
                                    {"helix.link.type": kind}))
