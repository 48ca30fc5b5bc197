"""Builds the C device SDK (sdk/c) and programs around it, for the tests and benchmarks."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDK_C = ROOT / "sdk" / "c"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
M4 = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os", "-ffunction-sections",
      "-fdata-sections"]


class BuildError(RuntimeError):
    """A compiler or linker said no; the message holds its output."""


def required_tools_missing(*tools: str) -> str:
    """A skip reason naming the missing tools, or "" when all are on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    return f"not installed: {', '.join(missing)} (scripts/setup.sh installs them)" if missing else ""


def must_run() -> bool:
    """CI (HELIX_REQUIRE_BPF=1, or CI=true) turns a missing tool into a failure instead of a skip."""
    return os.environ.get("HELIX_REQUIRE_BPF") == "1" or os.environ.get("CI") == "true"


def build(out: Path, sources: list[Path], flags: list[str] = (), libs: list[str] = (), cc: str = "gcc",
          compile_only: bool = False) -> Path:
    """Compile (and link unless compile_only) C sources with the SDK on the include path; returns `out`."""
    cmd = [cc, *WARN, f"-I{SDK_C}", *flags, *(["-c"] if compile_only else []), *map(str, sources), "-o", str(out),
           *libs]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return out


def build_m4_object(out: Path) -> Path:
    """helix_trace.c for a Cortex-M4 (hard float) at -Os with Debian's arm-none-eabi-gcc."""
    return build(out, [SDK_C / "helix_trace.c"], M4, cc="arm-none-eabi-gcc", compile_only=True)


def arm_size(obj: Path) -> dict[str, int]:
    """text, data and bss of an object, from arm-none-eabi-size (Berkeley format)."""
    r = subprocess.run(["arm-none-eabi-size", str(obj)], capture_output=True, text=True, check=True)
    text, data, bss = (int(x) for x in r.stdout.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def undefined_symbols(obj: Path) -> set[str]:
    """What the object needs from elsewhere (libc), from arm-none-eabi-nm."""
    r = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in r.stdout.splitlines() if line.strip()}


def build_mosquitto_device(out: Path) -> Path:
    """The libmosquitto example device (sdk/c/examples/mosquitto_device.c)."""
    return build(out, [SDK_C / "helix_trace.c", SDK_C / "examples" / "mosquitto_device.c"], ["-D_GNU_SOURCE", "-O2"],
                 ["-lmosquitto"])
