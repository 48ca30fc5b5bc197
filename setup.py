"""Build hook: compile bpf/*.bpf.c into edge/sources/ebpf/objects/ as package data.

Metadata lives in pyproject.toml; this file only adds the probe build to `build_py`, which runs for
`pip install .`, wheels and `pip install -e .` alike. Without clang, prebuilt objects already in
edge/sources/ebpf/objects/ are used as they are; with neither, the build stops with what to install.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BPF_DIR = ROOT / "bpf"
OBJECTS_DIR = ROOT / "edge" / "sources" / "ebpf" / "objects"
PROBES = ("io", "io_compat", "proc")  # io_compat: io without kernel sampling, for kernels before 5.17


def _have_clang() -> bool:
    return shutil.which(os.environ.get("CLANG", "clang")) is not None and shutil.which("make") is not None


def build_probes() -> list[Path]:
    """Compile the probes (or accept prebuilt ones) and return the object paths in the source tree."""
    targets = [OBJECTS_DIR / f"{name}.bpf.o" for name in PROBES]
    if (BPF_DIR / "Makefile").is_file() and _have_clang():
        subprocess.run(["make", "-C", str(BPF_DIR), "--no-print-directory"], check=True)
        OBJECTS_DIR.mkdir(parents=True, exist_ok=True)
        for name, target in zip(PROBES, targets):
            shutil.copy2(BPF_DIR / "build" / f"{name}.bpf.o", target)
        return targets
    missing = [t.name for t in targets if not t.is_file()]
    if missing:
        raise SystemExit(
            "helix-edge: cannot build the eBPF probes: clang (and make) not found, and no prebuilt objects in "
            f"{OBJECTS_DIR} ({', '.join(missing)} missing). Install clang >= 12 and make "
            "(Debian/Ubuntu: apt install clang make libbpf-dev linux-libc-dev), or copy prebuilt *.bpf.o there."
        )
    print("helix-edge: clang not found; using the prebuilt probe objects")
    return targets


class BuildPyWithProbes(build_py):
    """build_py that compiles the BPF probes first and ships them as package data."""

    def run(self) -> None:
        objects = build_probes()
        super().run()
        if not getattr(self, "editable_mode", False):
            # package_data globbing may have run before the objects existed: copy them explicitly
            dest = Path(self.build_lib) / "edge" / "sources" / "ebpf" / "objects"
            dest.mkdir(parents=True, exist_ok=True)
            for obj in objects:
                shutil.copy2(obj, dest / obj.name)


setup(cmdclass={"build_py": BuildPyWithProbes})
