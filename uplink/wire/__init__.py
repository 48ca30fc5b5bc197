"""The uplink wire format, shared by both ends: span batches (`HX` frames, format versions 1-4), the table sets
versions 3 and 4 refer to (`HT` messages), and metric batches (`HM` frames).

Sans-I/O. The layouts are specified in docs/uplink-format.md.
"""
from __future__ import annotations

from .batch import FORMAT_VERSION, MEDIA_TYPE, READ_VERSIONS, WRITE_VERSIONS, Batch, BatchHeader, \
    TableLookup, batch_table_id, decode_batch, encode_batch, read_header
from .columnar import UnknownTableSet
from .frame import MAX_HEADER_SIZE, METRICS_HEADER, NO_TABLES, TABLE_VERSIONS, content_size
from .metrics import METRICS_MAGIC, METRICS_MEDIA_TYPE, decode_metrics, decode_metrics_counted, encode_metrics, \
    is_metric_batch
from .tables import EMPTY, NEEDS_TABLES_HEADER, TABLES_MAGIC, TABLES_MEDIA_TYPE, TableSet, TrainingLimits, \
    parse_message
from .values import ExpansionExceeded

__all__ = [
    "FORMAT_VERSION",
    "READ_VERSIONS",
    "WRITE_VERSIONS",
    "MEDIA_TYPE",
    "MAX_HEADER_SIZE",
    "NO_TABLES",
    "TABLE_VERSIONS",
    "Batch",
    "BatchHeader",
    "TableLookup",
    "UnknownTableSet",
    "ExpansionExceeded",
    "encode_batch",
    "decode_batch",
    "read_header",
    "batch_table_id",
    "EMPTY",
    "TableSet",
    "TrainingLimits",
    "parse_message",
    "TABLES_MAGIC",
    "TABLES_MEDIA_TYPE",
    "NEEDS_TABLES_HEADER",
    "METRICS_MAGIC",
    "METRICS_MEDIA_TYPE",
    "encode_metrics",
    "decode_metrics", "decode_metrics_counted",
    "is_metric_batch",
    "declared_size",
]

def declared_size(data: bytes) -> int:
    """The bytes a span or metric batch says it inflates to, read before anything is inflated (the gateway's memory
    guard); DecodeError if that cannot be told."""
    if is_metric_batch(data):
        return content_size(bytes(data[METRICS_HEADER.size:]), "metrics batch")
    header = read_header(data)  # a DecodeError for a version this code does not read
    return content_size(bytes(data[header.size:]), "uplink batch")
