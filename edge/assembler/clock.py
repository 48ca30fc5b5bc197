"""Device clock skew: spans from devices are shifted into their node-side parent's bounds (Jaeger-adjuster style).

A device's clock can be off by seconds. Where a device span's parent was recorded on the node (an app's
producer or client span), physics bounds the child: a delivery cannot start before its publish, a server
span lies inside its client span. A violation gives a skew estimate for that device, applied to all its spans
while the estimate is fresh; spans that were moved say by how much (`helix.clock.adjusted_ns`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model import Resource, Source, Span, SpanKind

__all__ = ["SkewAdjuster"]

_SYNC_PARENT = (SpanKind.CLIENT,)
_ASYNC_PARENT = (SpanKind.PRODUCER,)


@dataclass(slots=True)
class _Estimate:
    offset_ns: int
    seen: float


class SkewAdjuster:
    """Per-device clock offsets learned from parent/child pairs."""

    def __init__(self, ttl_s: float = 600.0) -> None:
        self.ttl_s = ttl_s
        self._est: dict[Resource, _Estimate] = {}
        self.adjusted = 0

    @staticmethod
    def applies(span: Span) -> bool:
        """Only device spans (their own clocks) are ever moved."""
        return span.source is Source.SDK_MQTT

    def observe(self, child: Span, parent: Span, now: float) -> None:
        """Learn from one device span whose parent was recorded on the node."""
        if not self.applies(child) or self.applies(parent) or parent.resource == child.resource:
            return
        current = self._est.get(child.resource)
        offset = current.offset_ns if current and now - current.seen <= self.ttl_s else 0
        # A span already moved says by how much; observations are made on the device's own clock.
        moved = child.attributes.get("helix.clock.adjusted_ns", 0)
        moved = moved if isinstance(moved, int) else 0
        start, end = child.start_ns - moved + offset, child.end_ns - moved + offset
        shift = 0
        if parent.kind in _SYNC_PARENT and child.kind == SpanKind.SERVER:
            if start < parent.start_ns or end > parent.end_ns:
                # Centre the child in its parent: the network latency is taken as equal both ways.
                latency = max(0, (parent.duration_ns - child.duration_ns) // 2)
                shift = parent.start_ns + latency - start
        elif start < parent.start_ns:
            shift = parent.start_ns - start
        if shift:
            self._est[child.resource] = _Estimate(offset + shift, now)
        elif current is not None:
            current.seen = now

    def apply(self, span: Span, now: float) -> None:
        """Shift a device span by its device's fresh estimate."""
        if not self.applies(span):
            return
        est = self._est.get(span.resource)
        if est is None or now - est.seen > self.ttl_s or not est.offset_ns:
            return
        d = est.offset_ns
        span.start_ns += d
        span.end_ns += d
        for ev in span.events:
            ev.time_ns += d
        span.attributes["helix.clock.adjusted_ns"] = d
        self.adjusted += 1

    def offset_of(self, resource: Resource) -> int:
        """The current estimate for a device (0 when none)."""
        est = self._est.get(resource)
        return est.offset_ns if est else 0
