"""Gateway CPU cost on one core: Helix batch (the default format, no table set) -> decoded spans -> OTLP protobuf
request bytes, in CPU time of the process (the machine may be shared), and the process's peak RSS under that load.

What the gateway runs: the batch decoded straight into its OTLP request (uplink/wire/columnar_otlp.py: no span
objects, the expansion against the gateway's bound counted as the bytes are written), compiled by the accelerator
where it is built (edge/accel.py). The bench checks its bytes equal to the span path's on every batch.
Same-run references, on the same batches:
- `span_path`: what the gateway ran before: the batch decoded into spans (uplink/wire/columnar.py, with the same
  count) and the request written from the spans (edge/codec/otlp_writer.py); `decode_spans_per_s` and
  `request_spans_per_s` are its two halves;
- `official_request`: the request built with the official protobuf classes (`request_from_spans`) and serialized,
  after the same decoding: what the gateway did before; the writer's bytes are checked equal to it;
- `pure`: the pure-Python decoder and writer, when the compiled ones run; `pure_decoder`: the pure-Python decoder
  beside the compiled writer (the accelerator before it compiled the decoder);
- `otlp_zstd`: what a gateway receiving OTLP+zstd (level 3) of the same batches would do for the same result with
  the official runtime: decompress, parse, serialize again (`ratio_vs_reference` is its spans/s over ours).

Run: python bench/gateway_throughput.py [--traces N] [--batch 512] [--corpus]. `--corpus` adds the real spans of
the demo-apps corpus (bench/corpus.py), per sub-corpus. The last line is one JSON object with `spans_per_s`
and `rss_mib`.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from bench.corpus import load_all  # noqa: E402
from bench.uplink_corpus import best_cpu  # noqa: E402
from edge import accel  # noqa: E402
from edge.codec.otlp import ExportTraceServiceRequest, request_from_spans  # noqa: E402
from edge.model import Span  # noqa: E402
from uplink.gateway.budget import expansion_limit  # noqa: E402
from uplink.wire import declared_size, encode_batch, read_header  # noqa: E402
from uplink.wire.columnar import MAX_SPANS  # noqa: E402
from uplink.wire.tables import EMPTY  # noqa: E402

MAX_BYTES = 64 * 1024 * 1024


def measure(spans: Sequence[Span], size: int, rounds: int) -> dict[str, Any]:
    """Spans/s of decode + request per implementation and path, and of the OTLP+zstd reference, on one stream."""
    n = len(spans)
    payloads = [encode_batch(spans[i:i + size], "edge-node-01", i) for i in range(0, n, size)]
    # The gateway bounds what each batch may expand to, so its decoder counts the request's bytes as it goes.
    limits = [expansion_limit(declared_size(p)) for p in payloads]
    out: dict[str, Any] = {"spans": n}
    dec: dict[str, float] = {}
    req: dict[str, float] = {}
    direct: dict[str, float] = {}
    batches: list[list[Span]] = []
    for impl in accel.implementations()[::-1]:  # the one in use first
        mods = accel.modules(impl)
        decoder = mods["uplink.wire.columnar"]
        write = mods["edge.codec.otlp_writer"].request_bytes
        to_request = mods["uplink.wire.columnar_otlp"].decode_request
        decoded = [decoder.decode(p, read_header(p), EMPTY, MAX_BYTES, MAX_SPANS, lim) for p, lim in zip(payloads, limits)]
        for b, p, lim in zip(decoded, payloads, limits):
            assert write(b.spans) == request_from_spans(b.spans).SerializeToString()
            straight = to_request(p, read_header(p), EMPTY, MAX_BYTES, MAX_SPANS, lim)
            assert straight.request == write(b.spans) and straight.expanded == b.expanded
        decoded_spans = [b.spans for b in decoded]
        batches = batches or decoded_spans
        direct[impl] = best_cpu(lambda: [to_request(p, read_header(p), EMPTY, MAX_BYTES, MAX_SPANS, lim)
                                         for p, lim in zip(payloads, limits)], rounds)
        dec[impl] = best_cpu(lambda: [decoder.decode(p, read_header(p), EMPTY, MAX_BYTES, MAX_SPANS, lim)
                                      for p, lim in zip(payloads, limits)], rounds)
        req[impl] = best_cpu(lambda: [write(b) for b in decoded_spans], rounds)
    for impl in dec:
        d, r = dec[impl], req[impl]
        fig: dict[str, Any] = {"spans_per_s": round(n / direct[impl]),
                               "span_path": {"spans_per_s": round(n / (d + r)), "decode_spans_per_s": round(n / d),
                                             "request_spans_per_s": round(n / r), "decode_share": round(d / (d + r), 2)},
                               "speedup_vs_span_path": round((d + r) / direct[impl], 2)}
        if impl == accel.implementations()[-1]:
            out.update(fig)
        else:
            out["pure"] = fig
    d, r = dec[accel.implementations()[-1]], req[accel.implementations()[-1]]
    if "compiled" in dec:
        # What ran before the decoder was compiled: the pure-Python decoder beside the compiled request writer.
        out["pure_decoder"] = {"spans_per_s": round(n / (dec["pure"] + r)), "decode_spans_per_s": round(n / dec["pure"])}
    off = best_cpu(lambda: [request_from_spans(b).SerializeToString() for b in batches], rounds)
    out["official_request"] = {"spans_per_s": round(n / (d + off)), "request_spans_per_s": round(n / off)}
    out["speedup_vs_official_request"] = round((d + off) / direct[accel.implementations()[-1]], 2)
    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    otlp = [zc.compress(request_from_spans(spans[i:i + size]).SerializeToString()) for i in range(0, n, size)]
    ref = best_cpu(lambda: [ExportTraceServiceRequest.FromString(zd.decompress(p)).SerializeToString() for p in otlp],
               rounds)
    out["reference_otlp_zstd_spans_per_s"] = round(n / ref)
    out["ratio_vs_reference"] = round(out["reference_otlp_zstd_spans_per_s"] / out["spans_per_s"], 2)
    return out


def main() -> None:
    """Measure and print the summary and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5, help="runs per figure (the least CPU time counts)")
    ap.add_argument("--corpus", action="store_true", help="also the real spans of the demo-apps corpus")
    args = ap.parse_args()

    streams: dict[str, Sequence[Span]] = {"generator": realistic_spans(args.traces, seed=2)}
    if args.corpus:
        streams.update(load_all())
    result: dict[str, Any] = {"batch": args.batch, "implementation": accel.implementations()[-1]}
    for name, spans in streams.items():
        fig = measure(spans, args.batch, args.rounds)
        result[name] = fig
        pure = f"; pure Python {fig['pure']['spans_per_s']}" if "pure" in fig else ""
        sp = fig["span_path"]
        print(f"{name}: {fig['spans']} spans, batches of {args.batch}: {fig['spans_per_s']} spans/s on one core "
              f"decoded straight into the request{pure}; through spans {sp['spans_per_s']} (x{fig['speedup_vs_span_path']}"
              f" ours over it; decode {sp['decode_spans_per_s']}/s, request {sp['request_spans_per_s']}/s, "
              f"{sp['decode_share'] * 100:.0f}% in decoding); spans with the official classes building the request "
              f"{fig['official_request']['spans_per_s']} (x{fig['speedup_vs_official_request']}); OTLP+zstd reference "
              f"{fig['reference_otlp_zstd_spans_per_s']} ({fig['ratio_vs_reference']}x ours)")
    gen = result["generator"]
    result.update({"spans": gen["spans"], "spans_per_s": gen["spans_per_s"],
                   "speedup_vs_span_path": gen["speedup_vs_span_path"],
                   "reference_otlp_zstd_spans_per_s": gen["reference_otlp_zstd_spans_per_s"],
                   "ratio_vs_reference": gen["ratio_vs_reference"],
                   "rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    print(f"peak RSS {result['rss_mib']} MiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
