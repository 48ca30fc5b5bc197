"""glibc malloc settings for a long-running agent under a memory budget (no-op on other C libraries)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Mapping

__all__ = ["limit_arenas"]

_M_ARENA_MAX = -8  # mallopt(3)


def limit_arenas(arena_max: int = 2, environ: Mapping[str, str] = os.environ) -> int | None:
    """Cap glibc's malloc arenas (MALLOC_ARENA_MAX in the environment wins); the cap set, or None.

    Each thread that allocates may get an arena of its own (grpcio's, the thread pool's, paho's loop), and each
    keeps the heap it once grew: with the default (8 per core) the agent's RSS drifts up by megabytes over hours.
    The memory-budget figures are measured with 2. Call it before threads start.
    """
    if "MALLOC_ARENA_MAX" in environ or arena_max <= 0 or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return arena_max if mallopt(_M_ARENA_MAX, arena_max) == 1 else None
