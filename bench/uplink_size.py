"""Uplink bytes per span on realistic traces: raw OTLP protobuf, OTLP+gzip, OTLP+zstd and the Helix batch format
(version 1, version 2, version 2 with the shipped zstd dictionary), at the batch sizes nodes send.

Run: python bench/uplink_size.py [--traces N] [--batches 32,512] [--level 3]. The last line is one JSON object.
The spans come from seed 1; the dictionary was trained on seed 101 (bench/train_dictionary.py).
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from edge.codec.otlp import request_from_spans
from uplink.wire import dictionaries
from uplink.wire import decode_batch, encode_batch

_ROWS = (("OTLP protobuf", "otlp_raw"), ("OTLP + gzip", "otlp_gzip"), ("OTLP + zstd", "otlp_zstd"),
         ("Helix batch v1", "helix_v1"), ("Helix batch v2", "helix_v2"), ("Helix batch + dictionary", "helix_dict"))


def measure(spans: list, size: int, level: int) -> dict[str, float]:
    """Bytes per span of each encoding, and Helix v2+dictionary encode/decode cost, for batches of `size` spans."""
    batches = [spans[i:i + size] for i in range(0, len(spans) - size + 1, size)]
    n = sum(len(b) for b in batches)
    zc = zstandard.ZstdCompressor(level=level)
    total = dict.fromkeys((k for _, k in _ROWS), 0)
    encode_s = decode_s = 0.0
    dict_id = dictionaries.CURRENT if dictionaries.available(dictionaries.CURRENT) else 0
    for seq, batch in enumerate(batches):
        pb = request_from_spans(batch, source_attribute=False).SerializeToString()
        total["otlp_raw"] += len(pb)
        total["otlp_gzip"] += len(gzip.compress(pb, compresslevel=6))
        total["otlp_zstd"] += len(zc.compress(pb))
        total["helix_v1"] += len(encode_batch(batch, "edge-node-01", seq, level=level, dictionary=0, version=1))
        total["helix_v2"] += len(encode_batch(batch, "edge-node-01", seq, level=level, dictionary=0, version=2))
        t0 = time.perf_counter()
        data = encode_batch(batch, "edge-node-01", seq, level=level, dictionary=dict_id, version=2)
        t1 = time.perf_counter()
        decoded = decode_batch(data, 64 * 1024 * 1024)
        t2 = time.perf_counter()
        assert decoded.spans == batch
        total["helix_dict"] += len(data)
        encode_s += t1 - t0
        decode_s += t2 - t1
    out: dict[str, float] = {f"{k}_bytes_per_span": round(v / n, 1) for k, v in total.items()}
    out.update(spans=n, encode_us_per_span=round(encode_s / n * 1e6, 2), decode_us_per_span=round(decode_s / n * 1e6, 2))
    return out


def main() -> None:
    """Measure and print one table per batch size, then the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--traces", type=int, default=1000)
    ap.add_argument("--batches", default="32,512", help="comma-separated batch sizes")
    ap.add_argument("--level", type=int, default=3, help="zstd level for OTLP+zstd and the Helix format")
    args = ap.parse_args()

    spans = realistic_spans(args.traces, seed=1)
    result: dict[str, object] = {"level": args.level, "dictionary": dictionaries.CURRENT}
    for size in (int(x) for x in args.batches.split(",")):
        r = measure(spans, size, args.level)
        result[f"batch_{size}"] = r
        print(f"{r['spans']} spans in batches of {size} (zstd level {args.level})")
        print(f"{'encoding':<26}{'bytes/span':>12}{'vs raw OTLP':>14}")
        for label, key in _ROWS:
            v = r[f"{key}_bytes_per_span"]
            print(f"{label:<26}{v:>12.1f}{r['otlp_raw_bytes_per_span'] / v:>13.1f}x")
        print(f"Helix v2 + dictionary: encode {r['encode_us_per_span']} us/span, decode {r['decode_us_per_span']} us/span\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
