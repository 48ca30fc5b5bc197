"""The metric batch frame (`HM`): round trip, and hostile input as DecodeError."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench._workload import realistic_spans
from edge.aggregator import RedAggregator
from edge.codec.otlp_metrics import CUMULATIVE, metrics_from_request, request_from_metrics
from edge.errors import DecodeError
from edge.model import MetricBatch
from uplink.wire.metrics import decode_metrics, encode_metrics, is_metric_batch


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


def _shared_attrs_frame(points: int, text: str) -> bytes:
    """A metrics frame whose points all share one attribute map (CBOR value sharing) holding `text`."""
    import cbor2
    import zstandard

    attrs = {"http.route": text}
    pts = [[attrs, i] for i in range(points)]
    body = ["n-m", 3, 0, 1, [[{"service.name": "svc"}, "s", "v", [["requests", 0, "", "", True, pts]]]]]
    raw = cbor2.dumps(body, value_sharing=True)
    return b"HM\x01" + zstandard.ZstdCompressor(write_content_size=True).compress(raw)


def test_metric_frames_count_their_otlp_expansion_like_span_batches() -> None:
    from uplink.gateway.budget import expansion_limit
    from uplink.wire import ExpansionExceeded, declared_size
    from uplink.wire.metrics import decode_metrics_counted

    # 20,000 points sharing one 20 KB route: ~120 KB inflated, 400 MB as an OTLP request.
    hostile = _shared_attrs_frame(20_000, "r" * 20_000)
    declared = declared_size(hostile)
    with pytest.raises(ExpansionExceeded, match="expands to more than") as info:
        decode_metrics_counted(hostile, declared, expansion_limit(declared))
    assert info.value.node_id == "n-m" and info.value.seq == 3
    # An agent's real RED metrics are counted and well within the bound.
    agg = RedAggregator()
    agg.consume(realistic_spans(200, seed=3))
    real = encode_metrics(MetricBatch("n", 1, 0, 1, agg.resource_metrics({"helix.node.id": "n"})))
    declared = declared_size(real)
    batch, expanded = decode_metrics_counted(real, declared, expansion_limit(declared))
    assert batch.seq == 1 and 0 < expanded < 4 * declared  # 1.7x measured
