"""Memory a gateway needs per inflated byte of a batch, on hostile bodies built to cost the most and on real ones:
the figure behind `uplink/gateway/budget.py`'s DECODE_FACTOR, which must stay above every ratio printed here.

For each body: the peak bytes Python allocates (tracemalloc) while the batch is decoded (with the gateway's expansion
limit), its OTLP request is built and serialised, as the gateway does, divided by the size its zstd frame declares.

    python bench/gateway_decode_cost.py

Same-run reference: real batches of the workload (512 spans, as nodes cut them by default).
Last line: {"decode_factor", "worst_ratio", "worst_body", "ratios": {...}, "real_ratio", "headroom"}
"""
from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import cbor2
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from edge.codec.otlp import request_from_spans  # noqa: E402
from edge.errors import DecodeError  # noqa: E402
from dataclasses import replace  # noqa: E402

from uplink.gateway.budget import DECODE_FACTOR, expansion_limit  # noqa: E402
from uplink.wire import columnar, declared_size, decode_batch, encode_batch  # noqa: E402
from uplink.wire.batch_v2 import _F_PACKED, _F_SPAN_IDS, body as batch_body  # noqa: E402
from uplink.wire.frame import SPANS_HEADER, SPANS_MAGIC  # noqa: E402

N = 200_000


def frame(body: bytes) -> bytes:
    return SPANS_HEADER.pack(SPANS_MAGIC, 2, 0) + zstandard.ZstdCompressor(level=19).compress(body)


def minimal_spans(n: int) -> bytes:
    """A well-formed batch of `n` spans with as little as the format allows per span."""
    base = realistic_spans(n // 11 + 1, seed=72)[:n]
    for s in base:
        s.attributes = {}
        s.events = ()
        s.links = ()
    return encode_batch(base, "n", 1)


def repeated_text(n: int, version: int) -> bytes:
    """`n` spans using one 60 KB text held once in the batch (a name in format 2, an attribute value in format 3)."""
    one = replace(realistic_spans(1, seed=75)[0], events=(), links=())
    text = "x" * 60_000
    if version == 2:
        return encode_batch([replace(one, name=text, attributes={}) for _ in range(n)], "n", 1, version=2)
    return columnar.encode([replace(one, attributes={"db.statement": text}) for _ in range(n)], "n", 1)


def bodies() -> dict[str, bytes]:
    real = encode_batch(realistic_spans(47, seed=73)[:512], "n", 1)
    claim = cbor2.loads(batch_body(realistic_spans(1, seed=74)[:1], "n", 1))
    claim[_F_PACKED] = bytes(N)
    claim[_F_SPAN_IDS] = bytes(8 * N)
    return {
        "empty_maps": frame(cbor2.dumps([{}] * N)),
        "empty_arrays": frame(cbor2.dumps([[]] * N)),
        "small_ints": frame(cbor2.dumps(list(range(24)) * (N // 24))),
        "short_strings": frame(cbor2.dumps([f"{i:x}" for i in range(N)])),
        "columns_claiming_spans": frame(cbor2.dumps(claim)),
        "minimal_spans": minimal_spans(20_000),
        "repeated_text_v2": repeated_text(20_000, 2),
        "repeated_text_v3": repeated_text(20_000, 3),
        "real_512_spans": real,
    }


def cost(data: bytes) -> tuple[int, int]:
    """(peak bytes allocated while handled as the gateway would, bytes the frame declares)."""
    declared = declared_size(data)
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        batch = decode_batch(data, declared, None, 65536, expansion_limit(declared))
        request_from_spans(batch.spans).SerializeToString()
    except DecodeError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, declared


def main() -> None:
    ratios: dict[str, float] = {}
    for name, data in bodies().items():
        peak, declared = cost(data)
        ratios[name] = round(peak / declared, 1)
        print(f"{name:24s} {len(data):>9,d} B wire {declared:>11,d} B inflated  peak {peak / 2**20:7.1f} MiB  "
              f"{ratios[name]:5.1f}x", file=sys.stderr)
    worst = max(ratios, key=lambda k: ratios[k])
    print(json.dumps({"decode_factor": DECODE_FACTOR, "worst_ratio": ratios[worst], "worst_body": worst,
                      "ratios": ratios, "real_ratio": ratios["real_512_spans"],
                      "headroom": round(DECODE_FACTOR / ratios[worst], 2)}))


if __name__ == "__main__":
    main()
