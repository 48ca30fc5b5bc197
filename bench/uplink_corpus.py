"""Uplink bytes per span on spans real tracers emitted (bench/corpus.py) and on the generator's (bench/_workload.py):
OTLP protobuf + zstd (the same-run reference), the shipped batch format (version 2 + its dictionary) and the
columnar format (version 3) with a table set the node learned from its own earlier traffic.

Each stream is what one node sends, in order. The node learns from the first --train-fraction of it and encodes
the rest ("learned"); "cold" encodes the same spans with no table set (a node's first minutes); every encoding of a
row sees the same spans cut at the same batch boundaries. "rolling" replays the whole stream as a node would:
cold until --retrain-every spans have passed, then a table set learned from the last --window spans, renewed every
--retrain-every spans, each publication's bytes counted. Every span of every stream is checked to decode exactly.

Run: python bench/uplink_corpus.py [--batches 512,32] [--train-fraction 0.3] [--level 3]. Times are CPU time
(process_time) of one core, best of --repeat runs, beside the shipped format's on the same batches and a fixed
calibration loop. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cbor2
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from bench.corpus import load_all  # noqa: E402
from edge.codec.otlp import request_from_spans  # noqa: E402
from edge.model import Span  # noqa: E402
from uplink.wire import columnar, decode_batch, encode_batch  # noqa: E402
from uplink.wire.tables import EMPTY, TableSet, TrainingLimits, parse_message  # noqa: E402

NODE = "edge-node-01"
MAX_BYTES = 64 * 1024 * 1024
REAL = "real corpus"


def batches(spans: Sequence[Span], size: int) -> list[Sequence[Span]]:
    """Consecutive batches of `size` spans; the last one holds what is left, as a node's age limit would cut it."""
    return [spans[i:i + size] for i in range(0, len(spans), size)]


def otlp_zstd(bs: list[Sequence[Span]], level: int) -> int:
    """Bytes of OTLP protobuf export requests, one per batch, each compressed alone with zstd."""
    zc = zstandard.ZstdCompressor(level=level)
    return sum(len(zc.compress(request_from_spans(b, source_attribute=False).SerializeToString())) for b in bs)


def shipped(bs: list[Sequence[Span]], level: int) -> int:
    """Bytes of the shipped format (version 2 with the shipped dictionary)."""
    return sum(len(encode_batch(b, NODE, i, level=level, created_ns=i, version=2)) for i, b in enumerate(bs))


def v3(bs: list[Sequence[Span]], tables: TableSet, level: int) -> int:
    """Bytes of the columnar format, every batch checked to decode exactly."""
    total = 0
    for i, b in enumerate(bs):
        data = columnar.encode(b, NODE, i, tables, level=level, created_ns=i)
        assert _exact(_decode(data, tables).spans, b), "columnar batch did not round-trip"
        total += len(data)
    return total


def _decode(data: bytes, tables: TableSet) -> Any:
    return decode_batch(data, MAX_BYTES, {tables.id: tables}.get)


def _exact(got: Sequence[Span], want: Sequence[Span]) -> bool:
    # repr tells 1 from 1.0 and True, and shows dict order, which == does not.
    return list(got) == list(want) and repr(list(got)) == repr(list(want))


def rolling(spans: Sequence[Span], size: int, level: int, every: int, window: int,
            limits: TrainingLimits) -> dict[str, float]:
    """Replay a stream as a node would: cold at first; every `every` spans a candidate table set is learned from
    the last `window` spans, and published only if, on the period just sent, it saves more than its message costs."""
    tables: TableSet = EMPTY
    seen = since = batch_bytes = msg_bytes = sets = candidates = 0
    period: list[Sequence[Span]] = []
    for i, b in enumerate(batches(spans, size)):
        if since >= every:
            candidates += 1
            cand = columnar.learn(spans[max(0, seen - window):seen], limits, node_id=NODE, created_ns=seen)
            msg = len(cand.to_message())
            saved = sum(len(columnar.encode(p, NODE, 0, tables, level=level)) -
                        len(columnar.encode(p, NODE, 0, cand, level=level)) for p in period)
            if saved > msg:
                tables = cand
                msg_bytes += msg
                sets += 1
            since = 0
            period = []
        data = columnar.encode(b, NODE, i, tables, level=level, created_ns=i)
        assert _exact(_decode(data, tables).spans, b)
        batch_bytes += len(data)
        period.append(b)
        seen += len(b)
        since += len(b)
    n = len(spans)
    return {"batches_bytes_per_span": round(batch_bytes / n, 2), "candidates": candidates, "table_sets": sets,
            "table_set_bytes": msg_bytes, "with_publication_bytes_per_span": round((batch_bytes + msg_bytes) / n, 2)}


def breakdown(bs: list[Sequence[Span]], tables: TableSet, level: int) -> dict[str, float]:
    """Bytes per span each body field costs: the batch's size minus its size with that field left out (null),
    compressed with the same dictionary. Fields compress together, so the parts do not add up exactly."""
    zc = tables.compressor(level)
    n = sum(len(b) for b in bs)
    cost = dict.fromkeys(columnar.BODY_FIELDS, 0)
    for i, b in enumerate(bs):
        raw = columnar.body(b, NODE, i, tables, created_ns=i)
        doc = cbor2.loads(raw)
        full = len(zc.compress(raw))
        for j, name in enumerate(columnar.BODY_FIELDS):
            cost[name] += full - len(zc.compress(cbor2.dumps(doc[:j] + [None] + doc[j + 1:])))
    return {k: round(v / n, 2) for k, v in sorted(cost.items(), key=lambda kv: -kv[1]) if v / n >= 0.05}


def best_cpu(fn: Callable[[], Any], repeat: int) -> float:
    """Least CPU time of `repeat` runs of fn, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def calibration_s() -> float:
    """CPU time of a fixed pure-Python loop: machines differ up to 2x, so speeds are also given against this."""
    def loop() -> None:
        d: dict[int, int] = {}
        for i in range(300_000):
            d[i & 1023] = d.get(i & 1023, 0) + i
    return best_cpu(loop, 5)


def speed(bs: list[Sequence[Span]], tables: TableSet, level: int, v2_level: int, repeat: int) -> dict[str, float]:
    """Encode and decode CPU time per span, columnar (learned tables) and shipped format, same batches."""
    n = sum(len(b) for b in bs)
    enc = [columnar.encode(b, NODE, i, tables, level=level) for i, b in enumerate(bs)]
    old = [encode_batch(b, NODE, i, level=v2_level, version=2) for i, b in enumerate(bs)]
    e3 = best_cpu(lambda: [columnar.encode(b, NODE, i, tables, level=level) for i, b in enumerate(bs)], repeat)
    d3 = best_cpu(lambda: [_decode(x, tables) for x in enc], repeat)
    e2 = best_cpu(lambda: [encode_batch(b, NODE, i, level=v2_level, version=2) for i, b in enumerate(bs)], repeat)
    d2 = best_cpu(lambda: [decode_batch(x, MAX_BYTES) for x in old], repeat)
    return {"encode_us_per_span": round(e3 / n * 1e6, 2), "decode_spans_per_s": round(n / d3),
            "v2_encode_us_per_span": round(e2 / n * 1e6, 2), "v2_decode_spans_per_s": round(n / d2),
            "encode_vs_v2": round(e3 / e2, 2), "decode_vs_v2": round(d3 / d2, 2)}


def node_memory(train: Sequence[Span], limits: TrainingLimits) -> dict[str, int]:
    """What a node holds to encode with a learned table set (counted by the set itself, and traced allocations),
    and what a gateway holds per cached set (traced allocations of parsing its message and decoding a batch)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tables = columnar.learn(train, limits, node_id=NODE, created_ns=0)
    data = columnar.encode(train[:32], NODE, 0, tables)  # builds the lookups and the compressor
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    msg = tables.to_message()
    before = tracemalloc.get_traced_memory()[0]
    fetched = parse_message(msg, MAX_BYTES, expect_id=tables.id)
    batch = _decode(data, fetched)
    del batch, data
    gc.collect()
    gateway = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"node_bytes": tables.node_bytes(), "traced_python_bytes": held, "gateway_python_bytes": gateway,
            "compressor_bytes": tables.compressor(3).memory_size(),
            "decompressor_bytes": fetched.decompressor().memory_size(), "message_bytes": len(msg)}


def main() -> None:
    """Measure every stream, print the tables, then the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=None, help="the demo-apps folder (default: HELIX_CORPUS or ../shared)")
    ap.add_argument("--batches", default="512,32", help="comma-separated batch sizes")
    ap.add_argument("--level", type=int, default=3, help="zstd level of OTLP+zstd and the shipped format")
    ap.add_argument("--v3-level", type=int, default=None, help="zstd level of the columnar format (default: --level)")
    ap.add_argument("--train-fraction", type=float, default=0.3, help="share of each stream the node learns from")
    ap.add_argument("--retrain-every", type=int, default=512, help="rolling: spans between table sets")
    ap.add_argument("--window", type=int, default=4096, help="rolling: spans a table set is learned from")
    ap.add_argument("--generator-traces", type=int, default=1000, help="traces of bench/_workload.py (seed 1)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per speed figure (the least CPU time counts)")
    ap.add_argument("--zdict-bytes", type=int, default=TrainingLimits().zdict_bytes)
    ap.add_argument("--breakdown", action="store_true", help="also print what each body field costs (learned)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.batches.split(",")]
    lv3 = args.level if args.v3_level is None else args.v3_level
    limits = TrainingLimits(zdict_bytes=args.zdict_bytes)
    variants = {"tables_only": TrainingLimits(zdict_bytes=args.zdict_bytes, zdict=False),
                "zdict_only": TrainingLimits(zdict_bytes=args.zdict_bytes, tables=False)}

    streams = dict(load_all(args.root))
    real = list(streams)
    streams["generator"] = realistic_spans(args.generator_traces, seed=1)
    calib = calibration_s()
    result: dict[str, Any] = {"level": args.level, "v3_level": lv3, "train_fraction": args.train_fraction,
                              "calibration_loop_s": round(calib, 4), "streams": {}}
    totals: dict[int, dict[str, float]] = {size: {} for size in sizes}

    for name, spans in streams.items():
        k = int(len(spans) * args.train_fraction)
        train, test = spans[:k], spans[k:]
        tables = columnar.learn(train, limits, node_id=NODE, created_ns=0) if train else EMPTY
        alt = {v: columnar.learn(train, lim, node_id=NODE, created_ns=0) if train else EMPTY
               for v, lim in variants.items()}
        row: dict[str, Any] = {"spans": len(spans), "train_spans": k,
                               "table_set": node_memory(train, limits) if train else {}}
        for size in sizes:
            all_b, test_b = batches(spans, size), batches(test, size)
            n_all, n_test = len(spans), len(test)
            fig = {
                "baseline": {"otlp_zstd": otlp_zstd(all_b, args.level) / n_all,
                             "v2_dict": shipped(all_b, args.level) / n_all},
                "otlp_zstd": otlp_zstd(test_b, args.level) / n_test,
                "v2_dict": shipped(test_b, args.level) / n_test,
                "v3_cold": v3(test_b, EMPTY, lv3) / n_test,
                "v3_learned": v3(test_b, tables, lv3) / n_test,
                **{f"v3_{v}": v3(test_b, t, lv3) / n_test for v, t in alt.items()},
            }
            fig = {k2: (round(v, 2) if isinstance(v, float) else {a: round(b, 2) for a, b in v.items()})
                   for k2, v in fig.items()}
            fig["ratio_learned_vs_otlp_zstd"] = round(fig["otlp_zstd"] / fig["v3_learned"], 2)
            fig["ratio_cold_vs_otlp_zstd"] = round(fig["otlp_zstd"] / fig["v3_cold"], 2)
            fig["rolling"] = rolling(spans, size, lv3, args.retrain_every, args.window, limits)
            fig["speed"] = speed(test_b, tables, lv3, args.level, args.repeat)
            fig["speed"]["encode_us_per_span_per_calibration_s"] = round(fig["speed"]["encode_us_per_span"] / calib, 1)
            if args.breakdown:
                fig["breakdown"] = breakdown(test_b, tables, lv3)
            row[f"batch_{size}"] = fig
            if name in real:
                t = totals[size]
                for key in ("otlp_zstd", "v2_dict", "v3_cold", "v3_learned"):
                    t[key] = t.get(key, 0.0) + fig[key] * n_test
                t["spans"] = t.get("spans", 0) + n_test
        result["streams"][name] = row
        _print_stream(name, row, sizes)

    result["streams"][REAL] = {}
    for size in sizes:
        t = totals[size]
        agg = {key: round(t[key] / t["spans"], 2) for key in ("otlp_zstd", "v2_dict", "v3_cold", "v3_learned")}
        agg["ratio_learned_vs_otlp_zstd"] = round(agg["otlp_zstd"] / agg["v3_learned"], 2)
        agg["spans"] = int(t["spans"])
        result["streams"][REAL][f"batch_{size}"] = agg
        print(f"{REAL} (evaluation spans of every sub-corpus), batches of {size}: OTLP+zstd {agg['otlp_zstd']}, "
              f"v2+dict {agg['v2_dict']}, v3 cold {agg['v3_cold']}, v3 learned {agg['v3_learned']} B/span "
              f"({agg['ratio_learned_vs_otlp_zstd']}x better than OTLP+zstd)")
    print(f"calibration loop: {calib:.3f} s CPU")
    print(json.dumps(result))


def _print_stream(name: str, row: dict[str, Any], sizes: list[int]) -> None:
    print(f"== {name}: {row['spans']} spans, learned from the first {row['train_spans']}")
    if row["table_set"]:
        m = row["table_set"]
        print(f"   table set: message {m['message_bytes']} B, node holds {m['node_bytes']} B "
              f"(zstd compressor {m['compressor_bytes']} B; traced allocations {m['traced_python_bytes']} B), "
              f"a gateway {m['gateway_python_bytes']} B traced + {m['decompressor_bytes']} B zstd")
    print(f"   {'batch':>5} {'base OTLP':>10} {'base v2':>8} | {'OTLP+zstd':>9} {'v2+dict':>8} {'v3 cold':>8} "
          f"{'learned':>8} {'tables':>7} {'zdict':>7} {'ratio':>6} | {'rolling':>8} {'+publ.':>8} | "
          f"{'enc us':>7} {'v2':>6} {'dec/s':>8} {'v2':>7}")
    for size in sizes:
        f = row[f"batch_{size}"]
        r, sp = f["rolling"], f["speed"]
        print(f"   {size:>5} {f['baseline']['otlp_zstd']:>10} {f['baseline']['v2_dict']:>8} | {f['otlp_zstd']:>9} "
              f"{f['v2_dict']:>8} {f['v3_cold']:>8} {f['v3_learned']:>8} {f['v3_tables_only']:>7} "
              f"{f['v3_zdict_only']:>7} {f['ratio_learned_vs_otlp_zstd']:>5}x | {r['batches_bytes_per_span']:>8} "
              f"{r['with_publication_bytes_per_span']:>8} | {sp['encode_us_per_span']:>7} "
              f"{sp['v2_encode_us_per_span']:>6} "
              f"{sp['decode_spans_per_s']:>8} {sp['v2_decode_spans_per_s']:>7}")
    for size in sizes:
        f = row[f"batch_{size}"]
        if "breakdown" in f:
            print(f"   {size:>5}: bytes/span by body field: " + ", ".join(f"{k} {v}" for k, v in f["breakdown"].items()))


if __name__ == "__main__":
    main()
