"""Scoring stitched traces against the testbed's oracle (pure functions; definitions in docs/accuracy.md).

A span speaks for oracle request R when it carries R's rid: SDK spans as the `oracle.rid` attribute, kernel
HTTP spans in `url.query` (rid=R), kernel gRPC spans in the `oracle-rid` metadata, kernel MQTT spans through the (direction, topic, packet id) the publisher
and the subscriber recorded for R. The span that *handles* R comes from the process that recorded R, in
order of preference: an SDK span with R's rid, the kernel server span, the kernel consumer span, the kernel
producer span (a publish that is itself a root). Figures are kept as counts so that scenarios pool exactly.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from edge.assembler.index import pid_of as _pid
from edge.model import Source, Span, SpanKind

__all__ = ["Judgement", "OracleEntry", "Score", "mqtt_key", "oracle_entry", "pooled", "rid_of", "score",
           "wire_hop_problems"]

_RID = re.compile(r"(?:^|&)rid=([A-Za-z0-9_.\-]+)")
_GRPC_RID = "rpc.grpc.request.metadata.oracle-rid"  # bench/accuracy_wire.py sends it, the agent captures it
_MAX_DEPTH = 256  # parent chains longer than this are cut (a cycle would otherwise never end)


@dataclass(slots=True, frozen=True)
class OracleEntry:
    """One request as the service that handled it recorded it."""

    rid: str
    parent_rid: str | None
    trace: str  # rid of the true root
    service: str
    pid: int | None = None  # the process that handled it: its handling span must come from there
    ctx: bool = False  # trace context was on the wire into this request (traceparent header / user property)
    mqtt: str | None = None  # mqtt_key() of the kernel MQTT span that is this request (publish or delivery)
    sdk_trace: str | None = None  # the trace id (hex) the handling service's SDK gave this request


def oracle_entry(d: Mapping[str, object]) -> OracleEntry:
    """An oracle line (a decoded JSON object) as an entry."""
    pid = d.get("pid")
    mq = d.get("mqtt")
    sdk_trace = d.get("sdk_trace")
    return OracleEntry(str(d["rid"]), str(d["parent_rid"]) if d.get("parent_rid") else None, str(d["trace"]),
                       str(d.get("service", "")), pid if isinstance(pid, int) else None, bool(d.get("ctx")),
                       mq if isinstance(mq, str) else None, sdk_trace if isinstance(sdk_trace, str) else None)


def mqtt_key(direction: str, topic: str, packet_id: object) -> str:
    """How an MQTT message is named across oracle and spans: 'send' or 'receive', topic and packet id."""
    return f"{direction}:{topic}#{packet_id}"


@dataclass(slots=True)
class Score:
    """Counts behind one scenario's figures; the figures are fractions 0..1 (nothing judged: 1.0, and 0.0 for
    the false-link rate)."""

    requests: int = 0  # oracle requests
    covered: int = 0  # ... with a handling span
    with_parent: int = 0  # ... with a true parent
    linked: int = 0  # ... whose handling span has an ancestor of another oracle request
    linked_right: int = 0  # ... and the nearest such ancestor is the true parent
    tid_judged: int = 0  # requests with context on the wire whose span and whose root's span both arrived
    tid_right: int = 0  # ... in the trace of the root's span
    links: int = 0  # parent links between spans that both belong to an oracle request
    false_links: int = 0  # ... joining two different true traces
    spans: int = 0  # distinct spans scored
    orphans: int = 0  # spans naming a parent that did not arrive in their trace (a trace split or a loss)
    sdk_upstream: int = 0  # requests handled by an SDK span of a trace no other SDK trace is above
    sdk_kept: int = 0  # ... whose SDK span arrived with the trace id its SDK gave it
    sdk_moved: int = 0  # requests handled by an SDK span of a trace started below another SDK trace, moved under it
    sdk_moved_marked: int = 0  # ... that carry their original trace id (helix.trace.original_id)

    @staticmethod
    def _frac(n: int, d: int) -> float:
        return round(n / d, 4) if d else 1.0

    @property
    def traceid_match(self) -> float:
        """Requests with context on the wire that sit in their root's trace."""
        return self._frac(self.tid_right, self.tid_judged)

    @property
    def parent_precision(self) -> float:
        """Inferred nearest request ancestors that are the true parent."""
        return self._frac(self.linked_right, self.linked)

    @property
    def parent_recall(self) -> float:
        """Requests with a true parent that got it as nearest request ancestor."""
        return self._frac(self.linked_right, self.with_parent)

    @property
    def coverage(self) -> float:
        """Requests with a handling span."""
        return self._frac(self.covered, self.requests)

    @property
    def false_link_rate(self) -> float:
        """Parent links that join two true traces (0.0 when there are no links)."""
        return self._frac(self.false_links, self.links) if self.links else 0.0

    @property
    def orphan_rate(self) -> float:
        """Spans whose parent is not in their trace (0.0 when there are no spans)."""
        return self._frac(self.orphans, self.spans) if self.spans else 0.0

    @property
    def sdk_traceid_kept(self) -> float:
        """SDK-handled requests of upstream SDK traces that kept the trace id their SDK gave them."""
        return self._frac(self.sdk_kept, self.sdk_upstream)

    @property
    def moved_marked(self) -> float:
        """SDK-handled requests moved under an upstream trace that carry their original trace id."""
        return self._frac(self.sdk_moved_marked, self.sdk_moved)

    def as_dict(self) -> dict[str, float | int]:
        """The figures, for the JSON line."""
        return {"traceid_match": self.traceid_match, "parent_precision": self.parent_precision,
                "parent_recall": self.parent_recall, "coverage": self.coverage,
                "false_link_rate": self.false_link_rate, "orphan_rate": self.orphan_rate,
                "sdk_traceid_kept": self.sdk_traceid_kept, "moved_marked": self.moved_marked, "spans": self.spans}

    def __add__(self, other: Score) -> Score:
        return Score(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Score)))


def _is_kernel(span: Span) -> bool:
    return (span.source is Source.EBPF or span.attributes.get("helix.source") == "ebpf"
            or span.scope.name == "helix.ebpf")


def rid_of(span: Span, mqtt: Mapping[str, str] | None = None) -> str | None:
    """The oracle request a span speaks for, if any (`mqtt`: mqtt_key -> rid from the oracle)."""
    v = span.attributes.get("oracle.rid")
    if isinstance(v, str):
        return v
    md = span.attributes.get(_GRPC_RID)  # a gRPC call: the rid travels as metadata
    if isinstance(md, (list, tuple)) and md and isinstance(md[0], str):
        return md[0]
    q = span.attributes.get("url.query")
    if isinstance(q, str):
        m = _RID.search(q)
        if m:
            return m.group(1)
    topic = span.attributes.get("messaging.destination.name")
    if mqtt and isinstance(topic, str) and span.kind in (SpanKind.PRODUCER, SpanKind.CONSUMER):
        direction = "send" if span.kind == SpanKind.PRODUCER else "receive"
        return mqtt.get(mqtt_key(direction, topic, span.attributes.get("messaging.message.id")))
    return None


def _handler_rank(span: Span) -> int:
    """Lower is a better witness of a request being handled; 9: not a handling span."""
    if not _is_kernel(span):
        return 0 if span.kind != SpanKind.CLIENT else 9
    return {SpanKind.SERVER: 1, SpanKind.CONSUMER: 2, SpanKind.PRODUCER: 3}.get(span.kind, 9)


class Judgement:
    """Received spans related to the oracle: which span handles each request, and what sits above it."""

    def __init__(self, spans: Iterable[Span], oracle: Iterable[OracleEntry]) -> None:
        self.truth = {o.rid: o for o in oracle}
        # A parent is named within a trace (as a backend reads it): a parent id whose span sits in another
        # trace is a broken link, not a link.
        self.by_id: dict[tuple[bytes, bytes], Span] = {}
        for s in spans:  # at-least-once delivery may repeat a span: count it once
            self.by_id.setdefault((s.trace_id, s.span_id), s)
        mqtt = {o.mqtt: o.rid for o in self.truth.values() if o.mqtt}
        self.rid = {sid: rid_of(s, mqtt) for sid, s in self.by_id.items()}
        self.handler: dict[str, Span] = {}
        for sid, s in self.by_id.items():
            r = self.rid[sid]
            o = self.truth.get(r) if r is not None else None
            if o is None or _handler_rank(s) == 9:
                continue
            if o.pid is not None and _pid(s) not in (None, o.pid):
                continue  # the same rid seen in a proxy or in the caller: not where R was handled
            best = self.handler.get(o.rid)
            if best is None or _handler_rank(s) < _handler_rank(best):
                self.handler[o.rid] = s
        self.roots = {o.trace: o.rid for o in self.truth.values() if o.parent_rid is None}

    def parent(self, s: Span) -> Span | None:
        """The received span `s` names as parent."""
        return self.by_id.get((s.trace_id, s.parent_span_id)) if s.parent_span_id else None

    def request_above(self, r: str) -> str | None:
        """The nearest oracle request, other than r, among the ancestors of r's handling span."""
        cur = self.parent(self.handler[r])
        for _ in range(_MAX_DEPTH):
            if cur is None:
                return None
            pr = self.rid[(cur.trace_id, cur.span_id)]
            if pr is not None and pr != r and pr in self.truth:
                return pr
            cur = self.parent(cur)
        return None

    def sdk_trace_upstream(self, r: str) -> bool:
        """No request above r (in the true trace) has an SDK trace other than r's: r's SDK trace is the upstream
        one, which must keep its id."""
        mine = self.truth[r].sdk_trace
        cur = self.truth[r].parent_rid
        for _ in range(_MAX_DEPTH):
            o = self.truth.get(cur) if cur is not None else None
            if o is None:
                return True
            if o.sdk_trace and o.sdk_trace != mine:
                return False
            cur = o.parent_rid
        return True

    def true_trace(self, s: Span) -> str | None:
        """The true trace of a span: its own request's, else that of the nearest request above it."""
        cur: Span | None = s
        for _ in range(_MAX_DEPTH):
            if cur is None:
                return None
            r = self.rid[(cur.trace_id, cur.span_id)]
            if r in self.truth:
                return self.truth[r].trace
            cur = self.parent(cur)
        return None


def score(spans: Iterable[Span], oracle: Iterable[OracleEntry]) -> Score:
    """Score received spans against the oracle of one scenario."""
    j = Judgement(spans, oracle)
    out = Score(requests=len(j.truth), covered=len(j.handler), spans=len(j.by_id))
    for r, o in j.truth.items():
        if o.parent_rid is not None:
            out.with_parent += 1
        if r not in j.handler:
            continue
        above = j.request_above(r)
        if above is not None:
            out.linked += 1
            out.linked_right += above == o.parent_rid
        root = j.handler.get(j.roots.get(o.trace, ""))
        if o.parent_rid is not None and o.ctx and root is not None:
            out.tid_judged += 1
            out.tid_right += j.handler[r].trace_id == root.trace_id
        handler = j.handler[r]
        if o.sdk_trace and not _is_kernel(handler):
            if j.sdk_trace_upstream(r):
                out.sdk_upstream += 1
                out.sdk_kept += handler.trace_id.hex() == o.sdk_trace
            elif handler.trace_id.hex() != o.sdk_trace:
                out.sdk_moved += 1
                out.sdk_moved_marked += handler.attributes.get("helix.trace.original_id") == o.sdk_trace
    for s in j.by_id.values():
        p = j.parent(s)
        if p is None:
            out.orphans += bool(s.parent_span_id)
            continue
        a, b = j.true_trace(s), j.true_trace(p)
        if a is None or b is None:
            continue
        out.links += 1
        out.false_links += a != b
    return out


def wire_hop_problems(spans: Iterable[Span], oracle: Iterable[OracleEntry]) -> list[str]:
    """What is wrong on hops that carried trace context: every request must have a handling span, and a
    request whose context was on the wire must sit in its parent's trace, under its parent. Empty: all right."""
    j = Judgement(spans, oracle)
    problems = [f"request {r} ({o.service}) has no span" for r, o in j.truth.items() if r not in j.handler]
    for r, o in j.truth.items():
        if not o.ctx or o.parent_rid is None or r not in j.handler or o.parent_rid not in j.handler:
            continue
        if j.handler[r].trace_id != j.handler[o.parent_rid].trace_id:
            problems.append(f"request {r} ({o.service}) is not in the trace of its parent {o.parent_rid}")
        above = j.request_above(r)
        if above != o.parent_rid:
            problems.append(f"request {r} ({o.service}) hangs under {above}, not under its parent {o.parent_rid}")
    return problems


def pooled(scores: Iterable[Score]) -> Score:
    """Scenarios pooled: the counts summed, so every request weighs the same."""
    total = Score()
    for s in scores:
        total = total + s
    return total
