"""Kernel events turned into spans per second on one core: decoding plus HTTP span building.

Builds ring-buffer records for keep-alive HTTP exchanges with a traceparent header (as io.bpf.c writes
them), then times decode_event + SpanBuilder.feed over them.

    python bench/span_builder.py [--exchanges 50000] [--runs 5] [--profile]

Both implementations run in the same process (edge/accel.py): the pure-Python modules, and the mypyc-compiled ones
where the package was built with them; each run times the pure ones right after the compiled ones, on the same
records, so `speedup_vs_pure` (median over the runs of the two rates' ratio) is a same-run comparison. Where the C
extensions run (edge/accel.py c_status), the compiled modules are timed three times: without C, with the C head parser
(edge/protocols/_http1_heads.c) alone, and with it and the C record decoder (edge/sources/ebpf/_records.c):
`speedup_c_vs_compiled` and `speedup_c_records_vs_heads_only` (`speedup_c_records_decode_only`: decoding alone) are
those same-run ratios, and the top-level figures are those with both. `--profile` profiles the pure-Python modules
with the C extensions where they run (HELIX_ACCEL_C=0: without).
Further same-run references: decoding alone, and a fixed calibration loop of plain CPython work (dicts, strings,
ints, a small object per step) timed right before each of the runs; `records_per_calibration` is the median over the
runs of decode + build records/s over the calibration's loops/s, which moves far less than either on a shared machine.

Last line: {"implementation", "records", "decode_per_s", "decode_and_build_events_per_s", "spans_per_s",
"calibration_loops_per_s", "records_per_calibration", "pure": {the same figures of the pure-Python modules},
"speedup_vs_pure", "compiled_without_c": {...}, "speedup_c_vs_compiled", "compiled_heads_only": {...},
"speedup_c_records_vs_heads_only", "speedup_c_records_decode_only", "goal_records_per_s"}; the top-level figures are
the fastest implementation's (compiled with C, compiled, or pure).
"""
from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge import accel  # noqa: E402
from edge.sources.ebpf.decode import _DATA, EV_DATA  # noqa: E402

REQ = (b"GET /api/orders?id=%d HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: bench/1.0\r\n"
       b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n")
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nok"


def record(ts: int, direction: int, payload: bytes, prev_bytes: int, prev_end: int) -> bytes:
    """One data_event record (bpf/io.h) for a server-side connection on 127.0.0.1:8080."""
    addr = bytes([127, 0, 0, 1]) + bytes(12)
    head = _DATA.pack(EV_DATA, 4242, 4243, 7, ts, ts + 2000, 0xFFFF8880DEAD0000, len(payload), prev_bytes, prev_end,
                      0, 0, addr, addr, 8080, 51000, 2, 2, direction, b"api-server".ljust(16, b"\0"), len(payload), 0, 0)
    return head + payload


def http_records(exchanges: int) -> list[bytes]:
    """Records of `exchanges` keep-alive HTTP exchanges on one server connection (request, response)."""
    records = []
    ts = 1_000_000
    for i in range(exchanges):
        req = REQ % i
        records.append(record(ts, 1, req, len(RESP) if i else 0, ts - 1000 if i else 0))
        records.append(record(ts + 50_000, 0, RESP, len(req), ts + 2000))
        ts += 100_000
    return records


class _Step:
    __slots__ = ("key", "value")

    def __init__(self, key: str, value: int) -> None:
        self.key, self.value = key, value


def calibration_loops_per_s(loops: int = 200_000, repeat: int = 2) -> float:
    """A fixed loop of plain CPython work, as a same-run measure of the machine's speed (best of `repeat`)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        table: dict[str, int] = {}
        acc = 0
        for i in range(loops):
            key = f"k{i & 1023}"
            step = _Step(key, i)
            table[key] = table.get(key, 0) + step.value
            acc ^= len(key.upper())
        best = min(best, time.perf_counter() - t0)
    return loops / best


def decode_and_build(records: list[bytes], implementation: str = "pure") -> tuple[int, float, float]:
    """Decode the records and build spans from them in batches of 4096 with one implementation ("pure", "compiled",
    "compiled+heads": with the C head parser, "compiled+c": with it and the C record decoder; "pure+c" for the
    profile): (spans, decoding s, decoding + building s)."""
    base, _, c = implementation.partition("+")
    mods = accel.modules(base)
    http1, decode = mods["edge.protocols.http1"], mods["edge.sources.ebpf.decode"]
    was_on = http1._heads is not None, decode._records is not None
    if http1.use_c_heads(c != "") != (c != "") or decode.use_c_records(c == "c") != (c == "c"):
        raise RuntimeError(accel.c_status().detail)
    try:
        return _decode_and_build(mods, records)
    finally:
        http1.use_c_heads(was_on[0])
        decode.use_c_records(was_on[1])


def _decode_and_build(mods: dict, records: list[bytes]) -> tuple[int, float, float]:
    decode_event = mods["edge.sources.ebpf.decode"].decode_event
    spans_mod = mods["edge.sources.ebpf.spans"]
    t0 = time.perf_counter()
    events = [decode_event(r) for r in records]
    t1 = time.perf_counter()
    builder = spans_mod.SpanBuilder(spans_mod.SpanBuilderConfig(host_name="bench"))
    spans = 0
    for i in range(0, len(events), 4096):
        spans += len(builder.feed(events[i:i + 4096]))
    t2 = time.perf_counter()
    return spans, t1 - t0, t2 - t0


# Where the time goes, by stage: (label, module path fragment, function name) of the stage's entry point.
_STAGES = (
    ("decode (struct unpack, event dataclasses)", "ebpf/decode.py", "decode_event"),
    ("HTTP request heads (edge/protocols/http1.py)", "protocols/http1.py", "parse_requests"),
    ("HTTP response heads (edge/protocols/http1.py)", "protocols/http1.py", "parse_responses"),
    ("HTTP span creation (spans.py _emit_http: attributes, trace context, Span)", "ebpf/spans", "_emit_http"),
    ("  of which trace context from the headers (edge/propagation.py)", "edge/propagation.py", "extract"),
)


def profile(records: list[bytes]) -> None:
    """decode_and_build under cProfile: each stage's share, then the busiest functions."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(decode_and_build, records, "pure+c" if accel.c_status().compiled else "pure")
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
    cum = {(f, name): v[3] for (f, _, name), v in st.stats.items()}  # type: ignore[attr-defined]
    print(f"cProfile: {total:.2f} s of function time over {len(records)} records (cProfile slows this code ~3x)")
    staged = 0.0
    for label, path, func in _STAGES:
        t = sum(v for (f, name), v in cum.items() if name == func and path in f)
        staged += t if not label.startswith(" ") else 0.0
        print(f"  {label:75s} {100 * t / total:5.1f} %")
    print(f"  {'the rest: dispatch, connection and message state, pairing (spans.py)':75s} "
          f"{100 * (total - staged) / total:5.1f} %")
    st.sort_stats("tottime").print_stats(15)


def _figures(records: list[bytes], runs: list[tuple[int, float, float]], cals: list[float]) -> dict[str, object]:
    spans, t_decode, t_total = min(runs, key=lambda r: r[2])  # the run least disturbed by the machine's other work
    return {
        "decode_per_s": round(len(records) / t_decode),
        "decode_and_build_events_per_s": round(len(records) / t_total),
        "spans_per_s": round(spans / t_total),
        "records_per_calibration": round(statistics.median(len(records) / r[2] / c for r, c in zip(runs, cals)), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exchanges", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=5, help="timed runs; the fastest is reported")
    ap.add_argument("--profile", action="store_true",
                    help="also print where the time goes in the pure-Python modules (with the C extensions where "
                         "they run; cProfile), per stage")
    args = ap.parse_args()
    records = http_records(args.exchanges)
    impls = accel.implementations() + (["compiled+heads", "compiled+c"] if accel.c_status().compiled and
                                       accel.status().compiled else [])
    active = impls[-1]
    # Calibration and decode + build alternate, so that each ratio compares measurements taken under the same load.
    runs: dict[str, list[tuple[int, float, float]]] = {i: [] for i in impls}
    cals = []
    for _ in range(args.runs):
        cals.append(calibration_loops_per_s())
        for impl in reversed(impls):
            runs[impl].append(decode_and_build(records, impl))
    result: dict[str, object] = {"implementation": active, "records": len(records),
                                 **_figures(records, runs[active], cals),
                                 "calibration_loops_per_s": round(max(cals))}
    if active != "pure":
        result["pure"] = _figures(records, runs["pure"], cals)
        result["speedup_vs_pure"] = round(statistics.median(p[2] / c[2] for p, c in zip(runs["pure"], runs[active])), 2)
    else:
        result["pure_only"] = accel.status().detail
    if active == "compiled+c":
        result["compiled_without_c"] = _figures(records, runs["compiled"], cals)
        result["speedup_c_vs_compiled"] = round(
            statistics.median(p[2] / c[2] for p, c in zip(runs["compiled"], runs[active])), 2)
        result["compiled_heads_only"] = _figures(records, runs["compiled+heads"], cals)
        result["speedup_c_records_vs_heads_only"] = round(
            statistics.median(p[2] / c[2] for p, c in zip(runs["compiled+heads"], runs[active])), 2)
        result["speedup_c_records_decode_only"] = round(
            statistics.median(p[1] / c[1] for p, c in zip(runs["compiled+heads"], runs[active])), 2)
    result["goal_records_per_s"] = 200_000
    if args.profile:
        profile(records)
    for impl in reversed(impls):
        f = _figures(records, runs[impl], cals)
        print(f"{impl:10s} {len(records)} records: decode {f['decode_per_s']}/s; decode + span building "
              f"{f['decode_and_build_events_per_s']} records/s ({f['spans_per_s']} spans/s); "
              f"ratio to calibration {f['records_per_calibration']}")
    print(f"calibration {result['calibration_loops_per_s']} loops/s; speedup {active} / pure (same runs): "
          f"{result.get('speedup_vs_pure', '-')}; compiled+c / compiled: {result.get('speedup_c_vs_compiled', '-')}; "
          f"compiled+c / compiled+heads: {result.get('speedup_c_records_vs_heads_only', '-')} "
          f"(decoding alone: {result.get('speedup_c_records_decode_only', '-')})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
