"""The uplink bench's floor analysis (bench/uplink_corpus.py --bound), on the corpus sample and the generator."""
from __future__ import annotations

import math
from pathlib import Path

from bench._workload import realistic_spans
from bench.corpus import load_all
from bench.uplink_corpus import _magnitude_bits, batches, columnar_bytes, id_floor, lower_bound
from uplink.wire import columnar
from uplink.wire.tables import EMPTY

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "demo-apps-sample"


def test_magnitude_bits_codes_lengths_by_frequency_and_lower_bits_as_they_are() -> None:
    assert _magnitude_bits([]) == 0
    assert _magnitude_bits([5, 6, 7, 4]) == 4 * 2  # one length (3 bits): no entropy, two bits below the leading one
    assert _magnitude_bits([0, 1]) == 2  # lengths 0 and 1 equally often: one bit each, nothing below
    # Lengths 1, 2, 2, 2: -log2(1/4) + 3 × -log2(3/4) bits for the lengths, one bit below the leading one for each 2.
    assert math.isclose(_magnitude_bits([1, 2, 2, 3]), 2 + 3 * math.log2(4 / 3) + 3)


def test_the_floor_counts_every_id_and_stays_below_what_the_encoder_sends() -> None:
    streams = dict(load_all(SAMPLE))
    streams["generator"] = realistic_spans(40, seed=4)
    for name, spans in streams.items():
        tables = columnar.learn(spans[: len(spans) // 2], node_id="n", created_ns=1)
        bs = batches(spans, 32)
        b = lower_bound(bs, tables)
        n = len(spans)
        assert b["id_floor"] == round(id_floor(bs) / n, 2) == b["ids_raw"], name
        assert b["time_entropy"] > 0 and b["rest_best_compressed"] > 0, name
        parts = b["id_floor"] + min(b["time_entropy"], b["time_planes_best_compressed"]) + b["rest_best_compressed"]
        assert math.isclose(b["bound"], parts, abs_tol=0.03), name
    # On a stream long enough for the frames' own overhead not to count, the floor is below what batches take, and
    # the generator's random trace and span ids do not compress.
    spans = realistic_spans(200, seed=5)
    bs = batches(spans, 512)
    g = lower_bound(bs, EMPTY)
    assert g["bound"] < columnar_bytes(bs, EMPTY, 3) / len(spans)
    assert g["ids_best_compressed"] >= 0.98 * g["ids_raw"]
