"""One read of a process's file mappings for every uprobe attacher, and a cheap stamp of when they may have changed.

Both attachers (TLS libraries, Python interpreters) decide from the files a process maps. `/proc/<pid>/maps` is read
once per process for both, and a periodic pass reads it only for processes whose stamp moved: the start time and the
address-space size from `/proc/<pid>/stat` (a few µs, no walk of the mappings). An exec or a fork makes a new stamp
(and the exec is also announced by the probes); a dlopen maps new files and so grows the size. What the stamp can miss
(a dlopen and an munmap of exactly the same size between two passes) is caught by a full pass now and then (rescan.py).

Everything here blocks (/proc reads): the source runs it in a worker thread.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Mapping", "read_maps", "read_stamp"]


@dataclass(slots=True, frozen=True)
class Mapping:
    """One mapping of a file, as /proc/<pid>/maps shows it."""

    span: str  # "start-end", hex: names the mapping under /proc/<pid>/map_files
    start: int
    offset: int  # file offset mapped at `start`
    executable: bool
    path: str  # as the process sees it, " (deleted)" kept when the file was replaced on disk


def read_maps(pid: int) -> list[Mapping]:
    """The file mappings of process `pid`, in address order (OSError when it is gone or cannot be read)."""
    out: list[Mapping] = []
    with open(f"/proc/{pid}/maps", "rb") as fh:
        data = fh.read()
    for line in data.split(b"\n"):
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith(b"/"):
            continue  # anonymous, [heap], [stack], [vdso]: no file to attach to
        span = parts[0]
        out.append(Mapping(span.decode(), int(span.split(b"-", 1)[0], 16), int(parts[2], 16), b"x" in parts[1],
                           parts[5].decode("utf-8", "replace")))
    return out


def read_stamp(pid: int) -> tuple[int, int] | None:
    """(start time in clock ticks, address-space size in bytes) of process `pid`; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # after the command name, which may hold spaces and parentheses: state is field 3, starttime 22, vsize 23
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return int(fields[19]), int(fields[20])
    except (IndexError, ValueError):
        return None
