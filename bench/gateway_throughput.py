"""Gateway CPU cost on one core: Helix batch (the default format, no table set) -> decoded spans -> OTLP protobuf
request bytes, in CPU time of the process (the machine may be shared), and the process's peak RSS under that load.
Same-run reference: what a gateway receiving OTLP+zstd (level 3) of the same batches would do for the same result,
with the official protobuf runtime: decompress, parse, serialize the request again; `ratio_vs_reference` is the
reference's spans/s over ours (above 1: ours is slower).

Run: python bench/gateway_throughput.py [--traces N] [--batch 512]. The last line is one JSON object with
`spans_per_s` and `rss_mib`.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from edge.codec.otlp import ExportTraceServiceRequest, request_from_spans  # noqa: E402
from uplink.wire import decode_batch, encode_batch


def main() -> None:
    """Measure and print the summary and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--traces", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    spans = realistic_spans(args.traces, seed=2)
    payloads = [encode_batch(spans[i:i + args.batch], "edge-node-01", i) for i in range(0, len(spans), args.batch)]
    n = 0
    t0 = time.process_time()
    decode_s = 0.0
    for _ in range(args.rounds):
        for p in payloads:
            d0 = time.process_time()
            batch = decode_batch(p, 64 * 1024 * 1024)
            decode_s += time.process_time() - d0
            request_from_spans(batch.spans).SerializeToString()
            n += len(batch.spans)
    elapsed = time.process_time() - t0
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    otlp = [zc.compress(request_from_spans(spans[i:i + args.batch]).SerializeToString())
            for i in range(0, len(spans), args.batch)]
    r0 = time.process_time()
    for _ in range(args.rounds):
        for p in otlp:
            ExportTraceServiceRequest.FromString(zd.decompress(p)).SerializeToString()
    reference = len(spans) * args.rounds / (time.process_time() - r0)
    result = {"spans": n, "spans_per_s": round(n / elapsed), "decode_share": round(decode_s / elapsed, 2),
              "rss_mib": round(rss_mib, 1), "reference_otlp_zstd_spans_per_s": round(reference),
              "ratio_vs_reference": round(reference / (n / elapsed), 2)}
    print(f"{n} spans in {elapsed:.2f}s of CPU: {result['spans_per_s']} spans/s on one core "
          f"({result['decode_share'] * 100:.0f}% in batch decoding, the rest building OTLP); "
          f"peak RSS {rss_mib:.1f} MiB")
    print(f"same-run reference, OTLP+zstd through the official protobuf runtime: {round(reference)} spans/s "
          f"({result['ratio_vs_reference']}x ours)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
