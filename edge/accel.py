"""Which implementation decodes kernel records, builds spans, encodes and decodes uplink batches and writes the
gateway's OTLP requests: the mypyc-compiled modules or the pure-Python ones.

The pure-Python modules are the reference; the build (setup.py) may compile the same files with mypyc into C
extensions beside them, which Python then imports first. They are used only when all of them were compiled from
exactly the sources installed (the build's manifest holds their fingerprints): after an edit, a partial build or with
HELIX_ACCEL=0 the pure-Python modules run. Both behave alike; the tests run the span and parser checks on both.

Hand-written C extensions (C_EXTENSIONS) go further for the hottest per-record work; each speeds up one function of a
module that keeps its Python code as the reference and the fallback (c_module() hands them out). They run when built
from the installed source, whichever of the above runs; HELIX_ACCEL=0 or HELIX_ACCEL_C=0 turns them off.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["MODULES", "C_EXTENSIONS", "Status", "status", "c_status", "c_module", "install", "implementations",
           "modules"]

# Compiled together (setup.py ACCEL_MODULES lists their files): compiled code reaches the others' classes directly,
# so they are used all together or not at all.
MODULES = (
    "edge.sources.ebpf.events",
    "edge.sources.ebpf.decode",
    "edge.protocols.http1",
    "edge.protocols.http2",
    "edge.sources.ebpf.spans",
    "edge.sources.ebpf.spans.tables",
    "edge.sources.ebpf.spans.causes",
    "edge.sources.ebpf.spans.tasks",
    "edge.sources.ebpf.spans.http",
    "edge.sources.ebpf.spans.http2",
    "edge.sources.ebpf.spans.mqtt",
    "edge.sources.ebpf.spans.tcp",
    "edge.sources.ebpf.spans.file_io",
    "edge.codec.otlp_writer",
    "edge.propagation",
    "uplink.wire.cbor_writer",
    "uplink.wire.values",
    "uplink.wire.columnar",
    "uplink.wire.columnar_otlp",
)
# Hand-written C extensions (setup.py C_EXTENSIONS): module name -> source, and what each one does.
C_EXTENSIONS = {"edge.protocols._http1_heads": ("edge/protocols/_http1_heads.c", "HTTP/1 whole-head parsing"),
                "edge.sources.ebpf._records": ("edge/sources/ebpf/_records.c", "ring-buffer record decoding")}
_ROOT = Path(__file__).resolve().parent
_MANIFEST = _ROOT / "accel_manifest.json"
_OFF = "HELIX_ACCEL"
_C_OFF = "HELIX_ACCEL_C"


@dataclass(frozen=True, slots=True)
class Status:
    """Whether the compiled modules run in this process, and why (or why not)."""

    compiled: bool
    detail: str


def _source(name: str) -> Path:
    rel = _ROOT.parent / Path(*name.split("."))
    pkg = rel / "__init__.py"
    return pkg if pkg.is_file() else rel.with_suffix(".py")


def _extension(name: str) -> Path | None:
    src = _source(name)
    return _built(src.parent / ("__init__" if src.name == "__init__.py" else src.stem))


def _built(stem: Path) -> Path | None:
    """The extension module built for `stem` (a path without suffix) for this Python, if any."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = stem.with_name(stem.name + suffix)
        if path.is_file():
            return path
    return None


def fingerprint(source: bytes) -> str:
    """What the build manifest records of each compiled source (setup.py computes the same)."""
    # zlib, not hashlib: hashlib maps OpenSSL, which an agent without TLS keeps out of its memory. An edit is what
    # this detects, not an attacker: whoever can write the sources can write the compiled modules.
    return f"{zlib.crc32(source):08x}-{len(source)}"


def _check() -> Status:
    if os.environ.get(_OFF, "1") == "0":
        return Status(False, f"pure Python: the compiled modules are turned off ({_OFF}=0)")
    try:
        manifest = json.loads(_MANIFEST.read_text())
    except FileNotFoundError:
        return Status(False, "pure Python: not compiled at install (no C compiler, Python headers or mypyc then; "
                             "install python3-dev and gcc, then reinstall helix-edge)")
    except (OSError, ValueError) as e:
        return Status(False, f"pure Python: the build manifest {_MANIFEST} cannot be read ({e})")
    if manifest.get("cache_tag") != sys.implementation.cache_tag:
        return Status(False, f"pure Python: compiled for {manifest.get('cache_tag')}, this is "
                             f"{sys.implementation.cache_tag}; reinstall helix-edge")
    fingerprints: dict[str, str] = manifest.get("sources", {})
    for name in MODULES:
        src = _source(name)
        rel = src.relative_to(_ROOT.parent).as_posix()
        if _extension(name) is None:
            return Status(False, f"pure Python: {rel} has no compiled module (incomplete build); reinstall helix-edge")
        if fingerprints.get(rel) != fingerprint(src.read_bytes()):
            return Status(False, f"pure Python: {rel} changed since it was compiled; reinstall helix-edge to compile "
                                 "it again")
    return Status(True, f"compiled (mypyc {manifest.get('mypy', '?')}): record decoding, HTTP/1 and HTTP/2 "
                        "parsing, trace context, span building, OTLP request writing and uplink batch encoding and decoding "
                        "run as C extensions")


def _check_c() -> Status:
    for var in (_OFF, _C_OFF):
        if os.environ.get(var, "1") == "0":
            return Status(False, f"C extensions off ({var}=0)")
    try:
        manifest = json.loads(_MANIFEST.read_text())
    except (OSError, ValueError):
        return Status(False, "C extensions not built (no build manifest)")
    if manifest.get("cache_tag") != sys.implementation.cache_tag:
        return Status(False, f"C extensions built for {manifest.get('cache_tag')}; reinstall helix-edge")
    built: dict[str, str] = manifest.get("c_sources", {})
    for name, (src, _) in C_EXTENSIONS.items():
        if src not in built or _built(_ROOT.parent / Path(*name.split("."))) is None:
            return Status(False, f"C extensions not built ({src} did not compile); the Python parsers run")
        if built[src] != fingerprint((_ROOT.parent / src).read_bytes()):
            return Status(False, f"C extensions off: {src} changed since it was compiled; reinstall helix-edge")
    return Status(True, "C extensions: " + ", ".join(what for _, what in C_EXTENSIONS.values()))


_c_status: Status | None = None


def c_status() -> Status:
    """Whether the hand-written C extensions run in this process, and why (or why not)."""
    global _c_status
    if _c_status is None:
        _c_status = _check_c()
    return _c_status


def c_module(name: str) -> ModuleType | None:
    """The C extension `name` when it runs here, else None (its module's Python code runs instead)."""
    if name not in C_EXTENSIONS or not c_status().compiled:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class _SourceFinder:
    """Imports the accelerated modules from their .py files even where compiled ones lie beside them."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        """The pure-Python module's spec for the accelerated modules; None (the usual search) for the rest."""
        if fullname not in MODULES:
            return None
        src = _source(fullname)
        locations = [str(src.parent)] if src.name == "__init__.py" else None
        return importlib.util.spec_from_file_location(fullname, src, submodule_search_locations=locations)


_status: Status | None = None
_finder = _SourceFinder()


def status() -> Status:
    """What runs in this process (decided once, at the first import of the package)."""
    global _status
    if _status is None:
        _status = _check()
    return _status


def install() -> None:
    """Make the pure-Python modules the ones imported unless the compiled ones are complete and current."""
    if not status().compiled and _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def implementations() -> list[str]:
    """"pure", and "compiled" when the compiled modules are the ones this process runs."""
    return ["pure", "compiled"] if status().compiled else ["pure"]


_pure: dict[str, ModuleType] = {}


def modules(implementation: str) -> dict[str, ModuleType]:
    """The accelerated modules of one implementation by name; the pure ones are a private copy when compiled ones run.

    For tests and benchmarks that compare both in one process: events decoded by one copy go to that copy's builder.
    """
    if implementation == "compiled" or not status().compiled:
        if implementation == "compiled" and not status().compiled:
            raise RuntimeError(status().detail)
        return {name: importlib.import_module(name) for name in MODULES}
    if not _pure:
        saved = {name: sys.modules.pop(name) for name in MODULES if name in sys.modules}
        sys.meta_path.insert(0, _finder)
        try:
            _pure.update({name: importlib.import_module(name) for name in MODULES})
        finally:
            sys.meta_path.remove(_finder)
            for name in MODULES:
                sys.modules.pop(name, None)
            sys.modules.update(saved)
            for name, mod in saved.items():  # the parent packages' attributes, rebound by the imports above
                parent, _, child = name.rpartition(".")
                if parent in sys.modules:
                    setattr(sys.modules[parent], child, mod)
        # The pure copy is the reference the compiled modules and the C extensions are compared with.
        _pure["edge.protocols.http1"].use_c_heads(False)
        _pure["edge.sources.ebpf.decode"].use_c_records(False)
    return dict(_pure)
