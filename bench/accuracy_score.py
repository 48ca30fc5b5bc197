"""Scoring stitched traces against the testbed's oracle (pure functions; definitions in docs/accuracy.md).

A span speaks for oracle request R when it carries R's rid: SDK spans as the `oracle.rid` attribute, kernel
HTTP spans in `url.query` (rid=R), kernel MQTT spans in the topic (acc/msg/<R>; a delivery's handler is
R.recv). The span that *handles* R is, in order of preference: an SDK server/consumer/internal span with
R's rid, a kernel server span with it, a kernel consumer span for it.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from edge.model import Span, SpanKind

__all__ = ["OracleEntry", "Score", "rid_of", "score"]

_RID = re.compile(r"(?:^|&)rid=([A-Za-z0-9_.\-]+)")


@dataclass(slots=True, frozen=True)
class OracleEntry:
    """One request as the service that handled it recorded it."""

    rid: str
    parent_rid: str | None
    trace: str
    service: str


@dataclass(slots=True)
class Score:
    """The figures of one scenario (fractions 0..1)."""

    traceid_match: float
    parent_precision: float
    parent_recall: float
    coverage: float
    false_link_rate: float
    spans: int
    requests: int

    def as_dict(self) -> dict[str, float | int]:
        """For the JSON line."""
        return {"traceid_match": self.traceid_match, "parent_precision": self.parent_precision,
                "parent_recall": self.parent_recall, "coverage": self.coverage,
                "false_link_rate": self.false_link_rate, "spans": self.spans}


def rid_of(span: Span) -> str | None:
    """The oracle request a span speaks for, if any."""
    v = span.attributes.get("oracle.rid")
    if isinstance(v, str):
        return v
    q = span.attributes.get("url.query")
    if isinstance(q, str):
        m = _RID.search(q)
        if m:
            return m.group(1)
    topic = span.attributes.get("messaging.destination.name")
    if isinstance(topic, str) and topic.startswith("acc/msg/"):
        rid = topic.rsplit("/", 1)[-1]
        return rid + ".recv" if span.kind == SpanKind.CONSUMER else rid
    return None


def _handler_rank(span: Span) -> int:
    sdk = span.attributes.get("helix.source") != "ebpf"
    if sdk and span.kind in (SpanKind.SERVER, SpanKind.CONSUMER, SpanKind.INTERNAL, SpanKind.PRODUCER):
        return 0
    if span.kind == SpanKind.SERVER:
        return 1
    if span.kind == SpanKind.CONSUMER:
        return 2
    return 9


def score(spans: Iterable[Span], oracle: Iterable[OracleEntry], context_on_wire: set[str] | None = None) -> Score:
    """Score received spans against the oracle; `context_on_wire` lists rids whose hop carried trace context
    (TraceID match is judged on those; None: on every request with a parent)."""
    spans = list(spans)
    truth = {o.rid: o for o in oracle}
    by_id = {s.span_id: s for s in spans}
    rid = {s.span_id: rid_of(s) for s in spans}
    handler: dict[str, Span] = {}
    for s in spans:
        r = rid[s.span_id]
        if r in truth and _handler_rank(s) < 9:
            best = handler.get(r)
            if best is None or _handler_rank(s) < _handler_rank(best):
                handler[r] = s

    def inferred_parent(r: str) -> str | None:
        cur = handler[r]
        for _ in range(64):
            parent = by_id.get(cur.parent_span_id) if cur.parent_span_id else None
            if parent is None:
                return None
            pr = rid[parent.span_id]
            if pr is not None and pr != r and pr in truth:
                return pr
            cur = parent
        return None

    found = [r for r in truth if r in handler]
    with_parent = [r for r in truth if truth[r].parent_rid]
    inferred = {r: inferred_parent(r) for r in found}
    linked = [r for r in found if inferred[r] is not None]
    correct = [r for r in linked if inferred[r] == truth[r].parent_rid]
    recalled = [r for r in with_parent if r in handler and inferred.get(r) == truth[r].parent_rid]

    judged = [r for r in with_parent if r in handler and (context_on_wire is None or r in context_on_wire)]
    roots: dict[str, str] = {o.trace: o.rid for o in truth.values() if o.parent_rid is None}
    tid_ok = [r for r in judged if truth[r].trace in roots and roots[truth[r].trace] in handler
              and handler[r].trace_id == handler[roots[truth[r].trace]].trace_id]

    # False links: a parent link between two spans whose requests belong to different true traces.
    def true_trace(s: Span) -> str | None:
        cur: Span | None = s
        for _ in range(64):
            if cur is None:
                return None
            r = rid[cur.span_id]
            if r in truth:
                return truth[r].trace
            cur = by_id.get(cur.parent_span_id) if cur.parent_span_id else None
        return None

    links = bad = 0
    for s in spans:
        parent = by_id.get(s.parent_span_id) if s.parent_span_id else None
        if parent is None:
            continue
        a, b = true_trace(s), true_trace(parent)
        if a is None or b is None:
            continue
        links += 1
        bad += a != b

    def frac(n: int, d: int) -> float:
        return round(n / d, 4) if d else 1.0

    return Score(
        traceid_match=frac(len(tid_ok), len(judged)),
        parent_precision=frac(len(correct), len(linked)),
        parent_recall=frac(len(recalled), len(with_parent)),
        coverage=frac(len(found), len(truth)),
        false_link_rate=frac(bad, links),
        spans=len(spans),
        requests=len(truth),
    )


def pooled(scores: dict[str, Score]) -> dict[str, float | int]:
    """Request-weighted averages over scenarios."""
    total = sum(s.requests for s in scores.values()) or 1
    out: dict[str, float | int] = defaultdict(float)  # type: ignore[assignment]
    for s in scores.values():
        for k, v in s.as_dict().items():
            if k != "spans":
                out[k] += v * s.requests / total
    res = {k: round(v, 4) for k, v in out.items()}
    res["spans"] = sum(s.spans for s in scores.values())
    return res
