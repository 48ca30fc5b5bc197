"""What holding kernel spans for SDKs at their default batch delay costs the assembler, at 5,000 kernel spans/s.

Drives the assembler in process on a simulated clock (no sleeping): per request, an uninstrumented caller's kernel
client span, the kernel server span and call of a service with an OpenTelemetry SDK, and the kernel server span of
the uninstrumented backend it calls (4 kernel spans). The service's SDK exports as a BatchSpanProcessor does at its
defaults: every 5 s, what ended since the last export. Three cases:

- reference: the service runs no SDK: spans stay the assembler's window (2 s) and go;
- propagating: the SDK starts a trace per request and its call carries it on the wire: the agent knows the trace
  at once, nothing waits for the SDK spans (they join what already left);
- silent: the SDK starts a trace per request but its calls carry no context (no client instrumentation): each
  request's spans wait for its SDK server span (until the SDK exported past them, at most assembler.sdk_wait).

    python bench/stitch_hold.py [--rate 5000] [--seconds 30] [--max-mib N]

Last line: JSON {case: {"held_spans_p50", "held_spans_max", "held_mib_p50", "held_mib_max", "forced", "waits",
"us_per_span"}, "ratio_silent_to_reference_mib": ...}; held figures from the steady state (after 12 s).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge.assembler import Assembler, AssemblerConfig  # noqa: E402
from edge.model import Resource, Source, Span, SpanKind, new_span_id, new_trace_id  # noqa: E402

SDK_DELAY_S = 5.0  # the OpenTelemetry BatchSpanProcessor's default schedule delay
TICK_S = 0.1
STEADY_AFTER_S = 12.0
T0 = 1_800_000_000_000_000_000
_RES = {pid: Resource.of({"service.name": f"p{pid}", "process.pid": pid}) for pid in (1, 7, 9)}
_SDK_RES = Resource.of({"service.name": "frontend", "process.pid": 7})


def _k(name: str, kind: SpanKind, start: int, end: int, pid: int, tid: int, local: tuple[str, int],
       peer: tuple[str, int], wire: tuple[bytes, bytes] | None = None, **attrs: object) -> Span:
    a: dict[str, object] = {"process.pid": pid, "thread.id": tid, "network.local.address": local[0],
                            "network.local.port": local[1], "network.peer.address": peer[0],
                            "network.peer.port": peer[1], "helix.context_from": "wire" if wire else "none", **attrs}
    return Span(trace_id=wire[0] if wire else new_trace_id(), span_id=new_span_id(), name=name, kind=kind,
                start_ns=start, end_ns=end, parent_span_id=wire[1] if wire else b"", attributes=a,
                resource=_RES[pid], source=Source.EBPF)


def request(i: int, t: float, case: str) -> tuple[list[Span], list[Span]]:
    """One request at simulated time t: (kernel spans, SDK spans)."""
    base = T0 + int(t * 1e9)
    ms = 1_000_000
    a, b = ("10.0.0.1", 20000 + i % 40000), ("10.0.0.7", 8080)
    c, d = ("10.0.0.7", 30000 + i % 30000), ("10.0.0.9", 9090)
    trace = new_trace_id()
    s1 = Span(trace_id=trace, span_id=new_span_id(), name="frontend", kind=SpanKind.SERVER, start_ns=base + 2 * ms,
              end_ns=base + 18 * ms, resource=_SDK_RES, source=Source.SDK_OTLP)
    sdk = [s1] if case != "reference" else []
    wire = None
    if case == "propagating":
        s2 = Span(trace_id=trace, span_id=new_span_id(), name="GET /backend", kind=SpanKind.CLIENT,
                  start_ns=base + 5 * ms, end_ns=base + 15 * ms, parent_span_id=s1.span_id, resource=_SDK_RES,
                  source=Source.SDK_OTLP)
        sdk.append(s2)
        wire = (trace, s2.span_id)
    k_fs = _k("GET", SpanKind.SERVER, base + ms, base + 19 * ms, 7, 70 + i % 8, b, a)
    kernel = [
        _k("GET", SpanKind.CLIENT, base, base + 20 * ms, 1, 10, a, b),
        k_fs,
        _k("GET", SpanKind.CLIENT, base + 6 * ms, base + 14 * ms, 7, 70 + i % 8, c, d, wire,
           **{"helix.cause": k_fs.span_id, "helix.cause.via": "thread"}),
        _k("GET", SpanKind.SERVER, base + 7 * ms, base + 13 * ms, 9, 90, d, c, wire),
    ]
    return kernel, sdk


def run(case: str, rate: int, seconds: float, max_mib: float | None = None) -> dict[str, float]:
    a = Assembler(AssemblerConfig())
    if max_mib is not None:
        a.max_bytes = int(max_mib * 1024 * 1024)
    per_tick = max(1, int(rate * TICK_S / 4))
    queued: list[Span] = []  # SDK spans ended, waiting for the next export
    next_export = SDK_DELAY_S
    held: list[int] = []
    held_bytes: list[int] = []
    fed = out = 0
    cpu = 0.0
    t, i = 0.0, 0
    while t < seconds + 15.0:
        batch: list[Span] = []
        if t < seconds:
            for _ in range(per_tick):
                kernel, sdk = request(i, t, case)
                i += 1
                batch += kernel
                queued += sdk
        if t >= next_export:
            batch += queued
            queued = []
            next_export += SDK_DELAY_S
        fed += len(batch)
        c0 = time.process_time()
        out += len(a.process(batch, now=t))
        cpu += time.process_time() - c0
        if STEADY_AFTER_S <= t < seconds:
            held.append(len(a))
            held_bytes.append(a.bytes)
        t = round(t + TICK_S, 3)
    out += len(a.process(queued, now=t)) + len(a.process([], now=t + 30.0))
    fed += len(queued)
    mib = 1024 * 1024
    return {"held_spans_p50": statistics.median(held), "held_spans_max": max(held),
            "held_mib_p50": round(statistics.median(held_bytes) / mib, 2), "held_mib_max": round(max(held_bytes) / mib, 2),
            "forced": a.stats.sdk_wait_forced, "waits": a.stats.sdk_waits, "spans": fed, "out": out,
            "us_per_span": round(cpu / max(1, fed) * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=5000, help="kernel spans per second")
    ap.add_argument("--seconds", type=float, default=30.0, help="simulated seconds of load")
    ap.add_argument("--max-mib", type=float, default=None,
                    help="the assembler's bound on held bytes (default: its own, 16 MiB; the governor plans it)")
    args = ap.parse_args()
    result: dict[str, object] = {}
    for case in ("reference", "propagating", "silent"):
        r = run(case, args.rate, args.seconds, args.max_mib)
        result[case] = r
        print(f"{case:12s} held p50 {r['held_spans_p50']:>8,.0f} spans {r['held_mib_p50']:6.2f} MiB, max "
              f"{r['held_spans_max']:>8,} spans {r['held_mib_max']:6.2f} MiB; waited {r['waits']:,}, released early "
              f"{r['forced']:,}; {r['us_per_span']} µs CPU per span; {r['out']:,} of {r['spans']:,} out", flush=True)
    ref = result["reference"]["held_mib_p50"]  # type: ignore[index]
    result["ratio_silent_to_reference_mib"] = round(result["silent"]["held_mib_p50"] / ref, 2) if ref else None  # type: ignore[index]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
