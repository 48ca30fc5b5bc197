"""The Python task-context probes (bpf/pyctx.bpf.h) on each CPython interpreter file traced processes run.

An interpreter is the file that defines both `_PyRuntime` and `PyContext_CopyCurrent`: the `python3.X` executable of a
static build (Debian's /usr/bin/python3.11) or `libpython3.X.so` of a shared one (pyenv, most venvs). Its uprobe pair
is attached once per file (by device and inode), not per process; each process running it gets an entry in the
`py_procs` map naming where its `_PyRuntime` names the thread state holding the GIL (the file's load address from
/proc/<pid>/maps: ASLR differs per process) and where a thread state holds its context and its native thread id.

Those offsets differ by CPython minor version and are only read for versions whose layout was verified
(`LAYOUTS`; docs/accuracy.md says how). Any other version, and any build with ABI flags (debug `d`, free-threaded
`t`), is reported as unsupported (status, `helix doctor`) and nothing of it is read: a wrong offset would name wrong
contexts, where none leaves the existing rules to decide.

Everything here blocks (file reads, ELF parsing, perf_event_open): the source runs it in a worker thread.
"""
from __future__ import annotations

import logging
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...errors import ProbeUnavailable
from . import _libbpf
from .elf import ElfError, read_elf
from .loader import ProbeSet
from .proc_maps import Mapping, read_maps
from .uprobe_attach import UprobeAttacher, destroy_links

__all__ = ["PyContextAttacher", "Layout", "LAYOUTS", "abi_flags", "interpreter_version"]

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Layout:
    """Where one CPython minor version keeps what the probes read."""

    holder: int  # offset in _PyRuntimeState of the field naming the thread state that holds the GIL
    context: int  # offsetof(PyThreadState, context)
    native_tid: int  # offsetof(PyThreadState, native_thread_id)


# Verified on this version's headers (offsetof) and on live interpreters (ctypes): docs/accuracy.md. 3.11 keeps the
# current thread state in the runtime (gilstate.tstate_current); 3.12 and 3.13 only in a thread-local, so the main
# interpreter's GIL's last holder (_main_interpreter._gil.last_holder), which is the caller while the GIL is held.
LAYOUTS: dict[tuple[int, int], Layout] = {
    (3, 11): Layout(holder=576, context=224, native_tid=160),
    (3, 12): Layout(holder=77440, context=208, native_tid=144),
    (3, 13): Layout(holder=96112, context=208, native_tid=160),
}

ENTRY, RETURN = "py_copy_enter", "py_copy_return"
_FUNCTION = "PyContext_CopyCurrent"
_RUNTIME = "_PyRuntime"
_NAME = re.compile(r"^(?:lib)?python(\d+)\.(\d+)([a-z]*)")  # python3.11, python3.13t, libpython3.11.so.1.0
_PROC = struct.Struct("=QII")  # bpf/io.h struct py_proc
_U32 = struct.Struct("=I")
_CACHE_MAX = 256
_NAMES_SHOWN = 10


def interpreter_version(path: str) -> tuple[int, int] | None:
    """The CPython version a file's name says it is (python3.11, libpython3.11.so.1.0), None for other names."""
    m = _NAME.match(os.path.basename(path))
    return (int(m.group(1)), int(m.group(2))) if m else None


def abi_flags(path: str) -> str:
    """The ABI flags an interpreter file's name carries (`d` debug, `t` free-threaded), '' for a default build."""
    m = _NAME.match(os.path.basename(path))
    return m.group(3) if m else ""


@dataclass(slots=True, frozen=True)
class _Code:
    """What an interpreter file offers: where to attach, and where its runtime state sits before relocation."""

    version: tuple[int, int]
    flags: str  # ABI flags: their layouts differ and none is verified
    copy_offset: int  # file offset of PyContext_CopyCurrent
    runtime: int  # address of _PyRuntime in a process that maps the file's first byte at 0
    relocated: bool = True  # False: a fixed-address executable, its addresses are final

    def runtime_at(self, mapped_at: int) -> int:
        """Address of _PyRuntime in a process that maps the file's first byte at `mapped_at`."""
        return self.runtime + mapped_at if self.relocated else self.runtime


@dataclass(slots=True)
class _Attached:
    key: tuple[int, int]
    path: str
    version: tuple[int, int]
    links: list[int]
    pids: set[int] = field(default_factory=set)


class PyContextAttacher(UprobeAttacher):
    """Keeps the context probes on the interpreter files traced processes run, and their per-process entries."""

    what = "Python context"

    def __init__(self, probes: ProbeSet, own_pid: int, allowed: frozenset[int] | None = None) -> None:
        super().__init__(probes, own_pid, allowed)
        self.files: dict[tuple[int, int], _Attached] = {}
        self._by_pid: dict[int, tuple[int, int]] = {}
        self._unsupported: dict[int, tuple[str, str]] = {}  # pid -> (comm, version)
        self._codes: OrderedDict[tuple[int, int, int, int], _Code | None] = OrderedDict()
        self.file_errors = 0

    def programs_needed(self) -> set[str]:
        """The uprobe pair on PyContext_CopyCurrent."""
        return {ENTRY, RETURN}

    def known_pids(self) -> Iterable[int]:
        """Processes with an entry, or running an unsupported version."""
        return self._by_pid.keys() | self._unsupported.keys()

    def scan_pid(self, pid: int, maps: list[Mapping] | None = None) -> None:
        """Look at one process's mappings now (after an exec, or on a rescan); `maps` when already read."""
        if not self.traces(pid):
            return
        try:
            found = _interpreter_mapping(pid, read_maps(pid) if maps is None else maps)
        except OSError:
            self.forget(pid)
            if os.path.exists(f"/proc/{pid}"):
                self.scan_errors += 1
            return
        if found is None:
            self.forget(pid)
            return
        path, open_path, mapped_at = found
        code, key = self._classify(open_path, path)
        if code is None or key is None:
            self.forget(pid)
            return
        layout = None if code.flags else LAYOUTS.get(code.version)
        if layout is None:
            self.forget(pid)
            self._unsupported[pid] = (_comm(pid), "%d.%d%s" % (*code.version, code.flags))
            return
        f = self.files.get(key) or self._attach(key, open_path, path, code)
        if f is None:
            return
        if self._by_pid.get(pid) not in (None, key):
            self.forget(pid)  # an exec into another interpreter
        f.pids.add(pid)
        self._by_pid[pid] = key
        runtime = code.runtime_at(mapped_at)
        lib = _libbpf.libbpf()
        lib.update(self.probes.map_fd("py_procs"), _U32.pack(pid),
                   _PROC.pack(runtime + layout.holder, layout.context, layout.native_tid))

    def forget(self, pid: int) -> None:
        """The process is gone (or runs no interpreter any more): its entry goes, and files only it ran detach."""
        self._unsupported.pop(pid, None)
        key = self._by_pid.pop(pid, None)
        if key is None:
            return
        try:
            _libbpf.libbpf().delete(self.probes.map_fd("py_procs"), _U32.pack(pid))
        except ProbeUnavailable:
            pass  # the probes were closed meanwhile
        f = self.files.get(key)
        if f is not None:
            f.pids.discard(pid)
            if not f.pids:
                self._detach(f)

    def _classify(self, open_path: str, path: str) -> tuple[_Code | None, tuple[int, int] | None]:
        try:
            st = os.stat(open_path)
        except OSError:
            return None, None
        key = (st.st_dev, st.st_ino)
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if ident in self._codes:
            self._codes.move_to_end(ident)
            return self._codes[ident], key
        code = self._read_code(open_path, path)
        self._codes[ident] = code
        if len(self._codes) > _CACHE_MAX:
            self._codes.popitem(last=False)
        return code, key

    def _read_code(self, open_path: str, path: str) -> _Code | None:
        version = interpreter_version(path)
        if version is None:
            return None
        try:
            elf, reader = read_elf(open_path)
        except (ElfError, OSError):
            self.file_errors += 1
            return None
        try:
            funcs = elf.functions([_FUNCTION])
            data = elf.data_symbols([_RUNTIME])
            if _FUNCTION not in funcs or _RUNTIME not in data:
                return None  # an executable linking libpython: the library is the interpreter
            bias = elf.load_bias(0)  # 0 for a fixed-address executable
            fixed = bias == 0 and elf.load_bias(1) == 0
            return _Code(version, abi_flags(path), funcs[_FUNCTION], data[_RUNTIME] + bias, relocated=not fixed)
        except (ElfError, OSError, struct.error, ValueError):
            self.file_errors += 1
            return None
        finally:
            reader.close()

    def _attach(self, key: tuple[int, int], open_path: str, path: str, code: _Code) -> _Attached | None:
        links = self.attach_links(key, open_path, path,
                                  [(ENTRY, code.copy_offset, False), (RETURN, code.copy_offset, True)])
        if links is None:
            return None
        f = _Attached(key, path, code.version, links)
        self.files[key] = f
        log.info("Python context probes attached to %s (CPython %d.%d)", path, *code.version)
        return f

    def _detach(self, f: _Attached) -> None:
        destroy_links(f.links)
        self.files.pop(f.key, None)

    def close(self) -> None:
        """Detach everything."""
        self._closed = True
        for f in list(self.files.values()):
            self._detach(f)
        self._by_pid.clear()

    def status(self) -> dict[str, Any]:
        """Interpreters attached, processes whose interpreter version is unsupported, and what went wrong."""
        unsupported: dict[str, list[str]] = {}
        for pid, (comm, version) in sorted(self._unsupported.items()):
            unsupported.setdefault(version, []).append(f"{comm} ({pid})")
        return {
            "interpreters": [{"path": f.path, "version": "%d.%d" % f.version, "processes": len(f.pids)}
                             for f in self.files.values()],
            "supported_versions": ["%d.%d" % v for v in sorted(LAYOUTS)],
            "unsupported": {v: {"processes": len(names), "names": names[:_NAMES_SHOWN]}
                            for v, names in unsupported.items()},
            "attach_errors": self.attach_errors,
            "attach_failures": self.attach_failures(_NAMES_SHOWN),
            "scan_errors": self.scan_errors,
            "file_errors": self.file_errors,
            "scans": self.scans,
            **self.probes.pyctx_counts(),
        }


def _interpreter_mapping(pid: int, maps: list[Mapping]) -> tuple[str, str, int] | None:
    """(path, path to open, where its offset 0 is mapped) of the first file the process maps whose name is a
    CPython interpreter's and that holds the interpreter (libpython before a python executable linking it)."""
    first: dict[str, int] = {}
    for m in maps:
        if m.offset == 0 and m.path not in first and not m.path.endswith(" (deleted)") \
                and interpreter_version(m.path) is not None:
            first[m.path] = m.start
    libs = [p for p in first if os.path.basename(p).startswith("lib")]
    for path in libs + [p for p in first if p not in libs]:
        return path, f"/proc/{pid}/root{path}", first[path]
    return None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""
