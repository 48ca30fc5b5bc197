"""The shared periodic pass: one read of a process's mappings for every attacher, and only for processes that are new,
or whose stamp moved (a dlopen), or on the full pass; exits are forgotten. Real processes, real /proc."""
from __future__ import annotations

import ctypes.util
import subprocess
import sys
from collections.abc import Iterator

import pytest

from edge.sources.ebpf import rescan as rescan_mod
from edge.sources.ebpf.proc_maps import Mapping, read_maps, read_stamp
from edge.sources.ebpf.rescan import FULL_EVERY, Rescanner
from edge.sources.ebpf.uprobe_attach import UprobeAttacher

# A process that maps no libssl until told to dlopen one (what an exec event does not announce).
LATE_DLOPEN = r"""
import ctypes, sys
print("ready", flush=True)
for line in sys.stdin:
    ctypes.CDLL(line.strip())
    print("loaded", flush=True)
"""


class _Recording(UprobeAttacher):
    """An attacher that records what it is handed instead of attaching."""

    def __init__(self) -> None:
        super().__init__(None, own_pid=0)  # type: ignore[arg-type]
        self.scanned: list[tuple[int, list[Mapping] | None]] = []
        self.forgotten: list[int] = []
        self.known: set[int] = set()

    def known_pids(self) -> set[int]:
        return set(self.known)

    def scan_pid(self, pid: int, maps: list[Mapping] | None = None) -> None:
        self.scanned.append((pid, maps))
        self.known.add(pid)

    def forget(self, pid: int) -> None:
        self.forgotten.append(pid)
        self.known.discard(pid)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", LATE_DLOPEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait(5)


def _libssl() -> str:
    name = ctypes.util.find_library("ssl")
    if name is None:
        pytest.skip("no libssl on this host")
    return name


def test_one_read_for_every_attacher_then_only_what_changed(child: subprocess.Popen[str]) -> None:
    tls, py = _Recording(), _Recording()
    r = Rescanner(own_pid=0)
    allowed = frozenset({child.pid})
    r.rescan([tls, py], allowed, full=True)
    assert [p for p, _ in tls.scanned] == [child.pid] and tls.scanned == py.scanned
    assert tls.scanned[0][1] is py.scanned[0][1]  # the same read, handed to both
    assert not any("libssl" in m.path for m in tls.scanned[0][1] or [])

    r.rescan([tls, py], allowed)  # nothing moved: the mappings are not read again
    assert len(tls.scanned) == 1 and r.stats.processes_unchanged == 1

    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(_libssl() + "\n")
    child.stdin.flush()
    assert child.stdout.readline() == "loaded\n"
    r.rescan([tls, py], allowed)  # the dlopen grew the address space: read again, and libssl is there
    assert len(tls.scanned) == 2 and any("libssl" in m.path for m in tls.scanned[1][1] or [])

    child.kill()
    child.wait(5)
    r.rescan([tls, py], allowed)  # on the allow-list still: handed no mappings, the attacher finds it gone
    assert tls.scanned[-1] == (child.pid, None)
    r.rescan([tls, py], None)  # every process of the host: it is not among them any more
    assert child.pid in tls.forgotten and child.pid in py.forgotten


def test_the_full_pass_reads_every_process_whatever_its_stamp(child: subprocess.Popen[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # a stamp that never moves stands for the change it cannot see (a dlopen and an munmap of one size)
    monkeypatch.setattr(rescan_mod, "read_stamp", lambda pid: (1, 1))
    tls = _Recording()
    r = Rescanner(own_pid=0)
    allowed = frozenset({child.pid})
    for _ in range(FULL_EVERY + 1):
        r.rescan([tls], allowed)
    assert len(tls.scanned) == 2 and r.stats.full_passes == 2  # the first pass and the FULL_EVERY-th


def test_the_stamp_and_the_maps_of_a_process() -> None:
    import os
    start, size = read_stamp(os.getpid()) or (0, 0)
    assert start > 0 and size > 0
    maps = read_maps(os.getpid())
    assert any(m.executable and m.offset == 0 and os.path.samefile(m.path, sys.executable) for m in maps) or any(
        "libpython" in m.path for m in maps)
    assert read_stamp(999_999_999) is None
