"""Uplink bytes per span on realistic traces: raw OTLP protobuf, OTLP+gzip, OTLP+zstd and the Helix batch format.

Run: python bench/uplink_size.py [--traces N] [--batch 512]. The last line is one JSON object.
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
from uplink.wire import decode_batch, encode_batch


def main() -> None:
    """Measure and print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--traces", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--level", type=int, default=3, help="zstd level for OTLP+zstd and the Helix format")
    args = ap.parse_args()

    spans = realistic_spans(args.traces, seed=1)
    batches = [spans[i:i + args.batch] for i in range(0, len(spans) - args.batch + 1, args.batch)]
    n = sum(len(b) for b in batches)
    zc = zstandard.ZstdCompressor(level=args.level)
    raw = gz = zs = helix = 0
    encode_s = decode_s = 0.0
    for seq, batch in enumerate(batches):
        pb = request_from_spans(batch, source_attribute=False).SerializeToString()
        raw += len(pb)
        gz += len(gzip.compress(pb, compresslevel=6))
        zs += len(zc.compress(pb))
        t0 = time.perf_counter()
        data = encode_batch(batch, "edge-node-01", seq, level=args.level)
        t1 = time.perf_counter()
        decoded = decode_batch(data, 64 * 1024 * 1024)
        t2 = time.perf_counter()
        assert decoded.spans == batch
        helix += len(data)
        encode_s += t1 - t0
        decode_s += t2 - t1

    result = {
        "spans": n,
        "batch_spans": args.batch,
        "otlp_raw_bytes_per_span": round(raw / n, 1),
        "otlp_gzip_bytes_per_span": round(gz / n, 1),
        "otlp_zstd_bytes_per_span": round(zs / n, 1),
        "helix_bytes_per_span": round(helix / n, 1),
        "encode_us_per_span": round(encode_s / n * 1e6, 2),
        "decode_us_per_span": round(decode_s / n * 1e6, 2),
    }
    print(f"{n} spans in {len(batches)} batches of {args.batch} (zstd level {args.level})")
    print(f"{'encoding':<16}{'bytes/span':>12}{'vs raw OTLP':>14}")
    for label, key in (("OTLP protobuf", "otlp_raw_bytes_per_span"), ("OTLP + gzip", "otlp_gzip_bytes_per_span"),
                       ("OTLP + zstd", "otlp_zstd_bytes_per_span"), ("Helix batch", "helix_bytes_per_span")):
        v = result[key]
        print(f"{label:<16}{v:>12.1f}{result['otlp_raw_bytes_per_span'] / v:>13.1f}x")
    print(f"Helix encode {result['encode_us_per_span']} us/span, decode {result['decode_us_per_span']} us/span")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
