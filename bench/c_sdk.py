"""The C device SDK's cost: time per span on this machine, and its Cortex-M4 footprint.

Host: bench/c_sdk_bench.c built with -O2, traces of a root with four attributes and two children, one message
per trace handed to a publish hook (MQTT I/O excluded); best of three runs. Same-run reference: the Python SDK
(`edge.sdk.Tracer`, paho excluded by a client that drops messages) on the same traces. Cortex-M4: helix_trace.c
built with Debian's arm-none-eabi-gcc -Os (thumb, hard float), sizes from arm-none-eabi-size; the RAM a device
gives it is its tracer, message buffer and one span struct per open span (sizes for that target).

    python bench/c_sdk.py [--traces 200000]

Last line: {"c_ns_per_span", "python_ns_per_span", "ratio", "m4_flash_bytes", "m4_static_ram_bytes",
"m4_sizeof_tracer", "m4_sizeof_span", "message_bytes", ...}
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._c_sdk import M4, SDK_C, arm_size, build, build_m4_object, undefined_symbols  # noqa: E402

_SIZES = b"""#include "helix_trace.h"
char sizeof_tracer[sizeof(hx_tracer)];
char sizeof_span[sizeof(hx_span)];
char sizeof_context[sizeof(hx_context)];
"""


def python_reference(traces: int) -> float:
    """ns per span for the Python SDK on the same traces, without the MQTT hand-off."""
    from edge.model import SpanKind
    from edge.sdk import Tracer

    class _Info:
        rc = 0

    class _Drop:
        def publish(self, *a: object, **k: object) -> type[_Info]:
            return _Info

    tracer = Tracer(_Drop(), "bench-device", max_delay=0)  # one message per trace, as the C SDK
    t0 = time.perf_counter()
    for i in range(traces):
        with tracer.span("handleCommand", kind=SpanKind.CONSUMER) as root:
            root.set_attribute("device.mode", "auto")
            root.set_attribute("cycle", i)
            root.set_attribute("setpoint", 21.5)
            root.set_attribute("manual", False)
            with tracer.span("readSensor"):
                pass
            with tracer.span("actuateValve"):
                pass
    return (time.perf_counter() - t0) / (3 * traces) * 1e9


def m4_struct_sizes(tmp: Path) -> dict[str, int]:
    """sizeof the SDK's structs on a Cortex-M4, read from the symbols of a tiny object."""
    src = tmp / "sizes.c"
    src.write_bytes(_SIZES)
    obj = build(tmp / "sizes.o", [src], M4, cc="arm-none-eabi-gcc", compile_only=True)
    out = subprocess.run(["arm-none-eabi-nm", "-S", str(obj)], capture_output=True, text=True, check=True).stdout
    return {line.split()[3]: int(line.split()[1], 16) for line in out.splitlines() if len(line.split()) == 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        exe = build(tmp / "c_sdk_bench", [SDK_C / "helix_trace.c", Path(__file__).with_name("c_sdk_bench.c")],
                    ["-O2", "-D_GNU_SOURCE"])
        runs = [subprocess.run([str(exe), str(args.traces)], capture_output=True, text=True, check=True).stdout.split()
                for _ in range(3)]
        c_ns = min(float(r[0]) for r in runs)
        py_ns = min(python_reference(args.traces // 10) for _ in range(3))
        obj = build_m4_object(tmp / "helix_trace.o")
        size = arm_size(obj)
        structs = m4_struct_sizes(tmp)
        needs = sorted(undefined_symbols(obj))
    print(f"C SDK: {c_ns:.0f} ns per span (Python SDK {py_ns:.0f}); Cortex-M4 -Os: text {size['text']} B, "
          f"data {size['data']} B, bss {size['bss']} B; needs {', '.join(needs)}", file=sys.stderr)
    print(json.dumps({
        "traces": args.traces, "c_ns_per_span": round(c_ns, 1), "python_ns_per_span": round(py_ns, 1),
        "ratio": round(py_ns / c_ns, 1), "messages": int(runs[0][1]), "message_bytes": int(runs[0][2]),
        "m4_flash_bytes": size["text"] + size["data"], "m4_static_ram_bytes": size["data"] + size["bss"],
        "m4_sizeof_tracer": structs["sizeof_tracer"], "m4_sizeof_span": structs["sizeof_span"],
        "m4_sizeof_context": structs["sizeof_context"], "m4_needs": needs,
    }))


if __name__ == "__main__":
    main()
