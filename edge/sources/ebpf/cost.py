"""What the probes cost in the kernel: the kernel's own run-time statistics per BPF program.

With statistics on, the kernel times every run of every program (`run_time_ns`, `run_cnt` in bpf_prog_info).
`run_stats()` turns them on for a window through a BPF_ENABLE_STATS fd instead of the
`kernel.bpf_stats_enabled` sysctl: the kernel counts the holders, so another user's setting is left alone and a
process that dies leaves nothing switched on. `agent_programs()` finds the programs a running agent holds
(its /proc/<pid>/fdinfo names their ids), so that `helix doctor --cost` can measure a live node from outside.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import _libbpf

__all__ = ["ProgramCost", "run_stats", "stats_sysctl", "cost_between", "agent_programs", "program_infos",
           "measure"]

_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
# The kernel truncates program names to BPF_OBJ_NAME_LEN - 1 characters.
NAME_LEN = 15


@dataclass(slots=True, frozen=True)
class ProgramCost:
    """One program over a window: how often it ran and the kernel time it took."""

    id: int
    name: str
    runs: int
    run_time_ns: int
    xlated_insns: int

    @property
    def ns_per_run(self) -> float:
        """Mean kernel time of one run (0 when it did not run)."""
        return self.run_time_ns / self.runs if self.runs else 0.0


def stats_sysctl() -> int | None:
    """kernel.bpf_stats_enabled as it is now (None when this kernel has no such sysctl)."""
    try:
        return int(_SYSCTL.read_text().strip() or 0)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def run_stats() -> Iterator[None]:
    """Run-time statistics on for the duration of the block (raises ProbeUnavailable where not permitted)."""
    lib = _libbpf.libbpf()
    fd = lib.enable_stats()
    try:
        yield
    finally:
        os.close(fd)


def cost_between(before: Mapping[int, _libbpf.ProgInfo], after: Mapping[int, _libbpf.ProgInfo]) -> list[ProgramCost]:
    """Per-program runs and run time between two snapshots (by program id), busiest first."""
    out = []
    for prog_id, a in after.items():
        b = before.get(prog_id)
        runs = a.run_cnt - (b.run_cnt if b else 0)
        out.append(ProgramCost(prog_id, a.name, runs, a.run_time_ns - (b.run_time_ns if b else 0), a.xlated_insns))
    return sorted(out, key=lambda c: (-c.run_time_ns, c.name))


def program_infos(prog_ids: Iterable[int]) -> dict[int, _libbpf.ProgInfo]:
    """bpf_prog_info of programs by id (programs unloaded meanwhile are left out)."""
    lib = _libbpf.libbpf()
    out = {}
    for prog_id in prog_ids:
        try:
            fd = lib.prog_fd_by_id(prog_id)
        except _libbpf.LibbpfError:
            continue
        try:
            out[prog_id] = lib.prog_info(fd)
        finally:
            os.close(fd)
    return out


def _prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds, through program or link fds (fdinfo's `prog_id:` line)."""
    ids: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return ids
    for fd in fds:
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target not in ("anon_inode:bpf-prog", "anon_inode:bpf_link"):
            continue
        try:
            for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            continue
    return ids


def agent_programs(names: Iterable[str], pid: int | None = None) -> dict[int, dict[int, _libbpf.ProgInfo]]:
    """Processes holding the probes (most of the programs named `names`), each with its programs by id.

    With `pid`, only that process is looked at. Programs of other names held by the same process are left out.
    """
    wanted = {n[:NAME_LEN] for n in names}
    if pid is not None:
        pids = [pid]
    else:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid()]
    found: dict[int, dict[int, _libbpf.ProgInfo]] = {}
    for p in pids:
        ids = _prog_ids_of(p)
        if not ids:
            continue
        infos = {i: info for i, info in program_infos(ids).items() if info.name in wanted}
        # Half the names at least: a process that holds one program of the same name is not an agent.
        if infos and len({i.name for i in infos.values()}) * 2 >= len(wanted):
            found[p] = infos
    return found


def measure(prog_ids: Iterable[int], seconds: float) -> tuple[list[ProgramCost], float]:
    """Statistics on for `seconds`: each program's runs and run time over that window, and the window's length."""
    ids = list(prog_ids)
    with run_stats():
        before = program_infos(ids)
        t0 = time.monotonic()
        time.sleep(seconds)
        after = program_infos(ids)
        elapsed = time.monotonic() - t0
    return cost_between(before, after), elapsed
