"""One compression policy for every uplink frame, and bounded decompression."""
from __future__ import annotations

import os

import pytest
import zstandard

from bench._workload import realistic_spans
from edge.aggregator import RedAggregator
from edge.errors import DecodeError
from edge.model import MetricBatch
from uplink.wire import encode_batch, encode_metrics, read_header
from uplink.wire.frame import METRICS_HEADER, compress, decompress


def test_span_and_metric_frames_are_compressed_alike() -> None:
    agg = RedAggregator()
    agg.consume(realistic_spans(200, seed=3))
    metrics = encode_metrics(MetricBatch("n", 1, 0, 1, agg.resource_metrics()))[METRICS_HEADER.size:]
    for version, dictionary in ((2, 0), (2, None), (3, None)):
        data = encode_batch(realistic_spans(200, seed=4), "n", 1, version=version, dictionary=dictionary)
        spans = data[read_header(data).size:]
        for frame in (spans, metrics):
            p = zstandard.get_frame_parameters(frame)
            assert p.has_checksum and p.content_size > 0 and p.dict_id == 0  # the dictionary id is in our header
            assert p.window_size <= 128 * 1024


def test_decompress_is_bounded_and_names_the_frame() -> None:
    raw = os.urandom(1000) * 20
    frame = compress(raw, 3)
    assert decompress(frame, 0, len(raw), "metrics batch") == raw
    with pytest.raises(DecodeError, match="^metrics batch would decompress to 20000 bytes, over the limit of 19999"):
        decompress(frame, 0, len(raw) - 1, "metrics batch")
    with pytest.raises(DecodeError, match="^uplink batch is not a zstd frame"):
        decompress(b"garbage", 0, 100, "uplink batch")
    with pytest.raises(DecodeError, match="content size"):
        cobj = zstandard.ZstdCompressor().compressobj()
        decompress(cobj.compress(raw) + cobj.flush(), 0, 10**6, "x")  # streamed: no size in the frame
