"""The TLS uprobes (bpf/tls.bpf.h) attached per library file, not per process.

A uprobe on a file fires in every process that maps it, now or later, so each distinct OpenSSL file (by device and
inode; a container's libssl is another file than the host's) is attached once, when a traced process is first seen
mapping it (at start, after an exec, on the periodic rescan that catches libraries loaded later with dlopen:
rescan.py), and detached when no traced process maps it any more. The host's own libssl.so.* stays attached for
the agent's life: a uprobe costs nothing where the file is not mapped, and a process that loads it later is then
traced from its first call instead of from the next rescan. Binaries that link OpenSSL statically with its symbols
(Node.js) are attached like a library.

Everything here blocks (file reads, ELF parsing, perf_event_open): the source runs it in a worker thread, one call at
a time. A file that changes, vanishes or fails to attach is counted and reported, never fatal.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .loader import ProbeSet
from .proc_maps import Mapping
from .tls_libs import Catalog, ProcessTls, TlsCode, host_openssl_files, scan_process
from .uprobe_attach import UprobeAttacher, destroy_links

__all__ = ["TlsAttacher", "ATTACH_POINTS", "AttachedFile"]

log = logging.getLogger(__name__)

# OpenSSL function -> (entry program, return program): bpf/tls.bpf.h.
ATTACH_POINTS: dict[str, tuple[str, str | None]] = {
    "SSL_read": ("tls_read_enter", "tls_return"),
    "SSL_write": ("tls_write_enter", "tls_return"),
    "SSL_read_ex": ("tls_read_ex_enter", "tls_return"),
    "SSL_write_ex": ("tls_write_ex_enter", "tls_return"),
    "SSL_do_handshake": ("tls_handshake_enter", "tls_return"),
    "SSL_connect": ("tls_handshake_enter", "tls_return"),
    "SSL_accept": ("tls_handshake_enter", "tls_return"),
    "SSL_set_fd": ("tls_set_fd", None),
    "SSL_set_rfd": ("tls_set_fd", None),
    "SSL_set_wfd": ("tls_set_fd", None),
    "SSL_free": ("tls_free", None),
}
_NAMES_SHOWN = 10


@dataclass(slots=True)
class AttachedFile:
    """One OpenSSL file with the probes on it."""

    key: tuple[int, int]  # (st_dev, st_ino)
    path: str  # as processes see it
    stack: str
    functions: tuple[str, ...]
    links: list[int]
    pinned: bool = False  # the host's own libssl: kept for the agent's life
    pids: set[int] = field(default_factory=set)


class TlsAttacher(UprobeAttacher):
    """Keeps the TLS uprobes on exactly the OpenSSL files traced processes map (and the host's own libssl)."""

    what = "TLS"

    def __init__(self, probes: ProbeSet, own_pid: int, allowed: frozenset[int] | None = None) -> None:
        super().__init__(probes, own_pid, allowed)
        self.catalog = Catalog()
        self.files: dict[tuple[int, int], AttachedFile] = {}
        self._by_pid: dict[int, set[tuple[int, int]]] = {}
        self._unreadable: dict[int, tuple[str, tuple[TlsCode, ...]]] = {}  # pid -> (comm, codes)

    def programs_needed(self) -> set[str]:
        """Every entry and return program of ATTACH_POINTS."""
        return {p for pair in ATTACH_POINTS.values() for p in pair if p}

    def attach_fixed(self) -> None:
        """The host's own libssl, kept for the agent's life."""
        for path in host_openssl_files():
            hit = self.catalog.classify(path, path, executable=False)
            if hit is not None and hit[1].readable:
                f = self._attach(hit[0], path, hit[1])
                if f is not None:
                    f.pinned = True

    # -- processes ---------------------------------------------------------------------------------------------

    def known_pids(self) -> Iterable[int]:
        """Processes mapping an attached file or using TLS the probes cannot read."""
        return self._by_pid.keys() | self._unreadable.keys()

    def scan_pid(self, pid: int, maps: list[Mapping] | None = None) -> None:
        """Look at one process's mappings now (after an exec, or on a rescan); `maps` when already read."""
        if not self.traces(pid):
            return
        found = scan_process(pid, self.catalog, maps)
        if found.error:
            self.scan_errors += 1
            self.forget(pid)
            return
        self._apply(found)

    def forget(self, pid: int) -> None:
        """The process is gone: files only it mapped are detached."""
        self._unreadable.pop(pid, None)
        for key in self._by_pid.pop(pid, set()):
            f = self.files.get(key)
            if f is None:
                continue
            f.pids.discard(pid)
            if not f.pids and not f.pinned:
                self._detach(f)

    def _apply(self, found: ProcessTls) -> None:
        pid = found.pid
        before = self._by_pid.get(pid, set())
        now: set[tuple[int, int]] = set()
        for key, (open_path, code) in found.readable.items():
            f = self.files.get(key) or self._attach(key, open_path, code)
            if f is not None:
                f.pids.add(pid)
                now.add(key)
        self._by_pid[pid] = now
        for key in before - now:
            f = self.files.get(key)
            if f is not None:
                f.pids.discard(pid)
                if not f.pids and not f.pinned:
                    self._detach(f)
        if found.unreadable:
            codes = tuple(found.unreadable)
            if self._unreadable.get(pid, ("", ()))[1] != codes:
                log.info("process %s (pid %d) uses TLS the probes cannot read: %s", found.comm, pid,
                         ", ".join(sorted({f"{c.stack} ({c.path})" for c in codes})))
            self._unreadable[pid] = (found.comm, codes)
        else:
            self._unreadable.pop(pid, None)

    # -- attaching -----------------------------------------------------------------------------------------------

    def _attach(self, key: tuple[int, int], open_path: str, code: TlsCode) -> AttachedFile | None:
        points = []
        for func, offset in sorted(code.functions.items()):
            entry, ret = ATTACH_POINTS[func]
            points.append((entry, offset, False))
            if ret is not None:
                points.append((ret, offset, True))
        links = self.attach_links(key, open_path, code.path, points)
        if links is None:
            return None
        f = AttachedFile(key, code.path, code.stack, tuple(sorted(code.functions)), links)
        self.files[key] = f
        log.info("TLS probes attached to %s (%s, %d functions)", code.path, code.stack, len(code.functions))
        return f

    def _detach(self, f: AttachedFile, why: str = "no traced process maps it") -> None:
        destroy_links(f.links)
        self.files.pop(f.key, None)
        if why:
            log.info("TLS probes detached from %s: %s", f.path, why)

    def close(self) -> None:
        """Detach everything."""
        self._closed = True
        for f in list(self.files.values()):
            self._detach(f, "")
        self._by_pid.clear()

    # -- reporting -----------------------------------------------------------------------------------------------

    def unreadable(self) -> dict[str, list[str]]:
        """Processes using TLS the probes cannot read, by stack: ["comm (pid)", ...]."""
        out: dict[str, list[str]] = {}
        for pid, (comm, codes) in sorted(self._unreadable.items()):
            # curl maps GnuTLS through a dependency but speaks OpenSSL: such a process is named apart, as maybe read
            beside = " beside OpenSSL read" if self._by_pid.get(pid) else ""
            for stack in sorted({c.stack for c in codes}):
                out.setdefault(stack + beside, []).append(f"{comm} ({pid})")
        return out

    def status(self) -> dict[str, Any]:
        """What is attached where, what cannot be read, and what went wrong."""
        return {
            "libraries": [{"path": f.path, "stack": f.stack, "processes": len(f.pids), "pinned": f.pinned,
                           "functions": len(f.functions)} for f in self.files.values()],
            "unreadable": {stack: {"processes": len(names), "names": names[:_NAMES_SHOWN]}
                           for stack, names in self.unreadable().items()},
            "attach_errors": self.attach_errors,
            "attach_failures": self.attach_failures(_NAMES_SHOWN),
            "scan_errors": self.scan_errors,
            "file_errors": self.catalog.errors,
            "scans": self.scans,
        }
