from __future__ import annotations

from collections import defaultdict

import pytest

from bench._workload import realistic_spans
from edge.aggregator import DEFAULT_BUCKETS, RedAggregator
from edge.model import HISTOGRAM, MetricBatch, Resource, Span, SpanKind, new_span_id

_KIND = {SpanKind.SERVER: "server", SpanKind.CLIENT: "client", SpanKind.PRODUCER: "producer",
         SpanKind.CONSUMER: "consumer"}


def tally(spans: list[Span]) -> dict[tuple[str, str], list[int]]:
    """The workload's own count per (service, kind): requests, errors, summed ns, and per-bucket counts."""
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0] + [0] * (len(DEFAULT_BUCKETS) + 1))
    for s in spans:
        if s.kind not in _KIND:
            continue
        t = out[(s.resource.service_name, _KIND[s.kind])]
        t[0] += 1
        code = s.attributes.get("http.response.status_code", 0)
        t[1] += s.status_code == 2 or (isinstance(code, int) and code >= 500)
        t[2] += s.end_ns - s.start_ns
        seconds = (s.end_ns - s.start_ns) / 1e9
        i = next((i for i, b in enumerate(DEFAULT_BUCKETS) if seconds <= b), len(DEFAULT_BUCKETS))
        t[3 + i] += 1
    return out


def by_service_kind(batch: MetricBatch) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0] + [0] * (len(DEFAULT_BUCKETS) + 1))
    for r in batch.resources:
        svc = r.resource.service_name
        for m in r.metrics:
            for p in m.points:
                row = out[(svc, p.attributes["span.kind"])]
                if m.name == "helix.red.requests":
                    row[0] += p.value
                elif m.name == "helix.red.errors":
                    row[1] += p.value
                else:
                    row[2] += round(p.sum * 1e9)
                    for i, n in enumerate(p.bucket_counts):
                        row[3 + i] += n
    return out


def test_counts_sums_and_buckets_equal_the_workload_tally() -> None:
    spans = realistic_spans(600, seed=3)
    agg = RedAggregator()
    for i in range(0, len(spans), 97):
        agg.consume(spans[i:i + 97])
    batch = MetricBatch("n1", 1, agg.start_ns, agg.start_ns + 1, agg.resource_metrics())
    expected = tally(spans)
    got = by_service_kind(batch)
    assert {k: [int(x) for x in v] for k, v in got.items()} == {k: v for k, v in expected.items()}
    assert sum(v[1] for v in expected.values()) > 0  # the workload has failures: errors are exercised
    assert agg.stats.ignored == sum(1 for s in spans if s.kind not in _KIND)
    # The exported sum is the exact sum of nanoseconds, converted once.
    for r in batch.resources:
        for m in r.metrics:
            if m.kind == HISTOGRAM:
                for p in m.points:
                    assert p.count == sum(p.bucket_counts)
                    assert p.min <= p.sum / p.count <= p.max


def test_series_per_route_and_peer_with_ids_normalised() -> None:
    agg = RedAggregator()
    res = Resource.of({"service.name": "shop"})
    spans = [Span(b"\x01" * 16, new_span_id(), "GET", 0, 1_000_000, kind=SpanKind.CLIENT, resource=res,
                  attributes={"url.path": f"/api/items/{i}", "server.address": "inventory"}) for i in range(50)]
    spans.append(Span(b"\x01" * 16, new_span_id(), "GET", 0, 1, kind=SpanKind.SERVER, resource=res,
                      attributes={"url.path": "/api/items/9", "network.peer.address": "10.1.2.3"}))
    agg.consume(spans)
    assert agg.totals() == {("shop", "client", "/api/items/{id}", "inventory"): (50, 0, 50_000_000),
                            ("shop", "server", "/api/items/{id}", ""): (1, 0, 1)}


def test_series_are_bounded_by_an_overflow_series() -> None:
    agg = RedAggregator(max_series=10)
    res = Resource.of({"service.name": "s"})
    agg.consume([Span(b"\x01" * 16, new_span_id(), "op", 0, 5, kind=SpanKind.SERVER, resource=res,
                      attributes={"http.route": f"/r/{chr(97 + i % 26)}{i}"}) for i in range(100)])
    assert len(agg) == 11
    assert sum(c for c, _, _ in agg.totals().values()) == 100
    assert agg.stats.overflow == 90
    points = [p for r in agg.resource_metrics() for m in r.metrics if m.name == "helix.red.requests" for p in m.points]
    assert any(p.attributes == {"otel.metric.overflow": True} and p.value == 90 for p in points)


def test_kernel_counts_join_the_series_of_the_span_path() -> None:
    agg = RedAggregator((0.005, 0.01))
    assert agg.bounds_ns == (5_000_000, 10_000_000)
    span = Span(trace_id=b"\x01" * 16, span_id=new_span_id(), name="GET", start_ns=0, end_ns=5_000_000,
                kind=SpanKind.SERVER, attributes={"url.path": "/orders/123", "http.response.status_code": 200},
                resource=Resource.of({"service.name": "shop"}))
    agg.consume([span])  # exactly on a bound: bucket 0, as the kernel's d <= bound[i]
    # the kernel's counts for the same route (raw path normalised the same way): 2 in bucket 1, 1 above all bounds
    agg.consume_counts("shop", "server", "/orders/456", "", 1, 40_000_000, [0, 2, 1])
    [(key, (count, errors, sum_ns))] = agg.totals().items()
    assert tuple(key) == ("shop", "server", "/orders/{id}", "") and (count, errors, sum_ns) == (4, 1, 45_000_000)
    [rm] = agg.resource_metrics()
    hist = rm.metrics[2].points[0]
    assert hist.bucket_counts == [1, 2, 1] and hist.count == 4  # type: ignore[attr-defined]
    agg.consume_counts("shop", "server", "/x", "", 0, 0, [0, 0, 0])  # nothing new: no series made
    assert len(agg) == 1
    with pytest.raises(ValueError):
        agg.consume_counts("shop", "server", "/x", "", 0, 1, [1, 0])
