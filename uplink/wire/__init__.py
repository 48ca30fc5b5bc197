"""The uplink wire format, shared by both ends: span batches (`HX` frames) and metric batches (`HM` frames).

Sans-I/O. The layout is specified in docs/uplink-format.md.
"""
from __future__ import annotations

from .batch import FORMAT_VERSION, HEADER_SIZE, MEDIA_TYPE, READ_VERSIONS, Batch, batch_body, decode_batch, \
    encode_batch, read_header
from .metrics import METRICS_MAGIC, METRICS_MEDIA_TYPE, decode_metrics, encode_metrics, is_metric_batch

__all__ = [
    "FORMAT_VERSION",
    "READ_VERSIONS",
    "MEDIA_TYPE",
    "HEADER_SIZE",
    "Batch",
    "encode_batch",
    "decode_batch",
    "read_header",
    "batch_body",
    "METRICS_MAGIC",
    "METRICS_MEDIA_TYPE",
    "encode_metrics",
    "decode_metrics",
    "is_metric_batch",
]
