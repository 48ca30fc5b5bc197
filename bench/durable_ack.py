"""What durable mode (`sources.otlp.durable`) costs an OTLP client: request latency and throughput with the accepted
log on, against the same agent with it off in the same run, and how many fsyncs it takes.

Runs a private Mosquitto, an OTLP peer, `helix gateway` and `helix run` as real processes (edge/demo/stack.py), once
with durable mode off and once on (same data, same machine, same minute). Each run has two phases over OTLP/HTTP
(protobuf, one trace of ~11 spans per request, bench/_workload.py):
- paced: one client, `--rate` requests/s: the latency a request pays (p50/p99);
- saturated: `--clients` clients back to back: throughput, and for durable mode commits (fsyncs) per second and
  requests per commit (group commit), read from the agent's /metrics.

    python bench/durable_ack.py [--seconds 8] [--rate 50] [--clients 8]

Same-run reference: durable off; and this disk's own fsync latency (4 KiB append + fsync, in the same directory),
which bounds what any durable acknowledgement costs here. Last line: {"off": {...}, "on": {...}, "ratio": {...},
"raw_fsync_p50_ms", "raw_fsync_p99_ms", ...}
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from edge.codec.otlp import request_from_spans  # noqa: E402
from edge.demo.broker import free_port  # noqa: E402
from edge.demo.stack import Stack  # noqa: E402

_HEADERS = {"Content-Type": "application/x-protobuf"}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _client(s: aiohttp.ClientSession, url: str, bodies: list[bytes], start: int, end: float,
                  pause: float, lat: list[float], counts: dict[str, int]) -> None:
    i = start
    while time.monotonic() < end:
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        async with s.post(url, data=body, headers=_HEADERS) as resp:
            await resp.read()
            if resp.status == 200:
                lat.append(time.perf_counter() - t0)
                counts["ok"] += 1
            else:
                counts["busy"] += 1
        if pause:
            await asyncio.sleep(max(0.0, pause - (time.perf_counter() - t0)))


async def _commits(s: aiohttp.ClientSession, url: str) -> int:
    async with s.get(url) as resp:
        text = await resp.text()
    m = re.search(r'^helix_agent_durable_log_total\{[^}]*event="commits"[^}]*\} (\d+)', text, re.M)
    return int(m.group(1)) if m else 0


async def run_mode(stack: Stack, durable: bool, bodies: list[bytes], spans_per_body: float,
                   args: argparse.Namespace) -> dict[str, float]:
    http_port, metrics_port = free_port(), free_port()
    conf = stack.agent_config(f"bench-durable-{'on' if durable else 'off'}", grpc_listen="",
                              http_listen=f"127.0.0.1:{http_port}", batch_max_age="2s",
                              more=f"[sources.ebpf]\nenabled = false\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n")
    conf = conf.replace("[sources.otlp]\n", f"[sources.otlp]\ndurable = {'true' if durable else 'false'}\n"
                                            f"durable_dir = \"{stack.workdir / 'accepted'}\"\n")
    agent = await stack.start_agent(conf)
    url = f"http://127.0.0.1:{http_port}/v1/traces"
    murl = f"http://127.0.0.1:{metrics_port}/metrics"
    out: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            # Warm up (first requests import and allocate).
            await _client(s, url, bodies, 0, time.monotonic() + 1.0, 0.01, [], {"ok": 0, "busy": 0})
            lat: list[float] = []
            counts = {"ok": 0, "busy": 0}
            await _client(s, url, bodies, 0, time.monotonic() + args.seconds, 1.0 / args.rate, lat, counts)
            out["paced_p50_ms"] = round(_pct(lat, 0.5) * 1000, 2)
            out["paced_p99_ms"] = round(_pct(lat, 0.99) * 1000, 2)
            out["paced_requests"] = counts["ok"]
            before = await _commits(s, murl)
            lat, counts = [], {"ok": 0, "busy": 0}
            t0 = time.monotonic()
            await asyncio.gather(*(_client(s, url, bodies, c * 997, t0 + args.seconds, 0.0, lat, counts)
                                   for c in range(args.clients)))
            took = time.monotonic() - t0
            commits = await _commits(s, murl) - before
            out["saturated_requests_per_s"] = round(counts["ok"] / took, 1)
            out["saturated_spans_per_s"] = round(counts["ok"] * spans_per_body / took, 1)
            out["saturated_p50_ms"] = round(_pct(lat, 0.5) * 1000, 2)
            out["saturated_p99_ms"] = round(_pct(lat, 0.99) * 1000, 2)
            out["saturated_busy"] = counts["busy"]
            if durable:
                out["fsyncs_per_s"] = round(commits / took, 1)
                out["requests_per_fsync"] = round(counts["ok"] / commits, 2) if commits else 0.0
            out["mean_ms"] = round(statistics.fmean(lat) * 1000, 2) if lat else 0.0
    finally:
        await stack.stop(agent)
    return out


def raw_fsync_ms(directory: Path, n: int = 50) -> tuple[float, float]:
    """p50 and p99 of appending 4 KiB and fsyncing it in `directory`: what this disk makes any durable write wait."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times: list[float] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, bytes(4096))
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return round(_pct(times, 0.5) * 1000, 2), round(_pct(times, 0.99) * 1000, 2)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each phase (default 8)")
    ap.add_argument("--rate", type=float, default=50.0, help="paced phase: requests per second (default 50)")
    ap.add_argument("--clients", type=int, default=8, help="saturated phase: concurrent clients (default 8)")
    args = ap.parse_args()

    spans = realistic_spans(4000, seed=67)
    by_trace: dict[bytes, list] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    groups = list(by_trace.values())
    bodies = [request_from_spans(g, source_attribute=False).SerializeToString() for g in groups]
    spans_per_body = len(spans) / len(groups)

    work = Path(tempfile.mkdtemp(prefix="helix-bench-durable-"))
    result: dict[str, dict[str, float]] = {}
    async with Stack(work) as stack:
        await stack.start_gateway()
        for durable in (False, True):
            result["on" if durable else "off"] = await run_mode(stack, durable, bodies, spans_per_body, args)
            print(f"durable {'on' if durable else 'off'}: {result['on' if durable else 'off']}", file=sys.stderr)
        fsync_p50, fsync_p99 = raw_fsync_ms(work)
    print(f"this disk: fsync of a 4 KiB append p50 {fsync_p50} ms, p99 {fsync_p99} ms", file=sys.stderr)
    off, on = result["off"], result["on"]
    ratio = {k: round(on[k] / off[k], 2) if off.get(k) else 0.0
             for k in ("paced_p50_ms", "paced_p99_ms", "saturated_requests_per_s", "saturated_p99_ms")}
    print(json.dumps({"off": off, "on": on, "ratio": ratio, "bytes_per_request": round(
        statistics.fmean(len(b) for b in bodies)), "spans_per_request": round(spans_per_body, 1),
        "raw_fsync_p50_ms": fsync_p50, "raw_fsync_p99_ms": fsync_p99}))


if __name__ == "__main__":
    asyncio.run(main())
