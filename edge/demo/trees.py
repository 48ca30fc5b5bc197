"""Trace trees for people: spans grouped by trace and drawn parent over child."""
from __future__ import annotations

from collections import defaultdict

from ..model import Span

__all__ = ["group_traces", "format_trace", "has_orphans"]


def group_traces(spans: list[Span]) -> dict[bytes, list[Span]]:
    """Spans by trace id, each list sorted by start time."""
    traces: dict[bytes, list[Span]] = defaultdict(list)
    for s in spans:
        traces[s.trace_id].append(s)
    for members in traces.values():
        members.sort(key=lambda s: (s.start_ns, s.name))
    return dict(traces)


def has_orphans(spans: list[Span]) -> bool:
    """True if some span names a parent that is not among `spans`."""
    ids = {s.span_id for s in spans}
    return any(s.parent_span_id and s.parent_span_id not in ids for s in spans)


def _source(s: Span) -> str:
    v = s.attributes.get("helix.source", s.source.value)
    return v if isinstance(v, str) else s.source.value


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms" if ns >= 100_000 else f"{ns / 1e3:.0f} µs"


def format_trace(spans: list[Span]) -> str:
    """Draw one trace as a tree: name, source, service and duration per span."""
    by_id = {s.span_id: s for s in spans}
    children: dict[bytes, list[Span]] = defaultdict(list)
    roots: list[Span] = []
    for s in spans:
        if s.parent_span_id and s.parent_span_id in by_id and s.parent_span_id != s.span_id:
            children[s.parent_span_id].append(s)
        else:
            roots.append(s)
    sources = sorted({_source(s) for s in spans})
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    lines = [f"trace {spans[0].trace_id.hex()}  {len(spans)} spans  sources: {', '.join(sources)}  {_ms(end - start)}"]
    seen: set[bytes] = set()

    def draw(s: Span, prefix: str, last: bool) -> None:
        if s.span_id in seen:  # a cycle in bad input must not hang the printer
            return
        seen.add(s.span_id)
        branch = "└─ " if last else "├─ "
        note = "" if not s.parent_span_id or s.parent_span_id in by_id else "  (parent not received)"
        status = "  ERROR" if s.status_code == 2 else ""
        lines.append(f"{prefix}{branch}{s.name}  [{_source(s)} · {s.resource.service_name}]  "
                     f"{_ms(s.duration_ns)}{status}{note}")
        kids = sorted(children.get(s.span_id, []), key=lambda c: c.start_ns)
        for i, c in enumerate(kids):
            draw(c, prefix + ("   " if last else "│  "), i == len(kids) - 1)

    for i, r in enumerate(sorted(roots, key=lambda s: s.start_ns)):
        draw(r, "", i == len(roots) - 1)
    return "\n".join(lines)
