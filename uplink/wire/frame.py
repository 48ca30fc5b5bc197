"""What every uplink frame shares: a small header outside the zstd frame, and one compression policy.

A frame is `magic + version (+ dictionary id)` followed by one zstd frame. The header stays outside the
compressed bytes so that a reader knows the kind of frame and which dictionary to load before it decompresses.
Span batches (`HX`) carry a dictionary id; metric batches (`HM`) use no dictionary.

Compression is the same for both kinds: a 128 KiB window and 16 Ki-entry tables (frames are 3-130 KB, so level
3's megabyte-sized tables only cost memory), the content size and a checksum in the frame, no dictionary id in it
(our header carries it). Decompression is bounded: a frame must declare its size, and no more than the reader's
limit is ever produced.
"""
from __future__ import annotations

import struct
from functools import lru_cache

import zstandard

from edge.errors import DecodeError

from . import dictionaries

__all__ = ["SPANS_MAGIC", "METRICS_MAGIC", "SPANS_HEADER", "METRICS_HEADER", "compress", "decompress", "content_size"]

SPANS_MAGIC = b"HX"
METRICS_MAGIC = b"HM"
SPANS_HEADER = struct.Struct(">2sBI")  # magic, format version, zstd dictionary id (0 = none)
METRICS_HEADER = struct.Struct(">2sB")  # magic, format version

_MAX_WINDOW_LOG, _MAX_HASH_LOG, _MAX_CHAIN_LOG = 17, 14, 14


@lru_cache(maxsize=8)
def _params(level: int) -> zstandard.ZstdCompressionParameters:
    at_level = zstandard.ZstdCompressionParameters.from_level(level)
    return zstandard.ZstdCompressionParameters.from_level(
        level, window_log=min(_MAX_WINDOW_LOG, at_level.window_log), hash_log=min(_MAX_HASH_LOG, at_level.hash_log),
        chain_log=min(_MAX_CHAIN_LOG, at_level.chain_log), write_content_size=True, write_checksum=True,
        write_dict_id=False)


@lru_cache(maxsize=8)
def _compressor(level: int, dict_id: int) -> zstandard.ZstdCompressor:
    # Kept for the process's life: digesting the dictionary for every batch would cost more than its tables.
    return zstandard.ZstdCompressor(dict_data=dictionaries.load(dict_id), compression_params=_params(level))


def compress(raw: bytes, level: int, dict_id: int = 0) -> bytes:
    """One zstd frame of `raw` under the uplink's compression policy, with the shipped dictionary `dict_id`."""
    if dict_id:
        return _compressor(level, dict_id).compress(raw)
    # Without a dictionary nothing is worth keeping: metric frames leave every export interval, not every batch.
    return zstandard.ZstdCompressor(compression_params=_params(level)).compress(raw)


@lru_cache(maxsize=8)
def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(dict_data=dictionaries.load(dict_id) if dict_id else None)


def content_size(frame: bytes, what: str) -> int:
    """The size one zstd frame declares it decompresses to; DecodeError if it is not a frame or declares none."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as e:
        raise DecodeError(f"{what} is not a zstd frame: {e}") from None
    if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise DecodeError(f"{what} zstd frame does not declare its content size")
    return int(params.content_size)


def decompress(frame: bytes, dict_id: int, max_bytes: int, what: str) -> bytes:
    """The bytes of one zstd frame, at most `max_bytes` of them; any problem is a DecodeError starting with `what`."""
    decompressor = _decompressor(dict_id)
    size = content_size(frame, what)
    if size > max_bytes:
        raise DecodeError(f"{what} would decompress to {size} bytes, over the limit of {max_bytes}")
    try:
        return decompressor.decompress(frame, max_output_size=max_bytes)
    except zstandard.ZstdError as e:
        raise DecodeError(f"{what} zstd frame is corrupt or truncated: {e}") from None
