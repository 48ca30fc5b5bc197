"""RED metrics per (service, span kind, route, peer): request count, error count, latency histogram.

Fed with every span the assembler releases, before sampling decides anything, so the counts cover all traffic.
Cumulative since the aggregator started: an export lost on the way is healed by the next one, and a duplicate
is harmless. Durations are summed as integer nanoseconds, so the exported sum is exact (one rounding, at the end).
The number of series is bounded: once `max_series` exist, new combinations fold into one overflow series per
service marked `otel.metric.overflow = true`, as the OpenTelemetry metrics SDK does.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..model import HISTOGRAM, SUM, HistogramPoint, Metric, ResourceMetrics, SumPoint
from ..model import Resource, Scope, Span, SpanKind
from ..sampler.routes import MAX_ROUTE_LEN, is_error, normalise_path, peer_of, route_of

__all__ = ["RedAggregator", "RedStats", "SeriesKey", "DEFAULT_BUCKETS", "SCOPE", "METRIC_NAMES"]

# OpenTelemetry semantic conventions: http.server.request.duration's advisory buckets, in seconds.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SCOPE = Scope("helix.red", "1")
METRIC_NAMES = ("helix.red.requests", "helix.red.errors", "helix.red.duration")
_KINDS = {SpanKind.SERVER: "server", SpanKind.CLIENT: "client", SpanKind.PRODUCER: "producer",
          SpanKind.CONSUMER: "consumer"}
_OVERFLOW = "\x00overflow"
_SERIES_BYTES = 400  # key tuple, strings, list of counters


class SeriesKey(NamedTuple):
    """What one RED series is per."""

    service: str
    kind: str
    route: str
    peer: str


@dataclass(slots=True)
class RedStats:
    """Spans counted into series, spans of kinds RED does not cover, spans folded into overflow series."""

    spans: int = 0
    ignored: int = 0
    overflow: int = 0
    kernel_counted: int = 0  # requests counted from the kernel's aggregates (sampled out there, no span)


class _Series:
    __slots__ = ("count", "errors", "sum_ns", "buckets", "min_ns", "max_ns")

    def __init__(self, n_buckets: int) -> None:
        self.count = 0
        self.errors = 0
        self.sum_ns = 0
        self.buckets = [0] * n_buckets
        self.min_ns = -1
        self.max_ns = 0


class RedAggregator:
    """`consume(spans)` for every span; `resource_metrics()` for what to export."""

    def __init__(self, buckets: Iterable[float] = DEFAULT_BUCKETS, max_series: int = 2000,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self._bounds_ns = [round(b * 1e9) for b in self.bounds]
        self.max_series = max_series
        self.start_ns = clock_ns()
        self.stats = RedStats()
        self._series: dict[SeriesKey, _Series] = {}

    def __len__(self) -> int:
        return len(self._series)

    @property
    def bounds_ns(self) -> tuple[int, ...]:
        """The histogram bounds in integer nanoseconds, as durations are bucketed (bucket i: bounds[i-1] < d <= bounds[i])."""
        return tuple(self._bounds_ns)

    @property
    def bytes(self) -> int:
        """Memory held by the series (estimate)."""
        return len(self._series) * (_SERIES_BYTES + 8 * len(self._bounds_ns))

    def consume(self, spans: Iterable[Span]) -> None:
        """Count spans of kind server, client, producer and consumer."""
        series = self._series
        n_buckets = len(self._bounds_ns) + 1
        for s in spans:
            kind = _KINDS.get(s.kind)
            if kind is None:
                self.stats.ignored += 1
                continue
            service = s.resource.service_name
            key = SeriesKey(service, kind, route_of(s) or normalise_path(s.name), peer_of(s))
            ser = series.get(key)
            if ser is None:
                if len(series) >= self.max_series:
                    key = SeriesKey(service, _OVERFLOW, "", "")
                    ser = series.get(key)
                    self.stats.overflow += 1
                if ser is None:
                    ser = series[key] = _Series(n_buckets)
            d = s.duration_ns
            ser.count += 1
            if is_error(s):
                ser.errors += 1
            ser.sum_ns += d
            ser.buckets[bisect_left(self._bounds_ns, d)] += 1
            if ser.min_ns < 0 or d < ser.min_ns:
                ser.min_ns = d
            if d > ser.max_ns:
                ser.max_ns = d
            self.stats.spans += 1

    def consume_counts(self, service: str, kind: str, path: str, peer: str, errors: int, sum_ns: int,
                       buckets: Sequence[int]) -> None:
        """Count requests that reached no span (sampled out in the kernel), already bucketed by `bounds_ns`.

        `path` is the raw request path (or an MQTT span name), normalised here as `route_of` does for `url.path`; the
        request count is the sum of `buckets`, so count and histogram always agree. Min and max are not known.
        """
        count = sum(buckets)
        if count <= 0:
            return
        n_buckets = len(self._bounds_ns) + 1
        if len(buckets) != n_buckets:
            raise ValueError(f"expected {n_buckets} bucket counts, got {len(buckets)}")
        key = SeriesKey(service, kind, normalise_path(path), peer[:MAX_ROUTE_LEN])
        series = self._series
        ser = series.get(key)
        if ser is None:
            if len(series) >= self.max_series:
                key = SeriesKey(service, _OVERFLOW, "", "")
                ser = series.get(key)
                self.stats.overflow += count
            if ser is None:
                ser = series[key] = _Series(n_buckets)
        ser.count += count
        ser.errors += errors
        ser.sum_ns += sum_ns
        for i, n in enumerate(buckets):
            ser.buckets[i] += n
        self.stats.spans += count
        self.stats.kernel_counted += count

    def totals(self) -> dict[SeriesKey, tuple[int, int, int]]:
        """(count, errors, summed nanoseconds) per series: what tests and benchmarks compare with their tally."""
        return {k: (v.count, v.errors, v.sum_ns) for k, v in self._series.items()}

    def resource_metrics(self, extra: dict[str, str] | None = None) -> list[ResourceMetrics]:
        """The cumulative RED metrics, one ResourceMetrics per service (`service.name` plus `extra` attributes).

        Only the service name is taken from the spans: one service runs on several hosts, and a resource copied
        from whichever span came first would name one of them for all.
        """
        by_service: dict[str, list[Metric]] = {}
        for key, ser in self._series.items():
            metrics = by_service.get(key.service)
            if metrics is None:
                metrics = by_service[key.service] = [
                    Metric(METRIC_NAMES[0], SUM, "{request}", "Requests (spans of kind server, client, producer, "
                           "consumer), sampled or not", True),
                    Metric(METRIC_NAMES[1], SUM, "{request}", "Requests with error status or HTTP status >= 500", True),
                    Metric(METRIC_NAMES[2], HISTOGRAM, "s", "Request duration"),
                ]
            if key.kind == _OVERFLOW:
                attrs: dict[str, object] = {"otel.metric.overflow": True}
            else:
                attrs = {"span.kind": key.kind, "route": key.route}
                if key.peer:
                    attrs["peer"] = key.peer
            metrics[0].points.append(SumPoint(dict(attrs), ser.count))  # type: ignore[arg-type]
            metrics[1].points.append(SumPoint(dict(attrs), ser.errors))  # type: ignore[arg-type]
            metrics[2].points.append(HistogramPoint(
                dict(attrs), ser.count, ser.sum_ns / 1e9, self.bounds, list(ser.buckets),  # type: ignore[arg-type]
                ser.min_ns / 1e9 if ser.min_ns >= 0 else None, ser.max_ns / 1e9 if ser.count else None))
        return [ResourceMetrics(Resource.of({**(extra or {}), "service.name": svc}), SCOPE, ms)
                for svc, ms in by_service.items()]
