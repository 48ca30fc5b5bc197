"""The zstd dictionaries of the uplink batch format, by the id carried in the batch header.

Ids are never reused and files never change once shipped: a gateway keeps every dictionary a node in the field may
still use. A new dictionary gets the next id and a new file (bench/train_dictionary.py writes it); CURRENT says
which one new nodes compress with.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import zstandard

from edge.errors import DecodeError

__all__ = ["DICTIONARIES", "CURRENT", "load", "available"]

DICTIONARIES: dict[int, str] = {1: "helix-v1.zdict"}
CURRENT = 1


def available(dict_id: int) -> bool:
    """True if the dictionary with this id is registered and its file is installed."""
    name = DICTIONARIES.get(dict_id)
    return name is not None and resources.files(__name__).joinpath(name).is_file()


@lru_cache(maxsize=None)
def load(dict_id: int) -> zstandard.ZstdCompressionDict:
    """The dictionary with this id; DecodeError if this installation does not have it."""
    name = DICTIONARIES.get(dict_id)
    if name is None:
        raise DecodeError(f"uplink batch needs zstd dictionary {dict_id}, which this gateway does not have "
                          "(upgrade the gateway: it must know every dictionary the nodes use)")
    try:
        data = resources.files(__name__).joinpath(name).read_bytes()
    except OSError as e:
        raise DecodeError(f"zstd dictionary {dict_id} ({name}) is registered but not installed: {e}") from None
    d = zstandard.ZstdCompressionDict(data)
    if d.dict_id() != dict_id:  # a swapped or re-trained file would silently corrupt every batch
        raise DecodeError(f"zstd dictionary file {name} has id {d.dict_id()}, expected {dict_id}")
    return d
