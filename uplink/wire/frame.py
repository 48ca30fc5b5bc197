"""What every uplink frame shares: a small header outside the zstd frame, and one compression policy.

A frame is `magic + version (+ the dictionary or table set it was compressed with)` followed by one zstd frame. The
header stays outside the compressed bytes so that a reader knows the kind of frame and which dictionary to load
before it decompresses. Span batches (`HX`) of format versions 1 and 2 carry a shipped dictionary's id (uint32),
versions 3 and 4 the 8-byte id of the node's table set; metric batches (`HM`) use no dictionary.

Compression is the same for every kind: a 128 KiB window and 16 Ki-entry tables (frames are 1-130 KB, so level 3's
megabyte-sized tables only cost memory), the content size and a checksum in the frame, no dictionary id in it (our
header carries it). Decompression is bounded: a frame must declare its size, and no more than the reader's limit is
ever produced.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import zstandard

from edge.errors import DecodeError
from edge.model import Span

from . import dictionaries

__all__ = ["SPANS_MAGIC", "METRICS_MAGIC", "SPANS_HEADER", "METRICS_HEADER", "TABLE_ID_SIZE", "NO_TABLES",
           "TABLE_VERSIONS", "READ_VERSIONS", "HEADER_SIZE", "MAX_HEADER_SIZE", "BatchHeader", "Batch", "read_header", "read_prefix",
           "compression_params", "compress", "decompress", "decompress_with", "content_size"]

SPANS_MAGIC = b"HX"
METRICS_MAGIC = b"HM"
SPANS_HEADER = struct.Struct(">2sBI")  # versions 1 and 2: magic, format version, zstd dictionary id (0 = none)
TABLE_ID_SIZE = 8
NO_TABLES = bytes(TABLE_ID_SIZE)  # the table-set id of a version 3/4 batch that uses none (a node's cold start)
TABLES_HEADER = struct.Struct(f">2sB{TABLE_ID_SIZE}s")  # versions 3, 4: magic, format version, table-set id
TABLE_VERSIONS = (3, 4)  # span batch versions that name a table set
METRICS_HEADER = struct.Struct(">2sB")  # magic, format version
READ_VERSIONS = (1, 2, 3, 4)  # every span batch format version ever shipped; a gateway reads them all
HEADER_SIZE = SPANS_HEADER.size  # versions 1 and 2
MAX_HEADER_SIZE = max(SPANS_HEADER.size, TABLES_HEADER.size)

_MAX_WINDOW_LOG, _MAX_HASH_LOG, _MAX_CHAIN_LOG = 17, 14, 14


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The header of a span batch: its format version and what it was compressed with."""

    version: int
    size: int  # bytes of header before the zstd frame
    dict_id: int = 0  # versions 1 and 2: a shipped zstd dictionary
    table_id: bytes = NO_TABLES  # versions 3 and 4: the node's table set


@dataclass(slots=True)
class Batch:
    """One decoded span batch, of any format version."""

    node_id: str
    seq: int
    created_ns: int
    spans: list[Span] = field(default_factory=list)
    version: int = 3
    dict_id: int = 0
    table_id: bytes = NO_TABLES
    expanded: int = 0  # bytes its spans take in their OTLP request, as the decoder counted them (0: not counted)
    request: bytes | None = None  # its OTLP export request, when decoded straight into it (then `spans` is empty)
    request_spans: int = 0  # the spans in `request`

    def span_count(self) -> int:
        """The spans of the batch, whether decoded into `spans` or into `request`."""
        return self.request_spans if self.request is not None else len(self.spans)


def read_prefix(data: bytes, header: struct.Struct, magic: bytes, versions: tuple[int, ...],
                what: str) -> tuple[Any, ...]:
    """The fields of a message's fixed header (magic and version first), checked; DecodeError naming `what`."""
    if len(data) < 3:
        raise DecodeError(f"{what} too short: {len(data)} bytes")
    if bytes(data[:2]) != magic:
        raise DecodeError(f"not a {what} (starts with {bytes(data[:2])!r}, expected {magic!r})")
    if data[2] not in versions:
        raise DecodeError(f"{what} format version {data[2]} is not supported (this reads "
                          f"{', '.join(map(str, versions))})")
    if len(data) < header.size:
        raise DecodeError(f"{what} too short: {len(data)} bytes, the header alone is {header.size}")
    return header.unpack_from(data)


def read_header(data: bytes) -> BatchHeader:
    """The header of a span batch of any version this code reads; DecodeError if it is not one."""
    version = data[2] if len(data) > 2 else 0
    if version in TABLE_VERSIONS:
        _, _, table_id = read_prefix(data, TABLES_HEADER, SPANS_MAGIC, READ_VERSIONS, "Helix uplink batch")
        return BatchHeader(version, TABLES_HEADER.size, table_id=table_id)
    _, version, dict_id = read_prefix(data, SPANS_HEADER, SPANS_MAGIC, READ_VERSIONS, "Helix uplink batch")
    return BatchHeader(version, SPANS_HEADER.size, dict_id=dict_id)


@lru_cache(maxsize=8)
def compression_params(level: int) -> zstandard.ZstdCompressionParameters:
    """The uplink's zstd parameters at `level`: window and tables capped, content size and checksum written."""
    at_level = zstandard.ZstdCompressionParameters.from_level(level)
    return zstandard.ZstdCompressionParameters.from_level(
        level, window_log=min(_MAX_WINDOW_LOG, at_level.window_log), hash_log=min(_MAX_HASH_LOG, at_level.hash_log),
        chain_log=min(_MAX_CHAIN_LOG, at_level.chain_log), write_content_size=True, write_checksum=True,
        write_dict_id=False)


@lru_cache(maxsize=8)
def _compressor(level: int, dict_id: int) -> zstandard.ZstdCompressor:
    # Kept for the process's life: digesting the dictionary for every batch would cost more than its tables.
    return zstandard.ZstdCompressor(dict_data=dictionaries.load(dict_id), compression_params=compression_params(level))


def compress(raw: bytes, level: int, dict_id: int = 0) -> bytes:
    """One zstd frame of `raw` under the uplink's compression policy, with the shipped dictionary `dict_id`."""
    if dict_id:
        return _compressor(level, dict_id).compress(raw)
    # Without a dictionary nothing is worth keeping: metric frames leave every export interval, not every batch.
    return zstandard.ZstdCompressor(compression_params=compression_params(level)).compress(raw)


@lru_cache(maxsize=8)
def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(dict_data=dictionaries.load(dict_id) if dict_id else None)


def decompress(frame: bytes, dict_id: int, max_bytes: int, what: str) -> bytes:
    """The bytes of one zstd frame, at most `max_bytes` of them; any problem is a DecodeError starting with `what`."""
    return decompress_with(_decompressor(dict_id), frame, max_bytes, what)


def content_size(frame: bytes, what: str) -> int:
    """The size one zstd frame declares it decompresses to; DecodeError if it is not a frame or declares none."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as e:
        raise DecodeError(f"{what} is not a zstd frame: {e}") from None
    if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise DecodeError(f"{what} zstd frame does not declare its content size")
    return int(params.content_size)


def decompress_with(decompressor: zstandard.ZstdDecompressor, frame: bytes, max_bytes: int, what: str) -> bytes:
    """`decompress` with a given decompressor (one loaded with a table set's dictionary)."""
    size = content_size(frame, what)
    if size > max_bytes:
        raise DecodeError(f"{what} would decompress to {size} bytes, over the limit of {max_bytes}")
    try:
        return decompressor.decompress(frame, max_output_size=max_bytes)
    except zstandard.ZstdError as e:
        raise DecodeError(f"{what} zstd frame is corrupt, truncated or compressed with another dictionary: {e}") \
            from None
