"""What one decoded span costs the agent: bytes held (tracemalloc) and decode time, per wire format.

Decodes `bench/_workload.py` spans the way the receivers do: OTLP export requests of 100 spans (protobuf) and
lightweight-SDK CBOR messages of 50 spans. Bytes held is everything the decoded spans keep alive, measured with
tracemalloc after the wire bytes are gone; `estimate` is `Span.approx_size()`, the figure every buffer budgets with.
`otlp_wire_*`: the same OTLP requests read by the agent's own wire reader (edge/codec/otlp_wire.py), which the
receivers use, against `otlp_*` from the official protobuf classes.
`packed_*`: the same spans (both formats) as the tail buffer holds them while they wait for a decision
(edge/sampler/packed.py): bytes held once the decoded spans are gone, word table included, its estimate, and the
time to pack and to unpack one span.

    python bench/span_memory.py [--spans 10000]

Last line: {"otlp_bytes_per_span", "otlp_estimate", "otlp_decode_us", "otlp_wire_bytes_per_span", "otlp_wire_decode_us",
"cbor_bytes_per_span", "cbor_estimate", "cbor_decode_us", "packed_bytes_per_span", "packed_estimate", "pack_us",
"unpack_us", "spans"}
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
from edge.codec.otlp_wire import decode_export_request  # noqa: E402
from edge.codec.sdk_cbor import decode_payload, encode_payload  # noqa: E402
from edge.model import Span  # noqa: E402
from edge.sampler.packed import SpanPacker, packed_size  # noqa: E402


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


def packed(spans: list[Span]) -> tuple[float, float, float, float]:
    """Bytes held per packed span once the decoded ones are gone, its estimate, and pack/unpack microseconds."""
    packer = SpanPacker()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        held_spans = [packer.pack(s) for s in spans]
        n = len(spans)
        spans.clear()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base - 8 * n
    finally:
        tracemalloc.stop()
    estimate = (sum(packed_size(p) for p in held_spans) + packer.bytes) / n
    t = time.perf_counter()
    back = [packer.unpack(p) for p in held_spans]
    unpack_us = (time.perf_counter() - t) / n * 1e6
    best = float("inf")
    for _ in range(3):
        fresh = SpanPacker()
        t = time.perf_counter()
        for s in back:
            fresh.pack(s)
        best = min(best, time.perf_counter() - t)
    return used / n, estimate, best / n * 1e6, unpack_us


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

    def otlp_wire() -> list[Span]:
        return [s for r in reqs for s in decode_export_request(r)]

    def cbor() -> list[Span]:
        return [s for m in msgs for s in sized(decode_payload(m, {"service.name": "bench-device"}).spans)]

    otlp()  # warm: first use fills the shared-string table, which is the agent's, not a span's
    o_bytes, o_est = held(otlp)
    w_bytes, _ = held(otlp_wire)
    c_bytes, c_est = held(cbor)
    o_us, w_us, c_us = timed(otlp, n), timed(otlp_wire, n), timed(cbor, n)
    print(f"OTLP: {o_bytes:.0f} B held per span (estimate {o_est:.0f}), {o_us:.1f} us to decode", file=sys.stderr)
    print(f"OTLP, wire reader: {w_bytes:.0f} B held per span, {w_us:.1f} us to decode", file=sys.stderr)
    print(f"CBOR: {c_bytes:.0f} B held per span (estimate {c_est:.0f}), {c_us:.1f} us to decode", file=sys.stderr)
    p_bytes, p_est, pack_us, unpack_us = packed(otlp() + cbor())
    print(f"packed: {p_bytes:.0f} B held per span (estimate {p_est:.0f}), {pack_us:.1f} us to pack, "
          f"{unpack_us:.1f} us to unpack", file=sys.stderr)
    print(json.dumps({"otlp_bytes_per_span": round(o_bytes), "otlp_estimate": round(o_est),
                      "otlp_decode_us": round(o_us, 1), "otlp_wire_bytes_per_span": round(w_bytes),
                      "otlp_wire_decode_us": round(w_us, 1), "cbor_bytes_per_span": round(c_bytes),
                      "cbor_estimate": round(c_est), "cbor_decode_us": round(c_us, 1),
                      "packed_bytes_per_span": round(p_bytes), "packed_estimate": round(p_est),
                      "pack_us": round(pack_us, 2), "unpack_us": round(unpack_us, 2), "spans": n}))


if __name__ == "__main__":
    main()
