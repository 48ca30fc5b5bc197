"""Which tracepoints a shared program is attached to, decided against the kernel's tracefs."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.errors import ProbeUnavailable
from edge.sources.ebpf.loader import TRACEPOINTS, also_attached


def _tracefs(root: Path, tracepoints: list[str]) -> Path:
    for tp in tracepoints:
        (root / "events" / tp).mkdir(parents=True)
    return root


_EXITS = [f"syscalls/sys_exit_{c}" for c in
          ("read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "fsync", "fdatasync")]


def test_exit_rw_serves_every_read_write_like_exit_the_doctor_checks(tmp_path: Path) -> None:
    present, missing = also_attached("exit_rw", _tracefs(tmp_path, _EXITS))
    assert missing == []
    # its own section is sys_exit_read; the others are attached by the loader
    assert sorted(present + ["syscalls/sys_exit_read"]) == sorted(_EXITS)
    assert set(_EXITS) <= set(TRACEPOINTS["io"])


def test_a_missing_optional_exit_is_skipped_not_fatal(tmp_path: Path) -> None:
    present, missing = also_attached("exit_rw", _tracefs(tmp_path, [t for t in _EXITS if "fdatasync" not in t]))
    assert missing == ["syscalls/sys_exit_fdatasync"]
    assert "syscalls/sys_exit_fdatasync" not in present and "syscalls/sys_exit_write" in present


def test_a_missing_required_exit_says_which_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ProbeUnavailable, match="sys_exit_sendto") as e:
        also_attached("exit_rw", _tracefs(tmp_path, [t for t in _EXITS if "sendto" not in t]))
    assert "CONFIG_FTRACE_SYSCALLS" in e.value.fix


def test_other_programs_attach_by_their_section_alone(tmp_path: Path) -> None:
    assert also_attached("enter_read", _tracefs(tmp_path, _EXITS)) == ([], [])
