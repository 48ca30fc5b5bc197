"""Probe overhead on loopback HTTP: latency with the probes attached vs detached, in the same run.

A keep-alive HTTP/1.1 client (subprocess) times N requests against http.server (subprocess), in
alternating rounds without and with the probes (the bench process consumes and decodes the events
meanwhile). Prints details, then one JSON line: added_latency_us_p50, added_latency_us_p99,
events_per_request, decoded_events_per_s, rss_mib. Needs root (loads BPF).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

from edge.sources.ebpf.decode import DecodeStats, decode_event
from edge.sources.ebpf.loader import KernelEventStream, ProbeSet, ProbeSettings

SERVER = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        body = b"ok"
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""

CLIENT = r"""
import socket, sys, time, json
port, n = int(sys.argv[1]), int(sys.argv[2])
c = socket.create_connection(("127.0.0.1", port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
req = b"GET /bench HTTP/1.1\r\nHost: x\r\n\r\n"
out = []
for _ in range(n):
    t = time.perf_counter_ns()
    c.sendall(req)
    buf = b""
    while not buf.endswith(b"\r\n\r\nok"):
        buf += c.recv(4096)
    out.append(time.perf_counter_ns() - t)
c.close()
print(json.dumps(out))
"""


def _pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0


async def _round(port: int, n: int) -> tuple[list[int], int]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(port), str(n),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return json.loads(out), proc.pid


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def main(rounds: int, n: int) -> dict[str, float]:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    base: list[int] = []
    traced: list[int] = []
    raw: list[bytes] = []
    events = 0
    rss = 0.0
    try:
        await _round(port, 200)  # warm-up
        for _ in range(rounds):
            lat, _ = await _round(port, n)
            base.extend(lat)
            probes = ProbeSet(ProbeSettings())
            got: list[object] = []
            stream = KernelEventStream(probes, got.extend)
            keep = stream._on_sample

            def sample(ctx: int | None, data: int, size: int) -> int:
                rc = keep(ctx, data, size)
                if len(raw) < 200_000:
                    raw.append(stream._raw[-1])
                return rc

            stream._cb = type(stream._cb)(sample)
            stream.start()
            probes.set_allowed_pids([server.pid])  # this round's client is not known yet: trace the server only
            lat, _ = await _round(port, n)
            traced.extend(lat)
            await asyncio.sleep(0.2)
            stream.poll()
            events += sum(1 for e in got if getattr(e, "pid", None) == server.pid)
            rss = max(rss, _rss_mib())
            stream.close()
            probes.close()
    finally:
        server.terminate()
        server.wait()

    stats = DecodeStats()
    sample_set = raw or []
    reps = max(1, 200_000 // max(1, len(sample_set)))
    t0 = time.perf_counter()
    for _ in range(reps):
        for r in sample_set:
            decode_event(r, stats)
    dt = time.perf_counter() - t0
    decoded_per_s = stats.decoded / dt if dt > 0 else 0.0
    result = {
        "added_latency_us_p50": round(_pct(traced, 0.5) - _pct(base, 0.5), 2),
        "added_latency_us_p99": round(_pct(traced, 0.99) - _pct(base, 0.99), 2),
        "events_per_request": round(events / max(1, len(traced)), 2),
        "decoded_events_per_s": round(decoded_per_s),
        "rss_mib": round(rss, 1),
    }
    print(f"requests per side: {len(base)}; detached p50/p99 {_pct(base, .5):.1f}/{_pct(base, .99):.1f} us; "
          f"attached p50/p99 {_pct(traced, .5):.1f}/{_pct(traced, .99):.1f} us; "
          f"median spread detached {statistics.pstdev(b / 1000 for b in base):.1f} us")
    print(f"decoded {stats.decoded} records ({len(sample_set)} distinct) in {dt:.2f}s; drops {stats.dropped}")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=4000)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.rounds, args.requests))))
