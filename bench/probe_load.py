"""How long the agent takes to load and attach its probes (most of it is the kernel's verifier).

Each round loads the probe set in a fresh process, the way the agent starts, for each object set: this checkout's
objects (`io.bpf.o` with `bpf_loop`, and `io_compat.bpf.o` as kernels before 5.17 load it) and, with --reference,
the same two from another build (e.g. `make -C bpf OUT=/tmp/ref` on an older commit). The same-run reference without
--reference is a fixed calibration loop, so figures from machines of different speed compare by ratio.

    sudo .venv/bin/python bench/probe_load.py --rounds 3 [--reference /tmp/ref]

The last line is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge.sources.ebpf.loader import objects_dir

_CHILD = """
import json, time
from edge.sources.ebpf.loader import open_probes
t = time.monotonic()
p = open_probes(None)
took = time.monotonic() - t
print(json.dumps({"s": took, "programs": len(p.attached_programs), "tracepoints": p.attached_tracepoints,
                  "objects": p.object_files}))
p.close()
"""


def _calibration_s() -> float:
    t = time.perf_counter()
    x = 0
    for i in range(3_000_000):
        x = (x + i * 7) % 1_000_003
    return time.perf_counter() - t


def _variant_dirs(source: Path, into: Path) -> dict[str, Path]:
    """Two directories from one build: io.bpf.o as is, and io_compat.bpf.o loaded in its place."""
    out = {}
    for variant, io_file in (("io", "io.bpf.o"), ("io_compat", "io_compat.bpf.o")):
        d = into / variant
        d.mkdir(parents=True)
        shutil.copy(source / io_file, d / "io.bpf.o")
        shutil.copy(source / "proc.bpf.o", d / "proc.bpf.o")
        out[variant] = d
    return out


def _load_once(directory: Path) -> dict[str, object]:
    env = {**os.environ, "HELIX_BPF_OBJECTS": str(directory)}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"loading {directory} failed:\n{out.stderr[-2000:]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="loads of each object set (alternated), default 3")
    ap.add_argument("--reference", type=Path, help="a directory with io.bpf.o, io_compat.bpf.o and proc.bpf.o from "
                    "another build, loaded in the same rounds")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("loading probes needs root (or CAP_BPF + CAP_PERFMON)")
    with tempfile.TemporaryDirectory(prefix="helix-probe-load-") as tmp:
        sets = {f"this/{k}": v for k, v in _variant_dirs(objects_dir(), Path(tmp) / "this").items()}
        if args.reference:
            sets |= {f"reference/{k}": v for k, v in _variant_dirs(args.reference, Path(tmp) / "ref").items()}
        times: dict[str, list[float]] = {k: [] for k in sets}
        shape: dict[str, dict[str, object]] = {}
        calib: list[float] = []
        for r in range(args.rounds):
            calib.append(_calibration_s())
            for name, d in sets.items():
                res = _load_once(d)
                times[name].append(float(res["s"]))  # type: ignore[arg-type]
                shape[name] = {"programs": res["programs"], "tracepoints": res["tracepoints"]}
                print(f"round {r + 1}/{args.rounds} {name}: {res['s']:.2f} s, {res['programs']} programs on "
                      f"{res['tracepoints']} tracepoints", flush=True)
    cal = statistics.median(calib)
    figures: dict[str, object] = {"calibration_s": round(cal, 3)}
    for name, ts in times.items():
        med = statistics.median(ts)
        figures[name] = {"median_s": round(med, 3), "min_s": round(min(ts), 3), "max_s": round(max(ts), 3),
                         "per_calibration": round(med / cal, 2), **shape[name]}
    for variant in ("io", "io_compat"):
        ref = figures.get(f"reference/{variant}")
        if isinstance(ref, dict):
            this = figures[f"this/{variant}"]
            assert isinstance(this, dict)
            figures[f"ratio_{variant}"] = round(float(this["median_s"]) / float(ref["median_s"]), 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
