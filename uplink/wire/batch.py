"""Span batches of every format version, in one place: encode in the version a node is configured for, decode what
any node ever sent by the version in its header.

Versions 3 and 4 (uplink/wire/columnar.py) refer to a table set the node learned and published; versions 1 and 2
(uplink/wire/batch_v2.py) to a zstd dictionary shipped with the package. Layouts: docs/uplink-format.md.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from edge.model import Span

from . import batch_v2, columnar
from .frame import NO_TABLES, READ_VERSIONS, Batch, BatchHeader, read_header
from .tables import EMPTY, TableSet

__all__ = ["FORMAT_VERSION", "WRITE_VERSIONS", "READ_VERSIONS", "MEDIA_TYPE", "Batch", "BatchHeader",
           "TableLookup", "encode_batch", "decode_batch", "read_header", "batch_table_id"]

FORMAT_VERSION = 4  # what nodes write unless configured otherwise
WRITE_VERSIONS = (2, 3, 4)  # what a node may be configured to write (1 only for tests and benchmarks)
MEDIA_TYPE = "application/vnd.helix.batch"

# Where a decoder finds a table set by its id: the gateway's cache, or a test's dict.get.
TableLookup = Callable[[bytes], "TableSet | None"]


def encode_batch(spans: Sequence[Span], node_id: str, seq: int, level: int = 3, created_ns: int | None = None,
                 version: int = FORMAT_VERSION, tables: TableSet = EMPTY, dictionary: int | None = None) -> bytes:
    """Encode spans as one batch of `version`: 4 or 3 with the table set `tables` (EMPTY: none), 2 or 1 with the
    shipped zstd dictionary `dictionary` (None: the current one, 0: none)."""
    if version in columnar.VERSIONS:
        return columnar.encode(spans, node_id, seq, tables, level, created_ns, version)
    return batch_v2.encode(spans, node_id, seq, level, created_ns, dictionary, version)


def decode_batch(data: bytes, max_bytes: int, tables: TableLookup | None = None,
                 max_spans: int = columnar.MAX_SPANS, max_expanded: int | None = None, otlp: bool = False) -> Batch:
    """Decode a span batch of any version ever shipped; at most `max_bytes` are decompressed, and a batch of more
    than `max_spans` spans is refused before any span is built.

    A version 3 or 4 batch naming a table set that `tables` does not hold raises UnknownTableSet (its `table_id` says
    which to fetch); one whose spans would take more than `max_expanded` bytes in their OTLP export request (texts
    shared by reference are copied there for every use; None: no bound) raises ExpansionExceeded (its `node_id` and
    `seq` say which batch); every other problem is a DecodeError naming it. `otlp`: a version 3 or 4 batch is decoded
    straight into its OTLP export request (`Batch.request`) where it can be, as the gateway exports it.
    """
    header = read_header(data)
    if header.version in columnar.VERSIONS:
        found = tables(header.table_id) if tables is not None and header.table_id != NO_TABLES else None
        if otlp:
            # Imported here: a node, which only encodes, does not load the OTLP writer.
            from . import columnar_otlp

            return columnar_otlp.decode_request(data, header, found, max_bytes, max_spans, max_expanded)
        return columnar.decode(data, header, found, max_bytes, max_spans, max_expanded)
    return batch_v2.decode(data, header, max_bytes, max_spans, max_expanded)


def batch_table_id(data: bytes) -> bytes:
    """The table set a span batch needs (NO_TABLES for one that needs none, and for versions 1 and 2)."""
    try:
        return read_header(data).table_id
    except Exception:  # noqa: BLE001 - not a span batch (a metrics frame): it needs no table set
        return NO_TABLES


assert set(READ_VERSIONS) == {*batch_v2.VERSIONS, *columnar.VERSIONS}, "a shipped version lost its decoder"
