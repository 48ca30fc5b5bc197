"""Kernel events turned into spans per second on one core: decoding plus HTTP span building.

Builds ring-buffer records for keep-alive HTTP exchanges with a traceparent header (as io.bpf.c writes
them), then times decode_event + SpanBuilder.feed over them.

    python bench/span_builder.py [--exchanges 50000]

Last line: {"records", "decode_per_s", "decode_and_build_events_per_s", "spans_per_s"}
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge.sources.ebpf.decode import _DATA, EV_DATA, decode_event  # noqa: E402
from edge.sources.ebpf.spans import SpanBuilder, SpanBuilderConfig  # noqa: E402

REQ = (b"GET /api/orders?id=%d HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: bench/1.0\r\n"
       b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n")
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nok"


def record(ts: int, direction: int, payload: bytes, prev_bytes: int, prev_end: int) -> bytes:
    """One data_event record (bpf/io.h) for a server-side connection on 127.0.0.1:8080."""
    addr = bytes([127, 0, 0, 1]) + bytes(12)
    head = _DATA.pack(EV_DATA, 4242, 4243, 7, ts, ts + 2000, 0xFFFF8880DEAD0000, len(payload), prev_bytes, prev_end,
                      0, 0, addr, addr, 8080, 51000, 2, 2, direction, b"api-server".ljust(16, b"\0"), len(payload), 0)
    return head + payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exchanges", type=int, default=50_000)
    args = ap.parse_args()
    records = []
    ts = 1_000_000
    for i in range(args.exchanges):
        req = REQ % i
        records.append(record(ts, 1, req, len(RESP) if i else 0, ts - 1000 if i else 0))
        records.append(record(ts + 50_000, 0, RESP, len(req), ts + 2000))
        ts += 100_000
    t0 = time.perf_counter()
    events = [decode_event(r) for r in records]
    t1 = time.perf_counter()
    builder = SpanBuilder(SpanBuilderConfig(host_name="bench"))
    spans = 0
    for i in range(0, len(events), 4096):
        spans += len(builder.feed(events[i:i + 4096]))
    t2 = time.perf_counter()
    result = {
        "records": len(records),
        "decode_per_s": round(len(records) / (t1 - t0)),
        "decode_and_build_events_per_s": round(len(records) / (t2 - t0)),
        "spans_per_s": round(spans / (t2 - t0)),
    }
    print(f"{len(records)} records: decode {result['decode_per_s']}/s; decode + span building "
          f"{result['decode_and_build_events_per_s']} events/s ({spans} spans, {result['spans_per_s']} spans/s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
