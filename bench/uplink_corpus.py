"""Uplink bytes per span on spans real tracers emitted (bench/corpus.py) and on the generator's (bench/_workload.py):
OTLP protobuf + zstd (the same-run reference), the shipped format 2 with its dictionary, format 4 (the default) cold,
learned and as a node runs it, and format 3 learned beside it.

Each stream is what one node sends, in order; every encoding of a row sees the same spans cut at the same batch
boundaries. "learned": the node learned a table set from the first --train-fraction of the stream and encodes the
rest with it (the steady state); "cold": the same spans with no table set (a node's first minutes). "node": the
whole stream replayed through the node's own learner (uplink/learner.py) at --rate spans per second, cold until its
first table set, every table-set message it publishes counted; the replay learns synchronously (a node adopts a set
a few batches later). "id floor": the bytes of the random ids alone (8 per span id, 16 per distinct trace id of a
batch, 8 per parent outside the batch), which no exact encoding goes below. Every span of every stream is checked to
decode exactly.

Run: python bench/uplink_corpus.py [--batches 512,32] [--rate 20] [--breakdown] [--policies] [--levels]. Times are
CPU time (process_time) of one core, best of --repeat runs, beside the shipped format's on the same batches and a
fixed calibration loop. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import bz2
import gc
import json
import lzma
import math
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cbor2
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from bench.corpus import load_all  # noqa: E402
from edge.codec.otlp import ExportTraceServiceRequest, request_from_spans, spans_from_request  # noqa: E402
from edge import accel  # noqa: E402
from edge.config.uplink import UplinkConfig  # noqa: E402
from edge.model import Span  # noqa: E402
from uplink.learner import LearningPolicy, TableLearner  # noqa: E402
from uplink.wire import FORMAT_VERSION, columnar, decode_batch, encode_batch, read_header  # noqa: E402
from uplink.wire.tables import EMPTY, TableSet, TrainingLimits, parse_message  # noqa: E402
from uplink.wire.values import unplanes, zigzag  # noqa: E402

NODE = "edge-node-01"
MAX_BYTES = 64 * 1024 * 1024
REAL = "real corpus"
_SUMMED = ("otlp_zstd", "v2_dict", "v3_learned", "cold", "learned", "id_floor")


def batches(spans: Sequence[Span], size: int) -> list[Sequence[Span]]:
    """Consecutive batches of `size` spans; the last one holds what is left, as a node's age limit would cut it."""
    return [spans[i:i + size] for i in range(0, len(spans), size)]


def otlp_zstd(bs: list[Sequence[Span]], level: int) -> int:
    """Bytes of OTLP protobuf export requests, one per batch, each compressed alone with zstd."""
    zc = zstandard.ZstdCompressor(level=level)
    return sum(len(zc.compress(request_from_spans(b, source_attribute=False).SerializeToString())) for b in bs)


def shipped(bs: list[Sequence[Span]], level: int) -> int:
    """Bytes of format 2 with the shipped dictionary."""
    return sum(len(encode_batch(b, NODE, i, level=level, created_ns=i, version=2)) for i, b in enumerate(bs))


def columnar_bytes(bs: list[Sequence[Span]], tables: TableSet, level: int, version: int = FORMAT_VERSION) -> int:
    """Bytes of a columnar format (4 or 3), every batch checked to decode exactly."""
    total = 0
    for i, b in enumerate(bs):
        data = columnar.encode(b, NODE, i, tables, level=level, created_ns=i, version=version)
        assert _exact(_decode(data, tables).spans, b), f"format {version} batch did not round-trip"
        total += len(data)
    return total


def id_floor(bs: list[Sequence[Span]]) -> int:
    """Bytes of the random ids no exact encoding can leave out: span ids, each batch's distinct trace ids, and the
    ids of parents outside the batch."""
    total = 0
    for b in bs:
        ids = {s.span_id for s in b}
        total += 8 * len(b) + 16 * len({s.trace_id for s in b})
        total += 8 * sum(1 for s in b if s.parent_span_id and s.parent_span_id not in ids)
    return total


def _decode(data: bytes, tables: TableSet) -> Any:
    return decode_batch(data, MAX_BYTES, {tables.id: tables}.get)


def _exact(got: Sequence[Span], want: Sequence[Span]) -> bool:
    # repr tells 1 from 1.0 and True, and shows dict order, which == does not.
    return list(got) == list(want) and repr(list(got)) == repr(list(want))


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def replay(spans: Sequence[Span], size: int, policy: LearningPolicy, rate: float, sample_bytes: int) -> dict[str, Any]:
    """The stream as a node sends it at `rate` spans/s: batches encoded with the learner's set in use, candidates
    learned, judged and adopted by its policy, each adopted set's message counted."""
    clock = _Clock()
    learner = TableLearner(policy, NODE, sample_bytes, clock)
    batch_bytes = msg_bytes = 0
    cpu = 0.0
    for i, b in enumerate(batches(spans, size)):
        clock.t += len(b) / rate
        tables = learner.current
        data = encode_batch(b, NODE, i, level=policy.level, created_ns=i, tables=tables)  # as the client
        assert _exact(_decode(data, tables).spans, b)
        batch_bytes += len(data)
        learner.observe(b, len(data), tables.id)
        reason = learner.due()
        if reason:
            t0 = time.process_time()
            cand = learner.learn(*learner.begin(reason))
            cpu += time.process_time() - t0
            if learner.judge(cand):
                learner.adopt(cand)
                msg_bytes += len(cand.message)
    n = len(spans)
    st = learner.stats
    return {"bytes_per_span": round((batch_bytes + msg_bytes) / n, 2), "batches_bytes_per_span": round(batch_bytes / n, 2),
            "table_set_bytes": msg_bytes, "candidates": st.candidates, "adopted": st.adopted, "early": st.early,
            "learn_cpu_s": round(cpu, 3), "learn_cpu_ms_per_candidate": round(cpu / max(1, st.candidates) * 1000, 1),
            "sample_bytes": learner.sample.bytes, "sample_spans": len(learner.sample),
            "table_set_node_bytes": learner.bytes}


# Planes of the body: the fields each one is made of (docs/uplink-format-v3.md, "Body"). Attribute values are
# broken down further, a column per (key, value type), in "values by key".
PLANES = {
    "span ids": ("span_ids",),
    "trace ids": ("trace_ids", "trace_column"),
    "parent ids": ("parent_column",),
    "start times": ("base", "starts", "time_units"),
    "durations": ("ends",),
    "names": ("names",),
    "kind/status/source": ("packed",),
    "attribute keys and shapes": ("new_keys", "new_shapes", "shape_column"),
    "attribute values": ("attribute_columns",),
    "resources": ("new_resources", "resource_column"),
    "scopes": ("new_scopes", "scope_column"),
    "events": ("events",),
    "extras": ("extras",),
    "envelope": ("node_id", "seq", "created_ns", "n"),
}
_ID_FIELDS = ("span_ids", "trace_ids", "parent_column")


def breakdown(bs: list[Sequence[Span]], tables: TableSet, level: int, top: int = 12) -> dict[str, Any]:
    """Bytes per span each plane of the body costs after zstd (with the table set's dictionary): the batch's size
    minus its size with that plane left out (null). Planes compress together, so the parts do not add up exactly:
    "sum of planes" beside "total" says by how much. "values by key": the same for each attribute column (resource
    values of new resources included), the `top` costliest keys and the rest together. "stream bound": every batch
    body of the stream with its random ids left out, concatenated and compressed as one zstd frame at level 19,
    plus the id floor: what an encoder that remembered everything earlier in the stream could approach."""
    zc = tables.compressor(level)
    n = sum(len(b) for b in bs)
    fi = {name: j for j, name in enumerate(columnar.BODY_FIELDS)}
    planes_cost = dict.fromkeys(PLANES, 0)
    by_key: dict[str, int] = {}
    total = header = 0
    stripped: list[bytes] = []
    for i, b in enumerate(bs):
        doc, cols = columnar.body_fields(b, NODE, i, tables, created_ns=i)
        full = len(zc.compress(cbor2.dumps(doc)))
        total += full
        header += len(columnar.encode(b, NODE, i, tables, level=level, created_ns=i)) - full

        def without(fields: Sequence[str]) -> int:
            d = list(doc)
            for f in fields:
                d[fi[f]] = None
            return len(zc.compress(cbor2.dumps(d)))

        for plane, fields in PLANES.items():
            planes_cost[plane] += full - without(fields)
        attr = fi["attribute_columns"]
        for j, (key, ty) in enumerate(cols):
            d = list(doc)
            d[attr] = doc[attr][:j] + [None] + doc[attr][j + 1:]
            k = key if ty in (0, 1) else f"{key} ({('text', 'int', 'float', 'bool', 'bytes', 'cbor')[ty]})"
            by_key[k] = by_key.get(k, 0) + full - len(zc.compress(cbor2.dumps(d)))
        d = list(doc)
        for f in _ID_FIELDS:
            d[fi[f]] = None
        stripped.append(cbor2.dumps(d))
    ranked = sorted(by_key.items(), key=lambda kv: -kv[1])
    keys = {k: round(v / n, 2) for k, v in ranked[:top]}
    keys[f"other {max(0, len(ranked) - top)} columns"] = round(sum(v for _, v in ranked[top:]) / n, 2)
    bound = len(zstandard.ZstdCompressor(level=19).compress(b"".join(stripped)))
    return {"total": round((total + header) / n, 2), "header_and_frame": round(header / n, 2),
            "planes": {k: round(v / n, 2) for k, v in sorted(planes_cost.items(), key=lambda kv: -kv[1])},
            "sum_of_planes": round(sum(planes_cost.values()) / n, 2), "values_by_key": keys,
            "stream_bound": round((bound + id_floor(bs)) / n, 2)}


def _best_compressed(data: bytes) -> dict[str, int]:
    """Bytes of `data` under the strongest general-purpose compressors at hand, each in one frame."""
    long_window = zstandard.ZstdCompressionParameters.from_level(19, window_log=27)
    return {"zstd_19_long": len(zstandard.ZstdCompressor(compression_params=long_window).compress(data)),
            "zstd_22": len(zstandard.ZstdCompressor(level=22).compress(data)),
            "xz_9e": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
            "bzip2_9": len(bz2.compress(data, 9))}


def _magnitude_bits(zs: Sequence[int]) -> float:
    """Bits to code zigzagged values as (bit length, the bits below the leading one): the empirical entropy of the
    bit lengths plus every lower bit at one bit, i.e. assuming those bits are noise. Clock jitter makes them so:
    compressors get no further on them (see "time planes, best compressor")."""
    if not zs:
        return 0.0
    lengths = [z.bit_length() for z in zs]
    counts: dict[int, int] = {}
    for b in lengths:
        counts[b] = counts.get(b, 0) + 1
    n = len(zs)
    h = -sum(c * math.log2(c / n) for c in counts.values())
    return h + sum(max(0, b - 1) for b in lengths)


def lower_bound(bs: list[Sequence[Span]], tables: TableSet) -> dict[str, Any]:
    """The byte goals' feasibility, measured: (1) the random ids, which no exact encoding shrinks (checked: the
    strongest compressors leave them as they are); (2) the times, as the entropy of the time columns the encoder
    forms (start deltas from the time parent, end offsets, event offsets, in the resource's unit) under a model that
    codes each value's bit length by its frequency in the stream and its lower bits as they are; (3) everything else
    (names, attributes, resources, structure), every batch body of the stream with ids and times left out,
    concatenated and compressed as one frame by the best of zstd 19 (128 MiB window), zstd 22, xz -9e and bzip2 -9:
    an encoder that remembered the whole stream. The sum is what an exact encoder could approach; a batch encoder,
    which forgets across batches but for its table set, stays above it."""
    n = sum(len(b) for b in bs)
    fi = {name: j for j, name in enumerate(columnar.BODY_FIELDS)}
    ids = bytearray()
    starts: list[int] = []
    ends: list[int] = []
    event_times: list[int] = []
    planes_raw = bytearray()
    rest = bytearray()
    for i, b in enumerate(bs):
        doc, _ = columnar.body_fields(b, NODE, i, tables, created_ns=i)
        m = len(b)
        sid = doc[fi["span_ids"]]
        ids += sid if type(sid) is bytes else b"".join(sid)
        ids += doc[fi["trace_ids"]]
        ids += b"".join(t for t in doc[fi["trace_column"]] if type(t) is bytes)
        ids += b"".join(p for p in doc[fi["parent_column"]] if type(p) is bytes)
        starts += zigzag(unplanes(doc[fi["starts"]], m, "starts"))
        ends += zigzag(unplanes(doc[fi["ends"]], m, "ends"))
        planes_raw += doc[fi["starts"]] + doc[fi["ends"]]
        ev = doc[fi["events"]]
        if ev is not None:
            event_times += zigzag(unplanes(ev[2], sum(ev[0]), "event times"))
            planes_raw += ev[2]
            ev = [ev[0], ev[1], None, ev[3]]
        d = list(doc)
        d[fi["span_ids"]] = d[fi["trace_ids"]] = d[fi["base"]] = d[fi["starts"]] = d[fi["ends"]] = None
        d[fi["trace_column"]] = [t if type(t) is int else None for t in doc[fi["trace_column"]]]
        d[fi["parent_column"]] = [p if type(p) is int else None for p in doc[fi["parent_column"]]]
        d[fi["events"]] = ev
        rest += cbor2.dumps(d)
    floor = id_floor(bs)
    ids_best = _best_compressed(bytes(ids))
    time_bits = _magnitude_bits(starts) + _magnitude_bits(ends) + _magnitude_bits(event_times)
    planes_best = _best_compressed(bytes(planes_raw))
    rest_best = _best_compressed(bytes(rest))
    rest_min = min(rest_best.values())
    times = min(time_bits / 8, min(planes_best.values()))
    return {"id_floor": round(floor / n, 2), "ids_raw": round(len(ids) / n, 2),
            "ids_best_compressed": round(min(ids_best.values()) / n, 2),
            "time_entropy": round(time_bits / 8 / n, 2),
            "time_planes_best_compressed": round(min(planes_best.values()) / n, 2),
            "rest_raw": round(len(rest) / n, 2), "rest_best_compressed": round(rest_min / n, 2),
            "rest_by_compressor": {k: round(v / n, 2) for k, v in rest_best.items()},
            "bound": round((floor + times + rest_min) / n, 2)}


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
    """Encode and decode CPU time per span, format 4 (learned tables), format 2 and the same-run reference on the
    same batches: OTLP+zstd (the span model to an OTLP protobuf request, serialized, zstd at `level`; decoded by the
    official protobuf runtime, and, for the same result as a gateway's decode, on into the span model)."""
    n = sum(len(b) for b in bs)
    enc = [columnar.encode(b, NODE, i, tables, level=level) for i, b in enumerate(bs)]
    old = [encode_batch(b, NODE, i, level=v2_level, version=2) for i, b in enumerate(bs)]
    zc, zd = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
    otlp = [zc.compress(request_from_spans(b, source_attribute=False).SerializeToString()) for b in bs]
    e3 = best_cpu(lambda: [columnar.encode(b, NODE, i, tables, level=level) for i, b in enumerate(bs)], repeat)
    d3 = best_cpu(lambda: [_decode(x, tables) for x in enc], repeat)
    e2 = best_cpu(lambda: [encode_batch(b, NODE, i, level=v2_level, version=2) for i, b in enumerate(bs)], repeat)
    d2 = best_cpu(lambda: [decode_batch(x, MAX_BYTES) for x in old], repeat)
    eo = best_cpu(lambda: [zc.compress(request_from_spans(b, source_attribute=False).SerializeToString())
                           for b in bs], repeat)
    po = best_cpu(lambda: [ExportTraceServiceRequest.FromString(zd.decompress(x)) for x in otlp], repeat)
    mo = best_cpu(lambda: [spans_from_request(ExportTraceServiceRequest.FromString(zd.decompress(x)))
                           for x in otlp], repeat)
    out: dict[str, float] = {}
    if accel.status().compiled:  # the same-run figures of the pure-Python encoder and decoder (no compiled module)
        pure = accel.modules("pure")["uplink.wire.columnar"]
        ep = best_cpu(lambda: [pure.encode(b, NODE, i, tables, level=level) for i, b in enumerate(bs)], repeat)
        dp = best_cpu(lambda: [pure.decode(x, read_header(x), tables, MAX_BYTES) for x in enc], repeat)
        out = {"pure_encode_us_per_span": round(ep / n * 1e6, 2), "pure_decode_spans_per_s": round(n / dp)}
    return out | {"encode_us_per_span": round(e3 / n * 1e6, 2), "decode_spans_per_s": round(n / d3),
            "v2_encode_us_per_span": round(e2 / n * 1e6, 2), "v2_decode_spans_per_s": round(n / d2),
            "encode_vs_v2": round(e3 / e2, 2), "decode_vs_v2": round(d3 / d2, 2),
            "otlp_zstd_encode_us_per_span": round(eo / n * 1e6, 2), "encode_vs_otlp_zstd": round(e3 / eo, 2),
            "otlp_protobuf_parse_spans_per_s": round(n / po), "decode_vs_otlp_protobuf_parse": round(d3 / po, 2),
            "otlp_to_model_spans_per_s": round(n / mo), "decode_vs_otlp_to_model": round(d3 / mo, 2)}


def levels(bs: list[Sequence[Span]], tables: TableSet, repeat: int) -> dict[str, dict[str, float]]:
    """Bytes per span and zstd CPU per span of format 4 at each zstd level (the body encoded once)."""
    n = sum(len(b) for b in bs)
    raws = [columnar.body(b, NODE, i, tables, created_ns=i) for i, b in enumerate(bs)]
    out = {}
    for lv in (1, 3, 6, 9, 19):
        zc = tables.compressor(lv)
        size = sum(len(zc.compress(r)) for r in raws)
        cpu = best_cpu(lambda: [zc.compress(r) for r in raws], repeat)
        out[f"level_{lv}"] = {"bytes_per_span": round(size / n, 2), "zstd_us_per_span": round(cpu / n * 1e6, 2)}
    return out


def node_memory(train: Sequence[Span], limits: TrainingLimits) -> dict[str, int]:
    """What a node holds to encode with a learned table set (counted by the set itself, and traced allocations),
    and what a gateway holds per cached set (counted by the set, and traced allocations of parsing its message and
    decoding a batch)."""
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
    return {"node_bytes": tables.node_bytes(), "traced_python_bytes": held, "gateway_bytes": fetched.gateway_bytes(),
            "gateway_python_bytes": gateway, "compressor_bytes": tables.compressor(3).memory_size(),
            "decompressor_bytes": fetched.decompressor().memory_size(), "message_bytes": len(msg)}


def policies(spans: Sequence[Span], size: int, base: LearningPolicy, sample_bytes: int,
             rates: Sequence[float] = (2.0, 20.0, 200.0)) -> dict[str, Any]:
    """The node figure under other learning policies: rates, intervals, with and without the early candidate, and
    other sample sizes."""
    out = {}
    keys = ("bytes_per_span", "batches_bytes_per_span", "candidates", "adopted", "early", "learn_cpu_s")
    for rate in rates:
        for interval in (60.0, 600.0, 3600.0):
            for degrade in (base.degrade, float("inf")):
                p = replace(base, interval=interval, degrade=degrade, min_gap=min(base.min_gap, interval))
                r = replay(spans, size, p, rate, sample_bytes)
                key = f"rate {rate:g}/s, every {interval:g} s{'' if degrade != float('inf') else ', no early'}"
                out[key] = {k: r[k] for k in keys}
    for mib in (0.25, 1, 4):
        r = replay(spans, size, base, 20.0, int(mib * 1024 * 1024))
        out[f"rate 20/s, sample {mib:g} MiB"] = {k: r[k] for k in (*keys, "sample_spans")}
    return out


def shifted_stream(streams: dict[str, list[Span]], generator_spans: int) -> list[Span]:
    """A node whose traffic changes: the generator's spans, then the real sub-corpora's (Data Prepper, HotROD and
    dd-trace-py spans, each sent three times under fresh ids), as after a deployment."""
    import hashlib

    def fresh(k: int, old: bytes) -> bytes:
        return hashlib.blake2b(bytes([k]) + old, digest_size=len(old)).digest() if old else old

    later = [s for name in ("dataprepper-sample-app", "hotrod-jaeger", "ddtrace-py-snapshots") for s in streams[name]]
    copies = [replace(s, trace_id=fresh(k, s.trace_id), span_id=fresh(k, s.span_id),
                      parent_span_id=fresh(k, s.parent_span_id)) for k in range(3) for s in later]
    return list(streams["generator"][:generator_spans]) + copies


def main() -> None:
    """Measure every stream, print the tables, then the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=None, help="the demo-apps folder (default: HELIX_CORPUS or ../shared)")
    ap.add_argument("--batches", default="512,32", help="comma-separated batch sizes")
    ap.add_argument("--level", type=int, default=3, help="zstd level of every encoding (OTLP+zstd included)")
    ap.add_argument("--train-fraction", type=float, default=0.3, help="learned: share of each stream learned from")
    ap.add_argument("--rate", type=float, default=20.0, help="node: spans per second the replayed node sends")
    ap.add_argument("--generator-traces", type=int, default=1000, help="traces of bench/_workload.py (seed 1)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per speed figure (the least CPU time counts)")
    ap.add_argument("--breakdown", action="store_true", help="also what each body field costs (learned)")
    ap.add_argument("--policies", action="store_true", help="also the node figure under other learning policies")
    ap.add_argument("--levels", action="store_true", help="also format 4 at zstd levels 1, 3, 6, 9 and 19")
    ap.add_argument("--bound", action="store_true",
                    help="also the lower bound: entropy of ids and times, the best compressor on the rest")
    ap.add_argument("--no-speed", action="store_true", help="leave out the encode and decode timings")
    args = ap.parse_args()
    sizes = [int(x) for x in args.batches.split(",")]
    cfg = UplinkConfig()
    policy = replace(LearningPolicy.of(cfg), level=args.level)
    limits = policy.limits
    sample_bytes = cfg.learn_memory

    streams = dict(load_all(args.root))
    real = list(streams)
    streams["generator"] = realistic_spans(args.generator_traces, seed=1)
    calib = calibration_s()
    result: dict[str, Any] = {"level": args.level, "train_fraction": args.train_fraction, "rate": args.rate,
                              "policy": {"interval_s": policy.interval, "after": policy.after,
                                         "degrade": policy.degrade, "min_gap_s": policy.min_gap,
                                         "sample_bytes": sample_bytes},
                              "calibration_loop_s": round(calib, 4), "streams": {}}
    totals: dict[int, dict[str, float]] = {size: {} for size in sizes}

    for name, spans in streams.items():
        k = int(len(spans) * args.train_fraction)
        train, test = spans[:k], spans[k:]
        tables = columnar.learn(train, limits, node_id=NODE, created_ns=0) if train else EMPTY
        row: dict[str, Any] = {"spans": len(spans), "train_spans": k,
                               "table_set": node_memory(train, limits) if train else {}}
        for size in sizes:
            all_b, test_b = batches(spans, size), batches(test, size)
            n_all, n_test = len(spans), len(test)
            fig: dict[str, Any] = {
                "otlp_zstd": otlp_zstd(test_b, args.level) / n_test,
                "v2_dict": shipped(test_b, args.level) / n_test,
                "v3_learned": columnar_bytes(test_b, tables, args.level, version=3) / n_test,
                "cold": columnar_bytes(test_b, EMPTY, args.level) / n_test,
                "learned": columnar_bytes(test_b, tables, args.level) / n_test,
                "id_floor": id_floor(test_b) / n_test,
            }
            fig = {k2: round(v, 2) for k2, v in fig.items()}
            fig["ratio_learned_vs_otlp_zstd"] = round(fig["otlp_zstd"] / fig["learned"], 2)
            fig["ratio_cold_vs_otlp_zstd"] = round(fig["otlp_zstd"] / fig["cold"], 2)
            node = replay(spans, size, policy, args.rate, sample_bytes)
            node["otlp_zstd"] = round(otlp_zstd(all_b, args.level) / n_all, 2)
            node["ratio_vs_otlp_zstd"] = round(node["otlp_zstd"] / node["bytes_per_span"], 2)
            fig["node"] = node
            if not args.no_speed:
                fig["speed"] = speed(test_b, tables, args.level, args.level, args.repeat)
                fig["speed"]["encode_us_per_span_per_calibration_s"] = round(fig["speed"]["encode_us_per_span"] / calib,
                                                                             1)
            if args.bound:
                fig["bound"] = lower_bound(test_b, tables)
            if args.breakdown:
                fig["breakdown"] = breakdown(test_b, tables, args.level)
            if args.levels:
                fig["levels"] = levels(test_b, tables, args.repeat)
            if args.policies:
                fig["policies"] = policies(spans, size, policy, sample_bytes)
            row[f"batch_{size}"] = fig
            if name in real:
                t = totals[size]
                for key in _SUMMED:
                    t[key] = t.get(key, 0.0) + fig[key] * n_test
                if args.breakdown:
                    bd = fig["breakdown"]
                    for key in ("total", "stream_bound", *(f"plane {p}" for p in bd["planes"])):
                        v = bd[key] if key in bd else bd["planes"][key[6:]]
                        t[key] = t.get(key, 0.0) + v * n_test
                if args.bound:
                    for key in ("id_floor", "ids_best_compressed", "time_entropy", "time_planes_best_compressed",
                                "rest_best_compressed", "bound"):
                        t[f"bound {key}"] = t.get(f"bound {key}", 0.0) + fig["bound"][key] * n_test
                t["spans"] = t.get("spans", 0) + n_test
                t["node_bytes"] = t.get("node_bytes", 0.0) + node["bytes_per_span"] * n_all
                t["node_otlp"] = t.get("node_otlp", 0.0) + node["otlp_zstd"] * n_all
                t["node_batches"] = t.get("node_batches", 0.0) + node["batches_bytes_per_span"] * n_all
                t["node_sets"] = t.get("node_sets", 0) + node["table_set_bytes"]
                t["node_spans"] = t.get("node_spans", 0) + n_all
        result["streams"][name] = row
        _print_stream(name, row, sizes)

    result["streams"][REAL] = {}
    for size in sizes:
        t = totals[size]
        agg: dict[str, Any] = {key: round(t[key] / t["spans"], 2) for key in _SUMMED}
        agg["ratio_learned_vs_otlp_zstd"] = round(agg["otlp_zstd"] / agg["learned"], 2)
        agg["spans"] = int(t["spans"])
        agg["node"] = {"bytes_per_span": round(t["node_bytes"] / t["node_spans"], 2),
                       "batches_bytes_per_span": round(t["node_batches"] / t["node_spans"], 2),
                       "table_set_bytes": int(t["node_sets"]),
                       "otlp_zstd": round(t["node_otlp"] / t["node_spans"], 2), "spans": int(t["node_spans"])}
        agg["node"]["ratio_vs_otlp_zstd"] = round(agg["node"]["otlp_zstd"] / agg["node"]["bytes_per_span"], 2)
        if args.breakdown:
            agg["breakdown"] = {"total": round(t["total"] / t["spans"], 2),
                                "stream_bound": round(t["stream_bound"] / t["spans"], 2),
                                "planes": {k[6:]: round(v / t["spans"], 2) for k, v in
                                           sorted(t.items(), key=lambda kv: -kv[1]) if k.startswith("plane ")}}
            agg["stream_bound_ratio_vs_otlp_zstd"] = round(agg["otlp_zstd"] / agg["breakdown"]["stream_bound"], 2)
        if args.bound:
            agg["bound"] = {k[6:]: round(v / t["spans"], 2) for k, v in t.items() if k.startswith("bound ")}
            agg["bound"]["ratio_vs_otlp_zstd"] = round(agg["otlp_zstd"] / agg["bound"]["bound"], 2)
            b = agg["bound"]
            print(f"{REAL}, batches of {size}, lower bound: ids {b['id_floor']} (best compressor on them "
                  f"{b['ids_best_compressed']}), times {b['time_entropy']} (entropy; best compressor on the planes "
                  f"{b['time_planes_best_compressed']}), the rest {b['rest_best_compressed']} (best compressor, whole "
                  f"stream): {b['bound']} B/span, {b['ratio_vs_otlp_zstd']}x OTLP+zstd {agg['otlp_zstd']}")
        result["streams"][REAL][f"batch_{size}"] = agg
        print(f"{REAL}, batches of {size}: evaluation spans OTLP+zstd {agg['otlp_zstd']}, v2+dict {agg['v2_dict']}, "
              f"format 4 cold {agg['cold']}, learned {agg['learned']} B/span (format 3 learned {agg['v3_learned']}) "
              f"({agg['ratio_learned_vs_otlp_zstd']}x better than OTLP+zstd; id floor {agg['id_floor']}); "
              f"whole streams as a node sends them {agg['node']['bytes_per_span']} against {agg['node']['otlp_zstd']} "
              f"({agg['node']['ratio_vs_otlp_zstd']}x; {agg['node']['batches_bytes_per_span']} without the "
              f"{agg['node']['table_set_bytes']} B of table-set messages)")
        if args.breakdown:
            bd = agg["breakdown"]
            print(f"{REAL}, batches of {size}, learned, bytes/span by plane: "
                  + ", ".join(f"{k} {v}" for k, v in bd["planes"].items())
                  + f"; stream bound {bd['stream_bound']} ({agg['stream_bound_ratio_vs_otlp_zstd']}x OTLP+zstd)")
    if args.policies:
        shifted = shifted_stream(streams, 33_000)
        result["shifted"] = {}
        for size in sizes:
            result["shifted"][f"batch_{size}"] = policies(shifted, size, policy, sample_bytes, rates=(20.0,))
            for k, v in result["shifted"][f"batch_{size}"].items():
                print(f"shifted stream ({len(shifted)} spans), batches of {size}: {k}: "
                      + ", ".join(f"{a} {b}" for a, b in v.items()))
    print(f"calibration loop: {calib:.3f} s CPU")
    print(json.dumps(result))


def _print_stream(name: str, row: dict[str, Any], sizes: list[int]) -> None:
    print(f"== {name}: {row['spans']} spans, learned from the first {row['train_spans']}")
    if row["table_set"]:
        m = row["table_set"]
        print(f"   table set: message {m['message_bytes']} B, node holds {m['node_bytes']} B "
              f"(zstd compressor {m['compressor_bytes']} B), a gateway {m['gateway_bytes']} B "
              f"(zstd {m['decompressor_bytes']} B)")
    print(f"   {'batch':>5} | {'OTLP+zstd':>9} {'v2+dict':>8} {'v3 lrnd':>8} {'cold':>8} {'learned':>8} {'ratio':>6} "
          f"{'id floor':>8} | {'node':>6} {'OTLP':>6} {'ratio':>6} {'sets':>4} | {'enc us':>7} {'v2':>6} "
          f"{'dec/s':>8} {'v2':>7}")
    for size in sizes:
        f = row[f"batch_{size}"]
        nd, sp = f["node"], f.get("speed", dict.fromkeys(("encode_us_per_span", "v2_encode_us_per_span",
                                                            "decode_spans_per_s", "v2_decode_spans_per_s"), "-"))
        print(f"   {size:>5} | {f['otlp_zstd']:>9} {f['v2_dict']:>8} {f['v3_learned']:>8} {f['cold']:>8} "
              f"{f['learned']:>8} "
              f"{f['ratio_learned_vs_otlp_zstd']:>5}x {f['id_floor']:>8} | {nd['bytes_per_span']:>6} "
              f"{nd['otlp_zstd']:>6} {nd['ratio_vs_otlp_zstd']:>5}x {nd['adopted']:>4} | "
              f"{sp['encode_us_per_span']:>7} {sp['v2_encode_us_per_span']:>6} {sp['decode_spans_per_s']:>8} "
              f"{sp['v2_decode_spans_per_s']:>7}")
    for size in sizes:
        sp = row[f"batch_{size}"].get("speed")
        if sp is None:
            continue
        print(f"   {size:>5}: encode {sp['encode_us_per_span']} us/span, OTLP+zstd "
              f"{sp['otlp_zstd_encode_us_per_span']} (x{sp['encode_vs_otlp_zstd']}); decode "
              f"{sp['decode_spans_per_s']} spans/s, official protobuf parse {sp['otlp_protobuf_parse_spans_per_s']} "
              f"(time x{sp['decode_vs_otlp_protobuf_parse']}), parse into the span model "
              f"{sp['otlp_to_model_spans_per_s']} (time x{sp['decode_vs_otlp_to_model']})"
              + (f"; pure Python: encode {sp['pure_encode_us_per_span']}, decode {sp['pure_decode_spans_per_s']}"
                 if "pure_encode_us_per_span" in sp else ""))
    for size in sizes:
        f = row[f"batch_{size}"]
        if "breakdown" in f:
            bd = f["breakdown"]
            print(f"   {size:>5}: bytes/span by plane (total {bd['total']}, of which header and zstd frame "
                  f"{bd['header_and_frame']}; planes sum to {bd['sum_of_planes']}; stream bound {bd['stream_bound']}): "
                  + ", ".join(f"{k} {v}" for k, v in bd["planes"].items()))
            print(f"   {size:>5}: attribute values by key: "
                  + ", ".join(f"{k} {v}" for k, v in bd["values_by_key"].items()))
        if "bound" in f:
            b = f["bound"]
            print(f"   {size:>5}: lower bound {b['bound']} B/span = ids {b['id_floor']} (raw {b['ids_raw']}, best "
                  f"compressor {b['ids_best_compressed']}) + times {b['time_entropy']} (entropy; planes best "
                  f"compressor {b['time_planes_best_compressed']}) + rest {b['rest_best_compressed']} "
                  f"(raw {b['rest_raw']}; "
                  + ", ".join(f"{k} {v}" for k, v in b["rest_by_compressor"].items()) + ")")
        if "levels" in f:
            print(f"   {size:>5}: zstd levels: " + ", ".join(f"{k[6:]}: {v['bytes_per_span']} B "
                                                          f"+{v['zstd_us_per_span']} us" for k, v in f["levels"].items()))
        for k, v in f.get("policies", {}).items():
            print(f"   {size:>5}: {k}: " + ", ".join(f"{a} {b}" for a, b in v.items()))


if __name__ == "__main__":
    main()
