from __future__ import annotations

import random

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace._sampling_experimental import composable_traceid_ratio_based, composite_sampler
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanKind as OtelKind

from edge.model import Span, new_span_id
from edge.sampler import ConsistentSampler, encode_threshold, randomness, threshold_for_ratio
from edge.sampler.consistent import with_threshold


def test_thresholds_match_the_specification_examples() -> None:
    assert encode_threshold(threshold_for_ratio(1.0)) == "0"
    assert encode_threshold(threshold_for_ratio(0.5)) == "8"
    assert encode_threshold(threshold_for_ratio(0.25)) == "c"
    assert encode_threshold(threshold_for_ratio(0.1)) == "e6666666666666"
    assert threshold_for_ratio(0.0) == 1 << 56


def test_randomness_prefers_explicit_rv() -> None:
    tid = bytes(range(16))
    assert randomness(tid) == int.from_bytes(tid[9:], "big")
    assert randomness(tid, "ot=rv:00000000000001;th:8") == 1
    assert randomness(tid, "ot=rv:zz") == int.from_bytes(tid[9:], "big")


def test_threshold_written_into_tracestate_keeping_others() -> None:
    assert with_threshold("", 1 << 55) == "ot=th:8"
    assert with_threshold("vendor=1,ot=rv:00000000000001", 1 << 55) == "ot=rv:00000000000001;th:8,vendor=1"


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_agrees_with_opentelemetry_sdk_consistent_sampler(ratio: float) -> None:
    otel = composite_sampler(composable_traceid_ratio_based(ratio))
    ours = ConsistentSampler(ratio)
    rng = random.Random(7)
    kept = 0
    for _ in range(4000):
        tid = rng.getrandbits(128) | 1
        otel_keep = otel.should_sample(Context(), tid, "op", OtelKind.INTERNAL).decision == Decision.RECORD_AND_SAMPLE
        ours_keep = ours.keeps(tid.to_bytes(16, "big"))
        assert otel_keep == ours_keep
        kept += ours_keep
    assert abs(kept / 4000 - ratio) < 0.05


def test_whole_traces_are_kept_or_dropped_together() -> None:
    sampler = ConsistentSampler(0.5)
    rng = random.Random(3)
    spans = []
    for _ in range(200):
        tid = rng.getrandbits(128).to_bytes(16, "big")
        spans += [Span(tid, new_span_id(), f"s{i}", 0, 1) for i in range(3)]
    kept, dropped = sampler.decide(spans)
    kept_ids = {s.trace_id for s in kept}
    assert kept_ids.isdisjoint({s.trace_id for s in dropped})
    assert all(s.trace_state == "ot=th:8" for s in kept)
    assert sampler.stats.kept == len(kept) and sampler.stats.dropped == len(dropped)
    assert 0.35 < len(kept) / len(spans) < 0.65


def test_keep_all_touches_nothing() -> None:
    s = Span(b"\x01" * 16, new_span_id(), "x", 0, 1, trace_state="a=b")
    kept, dropped = ConsistentSampler(1.0).decide([s])
    assert kept == [s] and not dropped and s.trace_state == "a=b"
