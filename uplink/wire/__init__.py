"""The uplink wire format, shared by both ends: span batches (`HX` frames) and metric batches (`HM` frames).

Sans-I/O. The layout is specified in docs/uplink-format.md.
"""
from __future__ import annotations

from edge.errors import DecodeError

from .batch import FORMAT_VERSION, HEADER_SIZE, MEDIA_TYPE, READ_VERSIONS, Batch, batch_body, decode_batch, \
    encode_batch, read_header
from .frame import METRICS_HEADER, content_size
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
    "declared_size",
]

# Where the zstd frame starts, by batch format version (the header before it differs).
_FRAME_AT = {1: HEADER_SIZE, 2: HEADER_SIZE}


def declared_size(data: bytes) -> int:
    """The bytes a span or metric batch says it inflates to, read before anything is inflated (the gateway's memory
    guard); DecodeError if that cannot be told."""
    if is_metric_batch(data):
        return content_size(bytes(data[METRICS_HEADER.size:]), "metrics batch")
    version, _ = read_header(data)
    at = _FRAME_AT.get(version)
    if at is None:
        raise DecodeError(f"uplink batch format version {version} is not supported")
    return content_size(bytes(data[at:]), "uplink batch")
