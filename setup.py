"""Build hooks: compile bpf/*.bpf.c into edge/sources/ebpf/objects/ as package data, and the optional accelerator.

Metadata lives in pyproject.toml; this file only adds the probe build to `build_py`, which runs for
`pip install .`, wheels and `pip install -e .` alike. Without clang, prebuilt objects already in
edge/sources/ebpf/objects/ are used as they are; with neither, the build stops with what to install.

The accelerator: mypyc compiles the record decoder, the HTTP/1 head and HTTP/2 frame parsers, the trace-context
parser, the span builder and the gateway's OTLP request writer (edge/accel.py lists them) into C extensions beside
their sources. It is optional: without mypy, a C compiler or the Python headers, or when compiling fails, the package
installs as pure Python and runs the same code uncompiled (`helix doctor` says which runs). HELIX_ACCEL_BUILD=0 skips
it. For another architecture (the arm64 images built on amd64), scripts/target-wheel.sh runs this same build with
a cross compiler and the target's headers.

Beside them, plain C99 extensions (C_EXTENSIONS) take the hottest per-record work out of the interpreter: the HTTP/1
whole-head parser and the ring-buffer record decoder. Each is optional on its own: where it does not compile, the
module it speeds up runs its Python code.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zlib
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
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


# What mypyc compiles; edge/accel.py keeps the same list (and checks the built modules against it).
ACCEL_MODULES = (
    "edge/sources/ebpf/events.py",
    "edge/sources/ebpf/decode.py",
    "edge/protocols/http1.py",
    "edge/protocols/http2.py",
    "edge/sources/ebpf/spans/__init__.py",
    "edge/sources/ebpf/spans/tables.py",
    "edge/sources/ebpf/spans/causes.py",
    "edge/sources/ebpf/spans/tasks.py",
    "edge/sources/ebpf/spans/http.py",
    "edge/sources/ebpf/spans/http2.py",
    "edge/sources/ebpf/spans/mqtt.py",
    "edge/sources/ebpf/spans/tcp.py",
    "edge/sources/ebpf/spans/file_io.py",
    "edge/codec/otlp_writer.py",
    "edge/propagation.py",
    "uplink/wire/cbor_writer.py",
    "uplink/wire/values.py",
    "uplink/wire/columnar.py",
    "uplink/wire/columnar_otlp.py",
)
ACCEL_MANIFEST = "accel_manifest.json"
# Hand-written C extensions: module name -> source; edge/accel.py keeps the same table.
C_EXTENSIONS = {"edge.protocols._http1_heads": "edge/protocols/_http1_heads.c",
                "edge.sources.ebpf._records": "edge/sources/ebpf/_records.c"}


def _skip_accel(reason: str) -> list:
    print(f"helix-edge: accelerator not built ({reason}); the pure-Python decoder and span builder will run")
    # What an earlier in-place (editable) build left would otherwise stay in use: without its manifest it is not. A
    # wheel built from this tree (the device image, the arm64 smoke test) must leave the tree's own build alone.
    if _builds_in_place():
        (ROOT / "edge" / ACCEL_MANIFEST).unlink(missing_ok=True)
    return []


def _builds_in_place() -> bool:
    """True when this run installs into the source tree (editable install, develop, build_ext --inplace)."""
    args = sys.argv[1:]
    in_place = "build_ext" in args and bool({"-i", "--inplace"} & set(args))
    return in_place or bool({"editable_wheel", "develop"} & set(args))


def _remove_stale_extensions() -> None:
    # An in-place (editable) build leaves compiled modules beside their sources; one whose source is no longer compiled
    # would still shadow it, and fail to import once the shared library it belonged to is rebuilt without it.
    keep = {ROOT / m for m in ACCEL_MODULES}
    for so in [*(ROOT / "edge").rglob("*.so"), *(ROOT / "uplink").rglob("*.so")]:
        src = so.with_name(so.name.split(".", 1)[0] + ".py")
        if src.is_file() and src not in keep:
            so.unlink()


def accel_extensions() -> list:
    """The accelerator's extension modules, or none (and why) where it cannot be built here."""
    _remove_stale_extensions()
    if os.environ.get("HELIX_ACCEL_BUILD", "1") == "0":
        return _skip_accel("HELIX_ACCEL_BUILD=0")
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return _skip_accel(f"no C compiler ({cc})")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return _skip_accel("no Python headers: Debian/Ubuntu: apt install python3-dev")
    try:
        from mypyc.build import mypycify
    except ImportError:
        return _skip_accel("mypy (mypyc) is not installed in the build environment")
    try:
        # The build environment holds only the build requirements: the runtime dependencies the compiled modules
        # import (hpack, ...) are typed as Any rather than failing the type check.
        compiled = mypycify(["--ignore-missing-imports", *ACCEL_MODULES], opt_level="3", group_name="edge.accel")
    except BaseException as e:  # noqa: BLE001 - mypyc exits on a type error: fall back, never fail the install
        return _skip_accel(f"mypyc failed: {e}")
    # -std=c99 and no intrinsics: the same source builds for the aarch64 devices.
    return [*compiled, *(Extension(name, [src], optional=True, extra_compile_args=["-std=c99", "-O2"])
                         for name, src in C_EXTENSIONS.items())]


class BuildExtOptional(build_ext):
    """build_ext that falls back to pure Python when compiling fails, and records what it compiled."""

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except BaseException as e:  # noqa: BLE001 - a compiler error must not fail the install
            _skip_accel(f"compiling failed: {e}")
            return
        # Written last, so that its presence means every module was compiled; edge/accel.py compares the sources'
        # fingerprints with it and runs the pure-Python modules once one of them changed.
        manifest = {
            "cache_tag": sys.implementation.cache_tag,
            "mypy": _mypy_version(),
            "sources": {m: _fingerprint((ROOT / m).read_bytes()) for m in ACCEL_MODULES},
            # Only the C extensions that compiled (optional=True lets build_ext go on without the others).
            "c_sources": {src: _fingerprint((ROOT / src).read_bytes()) for name, src in C_EXTENSIONS.items()
                          if Path(self.get_ext_fullpath(name)).is_file()},
        }
        out = ROOT / "edge" if self.inplace or getattr(self, "editable_mode", False) else Path(self.build_lib) / "edge"
        out.mkdir(parents=True, exist_ok=True)
        (out / ACCEL_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _fingerprint(source: bytes) -> str:
    return f"{zlib.crc32(source):08x}-{len(source)}"  # as edge/accel.py fingerprint() checks it


def _mypy_version() -> str:
    try:
        from mypy.version import __version__
    except ImportError:
        return "?"
    return __version__


setup(cmdclass={"build_py": BuildPyWithProbes, "build_ext": BuildExtOptional}, ext_modules=accel_extensions())
