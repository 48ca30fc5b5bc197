"""The MicroPython device SDK's rate under MicroPython's WebAssembly port (Node.js), for the record.

Runs bench/micropython_rate.py (traces of a root with four attributes and two children, one message per trace,
dropped by the publish hook) under MicroPython with sdk/micropython/helix_trace.py compiled by mpy-cross; the
same-run reference is the same script and module under this CPython. A real microcontroller is one to two
orders of magnitude slower than either.

    python bench/micropython_sdk.py [--traces 3000]

Last line: {"micropython_spans_per_s", "cpython_spans_per_s", "ratio", "message_bytes", "mpy_bytes"}
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import _micropython as mpy  # noqa: E402

SCRIPT = Path(__file__).with_name("micropython_rate.py")


def _rate(stdout: str) -> tuple[int, int]:
    line = next(x for x in stdout.splitlines() if x.startswith("RATE "))
    rate, _, size = (int(v) for v in line.split()[1:])
    return rate, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=3000)
    args = ap.parse_args()
    reason = mpy.missing()
    if reason:
        sys.exit(f"cannot run MicroPython here: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        compiled = mpy.compile_mpy(Path(tmp))
        micro = max(_rate(mpy.run(SCRIPT, compiled, args=(str(args.traces),)).stdout)[0] for _ in range(3))
        cpy = [_rate(subprocess.run([sys.executable, str(SCRIPT), str(args.traces)], capture_output=True, text=True,
                                    check=True, env={"PYTHONPATH": str(mpy.MODULE.parent)}).stdout)
               for _ in range(3)]
        size = compiled.stat().st_size
    print(json.dumps({"traces": args.traces, "micropython_spans_per_s": micro,
                      "cpython_spans_per_s": max(r for r, _ in cpy), "ratio": round(max(r for r, _ in cpy) / micro, 2),
                      "message_bytes": cpy[0][1], "mpy_bytes": size}))


if __name__ == "__main__":
    main()
