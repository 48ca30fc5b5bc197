"""Scanning processes for every uprobe attacher at once: one read of a process's mappings for all of them, and a
periodic pass that reads only the processes whose stamp moved (proc_maps.py), with a full pass every FULL_EVERY.

Everything here blocks (/proc reads, perf_event_open): the source runs it in a worker thread, one call at a time.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .proc_maps import read_maps, read_stamp
from .tls_libs import traced_pids
from .uprobe_attach import UprobeAttacher

__all__ = ["Rescanner", "RescanStats", "FULL_EVERY"]

# Every FULL_EVERY-th periodic pass scans every process whatever its stamp: the safety net for what the stamp misses
# (a dlopen and an munmap of the same size between two passes) and the retry of files that failed to attach.
FULL_EVERY = 6


@dataclass(slots=True)
class RescanStats:
    """What the periodic passes did."""

    passes: int = 0
    full_passes: int = 0
    processes_scanned: int = 0  # mappings read and handed to the attachers (execs, new or changed processes)
    processes_unchanged: int = 0  # stamp unchanged since the last read: mappings not read


class Rescanner:
    """Hands each process's mappings, read once, to every attacher; remembers when each was read."""

    def __init__(self, own_pid: int) -> None:
        self.own_pid = own_pid
        self._stamps: dict[int, tuple[int, int]] = {}  # pid -> (start time, address-space size) at its last read
        self.stats = RescanStats()

    def scan(self, attachers: Sequence[UprobeAttacher], pid: int) -> None:
        """Look at one process's mappings now for every attacher that traces it (after an exec, or on a pass)."""
        wanted = [a for a in attachers if a.traces(pid)]
        if not wanted:
            return
        stamp = read_stamp(pid)  # before the mappings: a change after this read moves the next stamp
        try:
            maps = read_maps(pid)
        except OSError:
            maps = None  # each attacher reads it again and tells an exit from a refusal, as it counts them
        if stamp is None or maps is None:
            self._stamps.pop(pid, None)
        else:
            self._stamps[pid] = stamp
        self.stats.processes_scanned += 1
        for a in wanted:
            a.scan_pid(pid, maps)

    def forget(self, attachers: Sequence[UprobeAttacher], pid: int) -> None:
        """The process exited: every attacher forgets it."""
        self._stamps.pop(pid, None)
        for a in attachers:
            a.forget(pid)

    def rescan(self, attachers: Sequence[UprobeAttacher], allowed: frozenset[int] | None, full: bool = False) -> None:
        """Forget the processes gone, then scan the new ones and those whose stamp moved (every one when `full`, and
        on every FULL_EVERY-th pass)."""
        attachers = [a for a in attachers if not a.closed]
        if not attachers:
            return
        full = full or self.stats.passes % FULL_EVERY == 0
        self.stats.passes += 1
        self.stats.full_passes += full
        pids = traced_pids(allowed, self.own_pid)
        live = set(pids)
        for pid in [p for p in self._stamps if p not in live]:
            del self._stamps[pid]
        for a in attachers:
            a.scans += 1
            for pid in [p for p in a.known_pids() if p not in live]:
                a.forget(pid)
        for pid in pids:
            if not full:
                seen = self._stamps.get(pid)
                if seen is not None and seen == read_stamp(pid):
                    self.stats.processes_unchanged += 1
                    continue
            self.scan(attachers, pid)
