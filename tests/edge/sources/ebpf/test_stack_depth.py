"""Every probe program's combined call stack stays within 512 bytes as kernels before 6.x's smaller rounding count it.

Kernel 6.1 rounds each frame up to 32 bytes and refuses a program whose deepest call chain sums above 512 ("combined
stack size of 2 calls is 544. Too large"); this machine's newer kernel loads the same object, so only the kernel
matrix caught it. Counted conservatively from the objects: each program's frame plus the largest subprogram's."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

OBJECTS = Path(__file__).resolve().parents[4] / "edge" / "sources" / "ebpf" / "objects"
_FUNC = re.compile(r"^[0-9a-f]+ <([A-Za-z_][A-Za-z_0-9]*)>:")
_SLOT = re.compile(r"r10 - (\d+)")


def _frames(obj: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(program -> frame bytes, subprogram -> frame bytes), from the deepest r10 offset each function touches."""
    tool = shutil.which("llvm-objdump")
    if tool is None:
        pytest.fail("llvm-objdump (Debian package llvm) is needed to check the probes' stack depth")
    text = subprocess.run([tool, "-d", "--no-show-raw-insn", str(obj)], check=True, capture_output=True,
                          text=True).stdout
    programs: dict[str, int] = {}
    subprograms: dict[str, int] = {}
    section = ""
    name = ""
    for line in text.splitlines():
        if line.startswith("Disassembly of section "):
            section = line[len("Disassembly of section "):].rstrip(":")
            continue
        m = _FUNC.match(line)
        if m and not m.group(1).startswith("LBB"):
            name = m.group(1)
            (subprograms if section == ".text" else programs)[name] = 0
            continue
        s = _SLOT.search(line)
        if s and name:
            table = subprograms if section == ".text" else programs
            table[name] = max(table[name], int(s.group(1)))
    return programs, subprograms


def _rounded(n: int) -> int:
    return max(32, (n + 31) // 32 * 32)


@pytest.mark.parametrize("name", ["io", "io_compat", "proc"])
def test_combined_stack_fits_older_kernels(name: str) -> None:
    obj = OBJECTS / f"{name}.bpf.o"
    assert obj.is_file(), f"{obj} not built (run ./scripts/setup.sh)"
    programs, subprograms = _frames(obj)
    assert programs, "no programs found in the object"
    deepest_sub = max((_rounded(n) for n in subprograms.values()), default=0)
    over = {p: _rounded(n) + deepest_sub for p, n in programs.items() if _rounded(n) + deepest_sub > 512}
    assert not over, f"combined stack above 512 bytes on kernels that round frames to 32: {over}"
