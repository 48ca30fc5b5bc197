"""The process's resident memory, read cheaply: what the agent's governor and the gateway's budget measure."""
from __future__ import annotations

import os

__all__ = ["read_rss", "read_unfaulted"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def read_rss() -> int:
    """Resident set size of this process in bytes (/proc/self/statm, second field)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def read_unfaulted(name: str = "anon_inode:bpf-map", smaps: str = "/proc/self/smaps") -> int:
    """Bytes mapped under `name` that are not resident yet: a BPF ring buffer's pages are allocated by the kernel when
    the map is made but count in RSS only once the reader first touches them, which it does over the first laps of
    records. A few milliseconds (one read of smaps): for a baseline, not for every check."""
    total = 0
    size = 0
    inside = False
    try:
        with open(smaps, "rb") as f:
            for line in f:
                head = line.split(maxsplit=6)
                if len(head) >= 5 and b"-" in head[0] and not head[0].endswith(b":"):
                    inside = len(head) >= 6 and head[5].strip() == name.encode()
                elif inside and head[0] == b"Size:":
                    size = int(head[1]) * 1024
                elif inside and head[0] == b"Rss:":
                    total += max(0, size - int(head[1]) * 1024)
    except (OSError, ValueError, IndexError):
        return 0
    return total
