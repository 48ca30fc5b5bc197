"""What the attachers that keep uprobes on the files traced processes run (tls_attach.py, py_attach.py) share: their
start, their rescans, which processes they look at, and attaching one file's uprobes with a pause after a failure.

Everything here blocks (perf_event_open, /proc reads): the source runs it in a worker thread.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from ...errors import ProbeUnavailable
from . import _libbpf
from .loader import ProbeSet
from .proc_maps import Mapping
from .tls_libs import rescan

__all__ = ["UprobeAttacher", "RETRY_FAILED_S"]

log = logging.getLogger(__name__)

RETRY_FAILED_S = 60.0  # a file that failed to attach is tried again after this long


class UprobeAttacher:
    """Start-up, rescans and per-file attaching of one set of uprobe programs; subclasses say what a process runs."""

    what = ""  # the probes' name in messages ("TLS", "Python context")

    def __init__(self, probes: ProbeSet, own_pid: int, allowed: frozenset[int] | None = None) -> None:
        self.probes = probes
        self.own_pid = own_pid
        self.allowed = allowed
        self._failed: dict[tuple[int, int], tuple[float, str]] = {}  # file key -> (when, why)
        self._programs: dict[str, int] = {}
        self.attach_errors = 0
        self.scan_errors = 0  # processes whose maps could not be read (gone meanwhile, permission)
        self.scans = 0
        self._closed = False

    # -- what a subclass says ------------------------------------------------------------------------------------

    def programs_needed(self) -> set[str]:
        """The uprobe programs the probe objects must offer."""
        raise NotImplementedError

    def known_pids(self) -> Iterable[int]:
        """The processes something is kept for."""
        raise NotImplementedError

    def scan_pid(self, pid: int, maps: list[Mapping] | None = None) -> None:
        """Look at one process's mappings now (after an exec, or on a rescan); `maps` when already read."""
        raise NotImplementedError

    def forget(self, pid: int) -> None:
        """The process is gone: what only it needed goes."""
        raise NotImplementedError

    def attach_fixed(self) -> None:
        """Attach what is kept whatever the processes run (nothing unless a subclass says so)."""

    def status(self) -> dict[str, Any]:
        """What is attached where and what went wrong (at least attach_errors and attach_failures)."""
        raise NotImplementedError

    def close(self) -> None:
        """Detach everything."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------------------------

    def start(self, scan: bool = True) -> None:
        """Check the programs are there, then attach to what every traced process runs now (unless not `scan`: the
        caller scans them for every attacher at once)."""
        self._programs = self.probes.uprobe_programs()
        missing = self.programs_needed() - self._programs.keys()
        if missing:
            raise ProbeUnavailable(f"the probe objects lack the {self.what} programs {', '.join(sorted(missing))}",
                                   "rebuild the probes from the bpf/ sources of this version")
        self.attach_fixed()
        if scan:
            self.scan_all()

    def scan_all(self) -> None:
        """Rescan every traced process: attach what is new, forget the processes gone."""
        if self._closed:
            return
        self.scans += 1
        rescan(list(self.known_pids()), self.allowed, self.own_pid, self.forget, self.scan_pid)

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    def traces(self, pid: int) -> bool:
        """Whether `pid` is one to look at (not the agent, on the allow-list, attacher open)."""
        return not self._closed and pid != self.own_pid and (self.allowed is None or pid in self.allowed)

    def attach_links(self, key: tuple[int, int], open_path: str, path: str,
                     points: Iterable[tuple[str, int, bool]]) -> list[int] | None:
        """Attach (program, file offset, is a return probe) to the file; None, all undone, when one fails (counted,
        and the file left alone for RETRY_FAILED_S) or the file went away meanwhile."""
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_S:
            return None
        lib = _libbpf.libbpf()
        links: list[int] = []
        try:
            for program, offset, ret in points:
                links.append(lib.attach_uprobe(self._programs[program], open_path, offset, retprobe=ret))
        except ProbeUnavailable as e:
            destroy_links(links)
            if not os.path.exists(open_path):
                # The process it was reached through exited between its scan and the attach: nothing failed, and the
                # file stays open to the next process that maps it (its own /proc/<pid>/root path).
                log.debug("%s probes not attached to %s: its process exited meanwhile", self.what, path)
                return None
            self.attach_errors += 1
            self._failed[key] = (time.monotonic(), e.reason)
            log.warning("cannot attach the %s probes to %s: %s", self.what, path, e.reason)
            return None
        self._failed.pop(key, None)
        return links

    def attach_failures(self, most: int) -> list[str]:
        """Why attaching failed, each reason once, at most `most`."""
        return sorted({why for _, why in self._failed.values()})[:most]


def destroy_links(links: list[int]) -> None:
    """Detach every link in `links`, emptying it."""
    lib = _libbpf.libbpf()
    while links:
        lib.lib.bpf_link__destroy(links.pop())
