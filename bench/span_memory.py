"""What one decoded span costs the agent: bytes held (tracemalloc) and decode time, per wire format.

Decodes `bench/_workload.py` spans the way the receivers do: OTLP export requests of 100 spans (protobuf) and
lightweight-SDK CBOR messages of 50 spans. Bytes held is everything the decoded spans keep alive, measured with
tracemalloc after the wire bytes are gone; `estimate` is `Span.approx_size()`, the figure every buffer budgets with.

    python bench/span_memory.py [--spans 10000]

Last line: {"otlp_bytes_per_span", "otlp_estimate", "otlp_decode_us", "cbor_bytes_per_span", "cbor_estimate",
"cbor_decode_us", "spans"}
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from edge.codec.otlp import parse_request_protobuf, request_from_spans, spans_from_request  # noqa: E402
from edge.codec.sdk_cbor import decode_payload, encode_payload  # noqa: E402
from edge.model import Span  # noqa: E402


def sized(spans: list[Span]) -> list[Span]:
    """Take each span's size estimate at once, as the agent's inbox does when it admits a message."""
    for s in spans:
        s.approx_size()
    return spans


def held(decode: Callable[[], list[Span]]) -> tuple[float, float]:
    """Bytes held per decoded span (its cached size estimate included), and the mean size estimate."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        spans = decode()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base - 8 * len(spans)  # minus the list holding them
    finally:
        tracemalloc.stop()
    return used / len(spans), sum(s.approx_size() for s in spans) / len(spans)


def timed(decode: Callable[[], list[Span]], n: int) -> float:
    """Best of five: microseconds per span to decode and size."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        decode()
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=10000, help="spans per wire format (default 10000)")
    args = ap.parse_args()
    n = args.spans - args.spans % 100
    spans = realistic_spans(2 * n // 11 + 2, seed=5)[:2 * n]
    reqs = [request_from_spans(spans[i:i + 100]).SerializeToString() for i in range(0, n, 100)]
    msgs = [encode_payload(spans[n + i:n + i + 50], {"service.name": "bench-device"}) for i in range(0, n, 50)]
    del spans

    def otlp() -> list[Span]:
        return [s for r in reqs for s in sized(spans_from_request(parse_request_protobuf(r)))]

    def cbor() -> list[Span]:
        return [s for m in msgs for s in sized(decode_payload(m, {"service.name": "bench-device"}).spans)]

    otlp()  # warm: first use fills the shared-string table, which is the agent's, not a span's
    o_bytes, o_est = held(otlp)
    c_bytes, c_est = held(cbor)
    o_us, c_us = timed(otlp, n), timed(cbor, n)
    print(f"OTLP: {o_bytes:.0f} B held per span (estimate {o_est:.0f}), {o_us:.1f} us to decode", file=sys.stderr)
    print(f"CBOR: {c_bytes:.0f} B held per span (estimate {c_est:.0f}), {c_us:.1f} us to decode", file=sys.stderr)
    print(json.dumps({"otlp_bytes_per_span": round(o_bytes), "otlp_estimate": round(o_est),
                      "otlp_decode_us": round(o_us, 1), "cbor_bytes_per_span": round(c_bytes),
                      "cbor_estimate": round(c_est), "cbor_decode_us": round(c_us, 1), "spans": n}))


if __name__ == "__main__":
    main()
