from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench._workload import realistic_spans
from edge.aggregator import DEFAULT_BUCKETS, RedAggregator
from edge.codec.metrics_cbor import decode_metrics, encode_metrics, is_metric_batch
from edge.model import HISTOGRAM, MetricBatch
from edge.codec.otlp_metrics import CUMULATIVE, metrics_from_request, request_from_metrics
from edge.errors import DecodeError
from edge.model import Resource, Span, SpanKind, new_span_id

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


def test_metric_batch_roundtrips_through_cbor_and_otlp() -> None:
    agg = RedAggregator(buckets=(0.001, 0.1))
    agg.consume(realistic_spans(20, seed=1))
    batch = MetricBatch("node-a", 7, 1_000, 2_000, agg.resource_metrics({"helix.node.id": "node-a"}))
    data = encode_metrics(batch)
    assert is_metric_batch(data)
    back = decode_metrics(data)
    assert back == batch
    req = request_from_metrics(batch)
    m = req.resource_metrics[0].scope_metrics[0].metrics
    assert m[0].sum.aggregation_temporality == CUMULATIVE and m[0].sum.is_monotonic
    assert m[2].histogram.data_points[0].start_time_unix_nano == 1_000
    assert m[2].histogram.data_points[0].time_unix_nano == 2_000
    again = metrics_from_request(req, "node-a", 7)
    assert again == batch


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_metrics(b"HM\x01" + data)


def test_wrong_shapes_are_decode_errors() -> None:
    import cbor2
    import zstandard

    def frame(body: object) -> bytes:
        return b"HM\x01" + zstandard.ZstdCompressor().compress(cbor2.dumps(body))

    good = encode_metrics(MetricBatch("n", 1, 0, 1, RedAggregator().resource_metrics()))
    decode_metrics(good)
    for body in (["n", 1, 0, 1], ["n", -1, 0, 1, []], ["n", 1, 5, 1, []], ["n", 1, 0, 1, [[{}, "s", "v", [["m", 9, "", "", True, []]]]]],
                 ["n", 1, 0, 1, [[{}, "s", "v", [["m", 2, "", "", True, [[{}, 3, 1.0, [1.0], [1, 1], None, None]]]]]]]):
        with pytest.raises(DecodeError):
            decode_metrics(frame(body))
    with pytest.raises(DecodeError, match="larger|limit"):
        decode_metrics(frame(["n" * 5000, 1, 0, 1, []]), max_bytes=100)
    with pytest.raises(DecodeError, match="version"):
        decode_metrics(b"HM\x09" + good[3:])


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
