"""Tail rules: keep traces the head sampler rejected when they matter (errors, slow, new routes).

Spans the head sampler rejected wait in a bounded buffer, grouped by trace. Every arriving span is checked
against the rules at once: the first match releases the whole trace (and later spans of it pass straight
through); a trace nothing matched is dropped `decision_wait` seconds after its last span arrived, or earlier
when the buffer needs its room. Every decision is counted by the rule that made it.

Waiting spans are held packed (packed.py): most of them are dropped unread, and packed they take about 40 % of
the memory, so the same buffer covers about 2.5 times the traffic before traces must leave early.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model import Span, SpanKind
from .packed import Packed, SpanPacker, packed_size
from .routes import is_error, route_of

if TYPE_CHECKING:
    from .config import SamplerConfig

__all__ = ["TailRules", "TailSampler", "TailStats", "RULES"]

log = logging.getLogger(__name__)

RULES = ("error", "latency", "new_route")
# Outcomes that drop a trace: nothing matched within the wait, or the buffer needed the room first.
DROP_OUTCOMES = ("no_rule", "evicted", "pressure")
_KEPT_IDS = 4096  # recently kept trace ids, so late spans of a kept trace follow it
_KEPT_ID_BYTES = 120  # dict slot + 16-byte bytes object
_ROUTE_BYTES = 200
_TRACE_BYTES = 200  # per buffered trace, besides its spans
PACK_FROM = 1024 * 1024  # buffer capacity from which waiting spans are packed


@dataclass(slots=True, frozen=True)
class TailRules:
    """The tail rules and the buffer they work on; replace them while running with `TailSampler.set_rules`."""

    enabled: bool = True
    decision_wait: float = 2.0
    buffer_bytes: int = 4 * 1024 * 1024
    keep_errors: bool = True
    latency_default: float = 0.0  # seconds, 0 = off
    latency: Mapping[str, float] = field(default_factory=dict)  # route (or span name) -> seconds
    new_route_traces: int = 5
    max_routes: int = 10_000

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> TailRules:
        """Rules from a SamplerConfig."""
        return cls(enabled=cfg.tail, decision_wait=cfg.decision_wait, buffer_bytes=cfg.buffer,
                   keep_errors=cfg.keep_errors, latency_default=cfg.latency_default, latency=dict(cfg.latency),
                   new_route_traces=cfg.new_route_traces, max_routes=cfg.max_routes)


@dataclass(slots=True)
class TailStats:
    """Trace decisions by rule or drop outcome, and the spans they covered."""

    decisions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES + DROP_OUTCOMES, 0))
    spans_kept: int = 0
    spans_dropped: int = 0
    late_spans_kept: int = 0  # arrived after their trace was kept, and followed it
    routes_untracked: int = 0  # routes not remembered because `max_routes` was reached


class _Trace:
    __slots__ = ("spans", "bytes", "last")

    def __init__(self) -> None:
        self.spans: list[Packed] = []
        self.bytes = _TRACE_BYTES
        self.last = 0.0


class TailSampler:
    """The bounded buffer of undecided traces and the rules that decide them."""

    def __init__(self, rules: TailRules | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules or TailRules()
        self.stats = TailStats()
        self._clock = clock
        self._buffer: OrderedDict[bytes, _Trace] = OrderedDict()  # oldest last arrival first
        self._bytes = 0
        self._kept: OrderedDict[bytes, None] = OrderedDict()
        self._routes: dict[tuple[str, str], list[Any]] = {}  # (service, route) -> [traces seen, last trace id]
        self._packer = SpanPacker()
        self.capacity = self.rules.buffer_bytes  # lowered by the memory governor under pressure

    # -------------------------------------------------------------------------------------------- settings

    def set_rules(self, rules: TailRules) -> int:
        """Apply new rules now; returns the number of spans dropped because a smaller buffer no longer holds them."""
        self.rules = rules
        if len(self._routes) > rules.max_routes:
            self._routes.clear()  # a smaller table: start over rather than keep an arbitrary part
        return self.set_capacity(rules.buffer_bytes)

    def set_capacity(self, max_bytes: int) -> int:
        """Bound the buffer at `max_bytes` (the governor shrinks it); returns the spans dropped to fit."""
        self.capacity = max(0, min(max_bytes, self.rules.buffer_bytes))
        return self._evict(self.capacity, "pressure")

    @property
    def bytes(self) -> int:
        """Bytes held: buffered spans, kept-trace ids, the route table and the packer's shape table."""
        return (self._bytes + len(self._kept) * _KEPT_ID_BYTES + len(self._routes) * _ROUTE_BYTES
                + self._packer.bytes)

    def __len__(self) -> int:
        return len(self._buffer)

    # -------------------------------------------------------------------------------------------- rules

    def _match(self, span: Span) -> str | None:
        r = self.rules
        if r.keep_errors and is_error(span):
            return "error"
        route = ""
        if r.latency_default > 0 or r.latency:
            if span.kind in (SpanKind.SERVER, SpanKind.CONSUMER) or span.is_root:
                route = route_of(span)
                limit = r.latency.get(route) or r.latency.get(span.name) or r.latency_default
                if limit > 0 and span.duration_ns > limit * 1e9:
                    return "latency"
        if r.new_route_traces > 0 and self._first_of_route(span, route):
            return "new_route"
        return None

    def _first_of_route(self, span: Span, route: str = "") -> bool:
        """Count the trace against its route; True while the route has seen fewer than N traces."""
        route = route or route_of(span)
        if not route:
            return False
        key = (span.resource.service_name, route)
        seen = self._routes.get(key)
        if seen is None:
            if len(self._routes) >= self.rules.max_routes:
                self.stats.routes_untracked += 1
                return False
            seen = self._routes[key] = [0, b""]
        if seen[1] == span.trace_id:
            return False  # this trace was counted already (a client and a server span of the same call)
        seen[1] = span.trace_id
        seen[0] += 1
        return seen[0] <= self.rules.new_route_traces

    def observe_kept(self, spans: list[Span]) -> None:
        """Let traces kept elsewhere (head sampling) count as seen for the new-route rule."""
        if self.rules.new_route_traces > 0:
            for s in spans:
                self._first_of_route(s)

    # -------------------------------------------------------------------------------------------- flow

    def offer(self, spans: list[Span], now: float | None = None) -> tuple[list[Span], int]:
        """Take head-rejected spans; returns (kept now, number dropped now). The rest wait for a decision."""
        now = self._clock() if now is None else now
        kept: list[Span] = []
        if not self.rules.enabled:
            self.stats.spans_dropped += len(spans)
            return kept, len(spans)
        # Packing saves bytes in proportion to the buffer: once the governor has shrunk it below PACK_FROM (a burst),
        # it would save kilobytes for CPU the burst needs, and the spans pass through in a moment anyway.
        pack = self._packer.pack if self.capacity >= PACK_FROM else None
        for s in spans:
            tid = s.trace_id
            if tid in self._kept:
                self._kept.move_to_end(tid)
                self.stats.late_spans_kept += 1
                kept.append(s)
                continue
            reason = self._match(s)
            entry = self._buffer.get(tid)
            if reason is not None:
                self.stats.decisions[reason] += 1
                if entry is not None:
                    del self._buffer[tid]
                    self._bytes -= entry.bytes
                    kept.extend(map(SpanPacker.unpack, entry.spans))
                kept.append(s)
                self._remember_kept(tid)
                continue
            if entry is None:
                entry = self._buffer[tid] = _Trace()
                self._bytes += entry.bytes
            else:
                self._buffer.move_to_end(tid)
            p = pack(s) if pack is not None else s
            size = packed_size(p)
            entry.spans.append(p)
            entry.bytes += size
            entry.last = now
            self._bytes += size
        dropped = self._evict(self.capacity, "evicted")
        self.stats.spans_kept += len(kept)
        return kept, dropped

    def expire(self, now: float | None = None, flush: bool = False) -> int:
        """Drop traces whose wait has passed (all of them with `flush`); returns how many spans that dropped."""
        now = self._clock() if now is None else now
        return self._drop_quiet(math.inf if flush else now - self.rules.decision_wait, "no_rule")

    def drop_idle(self, now: float | None = None) -> int:
        """Drop the undecided traces whose last span came more than half their decision wait ago (memory pressure):
        a trace's spans come close together, so these are the least likely to still meet a rule, and the next to be
        dropped anyway. Returns the spans dropped."""
        now = self._clock() if now is None else now
        return self._drop_quiet(now - self.rules.decision_wait / 2, "pressure")

    def _drop_quiet(self, cutoff: float, outcome: str) -> int:
        """Drop the traces whose last span came at or before `cutoff` (the buffer is in that order)."""
        out = 0
        while self._buffer:
            tid, entry = next(iter(self._buffer.items()))
            if entry.last > cutoff:
                break
            del self._buffer[tid]
            self._bytes -= entry.bytes
            self.stats.decisions[outcome] += 1
            out += len(entry.spans)
        self.stats.spans_dropped += out
        if not self._buffer:
            self._packer.clear()  # no waiting span refers to its shapes any more
        return out

    def drop_all(self) -> int:
        """Drop every undecided trace now (the lowest-value data under memory pressure); returns the spans dropped."""
        return self._evict(0, "pressure")

    def _evict(self, limit: int, outcome: str) -> int:
        out = 0
        while self._buffer and self._bytes > limit:
            _, entry = self._buffer.popitem(last=False)
            self._bytes -= entry.bytes
            self.stats.decisions[outcome] += 1
            out += len(entry.spans)
        self.stats.spans_dropped += out
        if not self._buffer:
            self._packer.clear()  # no waiting span refers to its shapes any more
        return out

    def _remember_kept(self, tid: bytes) -> None:
        self._kept[tid] = None
        if len(self._kept) > _KEPT_IDS:
            self._kept.popitem(last=False)
