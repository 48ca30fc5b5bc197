"""The process's resident memory, read cheaply: what the agent's governor and the gateway's budget measure."""
from __future__ import annotations

import os

__all__ = ["read_rss"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def read_rss() -> int:
    """Resident set size of this process in bytes (/proc/self/statm, second field)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0
