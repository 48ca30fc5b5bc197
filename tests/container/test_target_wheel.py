"""scripts/target-wheel.sh: helix-edge's wheel for an architecture, with the accelerator compiled for it.

The arm64 wheel is cross-compiled on an amd64 machine (Debian's gcc-aarch64-linux-gnu and the target's CPython
headers, docs/container.md): its compiled modules must be aarch64 ELF files named for aarch64's CPython, the wheel
tagged for linux_aarch64, and its manifest must list every C extension (edge/accel.py C_EXTENSIONS). HELIX_ACCEL_BUILD=0 still makes the pure
wheel. Minutes of mypyc: slow; skipped where the cross compiler or apt-get is missing, a failure under CI.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge import accel

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "target-wheel.sh"
EM_AARCH64 = 183


def _build(tmp_path: Path, arch: str, env: dict[str, str] | None = None) -> Path:
    proc = subprocess.run(["sh", str(SCRIPT), arch, str(tmp_path), sys.executable], capture_output=True, text=True,
                          timeout=1700, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-4000:]
    (wheel,) = tmp_path.glob("helix_edge-*.whl")
    return wheel


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_arm64_wheel_carries_the_accelerator_cross_compiled_for_aarch64(tmp_path: Path) -> None:
    if os.uname().machine != "x86_64" or shutil.which("aarch64-linux-gnu-gcc") is None or os.geteuid() != 0:
        msg = "needs an amd64 machine, root (apt-get download) and gcc-aarch64-linux-gnu (scripts/setup.sh)"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(msg)
        pytest.skip(msg)
    wheel = _build(tmp_path, "arm64")
    assert wheel.name.endswith("-cp311-cp311-linux_aarch64.whl")
    with zipfile.ZipFile(wheel) as z:
        sos = [n for n in z.namelist() if n.endswith(".so")]
        manifest = json.loads(z.read("edge/accel_manifest.json"))
        machines = {n: struct.unpack_from("<H", z.read(n)[:20], 18)[0] for n in sos}
    for name in accel.C_EXTENSIONS:
        assert name.replace(".", "/") + ".cpython-311-aarch64-linux-gnu.so" in sos
    assert "edge/sources/ebpf/spans/http.cpython-311-aarch64-linux-gnu.so" in sos
    assert all(n.endswith(".cpython-311-aarch64-linux-gnu.so") for n in sos), sos
    assert set(machines.values()) == {EM_AARCH64}, machines
    assert sorted(manifest["c_sources"]) == sorted(src for src, _ in accel.C_EXTENSIONS.values())
    assert len(manifest["sources"]) == len(accel.MODULES)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_accel_build_off_makes_the_pure_wheel(tmp_path: Path) -> None:
    wheel = _build(tmp_path, "arm64", {"HELIX_ACCEL_BUILD": "0"})
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert not [n for n in names if n.endswith(".so")] and "edge/accel_manifest.json" not in names
    assert any(n.endswith("/io_compat.bpf.o") for n in names)
