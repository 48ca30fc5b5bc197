"""Latency and CPU the probes add to a loopback HTTP/1.1 request, resolved with paired rounds.

A keep-alive client (one process, one connection, rounds on demand) times requests against Python's http.server.
The probes are loaded once (the client and the server in the allow-list; this process drains and decodes the ring
buffer, standing in for the agent) and detached or attached between rounds, in pairs ordered detached-attached, then
attached-detached (so a drift over the run cancels out). Each pair gives one difference, attached minus detached:
of the round medians of the request time, and of the CPU time the client and the server spent per request (the
scheduler's on-CPU clock, /proc/<pid>/task/*/schedstat: utime + stime without the clock-tick resolution). A shared
machine makes single rounds noisy; the pairs' differences are much less so, and the bench prints their mean with a
95 % confidence interval (Student's t), and their median with a distribution-free one (a round the host slowed
down moves the mean, not the median). Client and server run on one CPU at a real-time priority (--no-realtime:
not), so that the machine's other work does not delay the measured requests.

The same-run reference is the detached rounds. Detaching takes 1-2 s (the kernel waits for RCU grace periods per
tracepoint), so rounds are long enough to make that small. Other processes that hold the Helix probes meanwhile
(other test runs on a shared machine) add their programs to both sides; the bench says in how many pairs it saw any.

    python bench/probe_overhead.py [--pairs 30] [--requests 2000]      (root)

Last line: JSON with added_latency_us (mean of the pairs' differences, with ci95_us its half-width),
added_cpu_us_per_request (client + server, with its ci95), the detached reference and the noise seen.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loopback import HttpKeepAlive, oncpu_ns  # noqa: E402
from _perf import Drain  # noqa: E402

from edge.sources.ebpf.cost import agent_programs  # noqa: E402
from edge.sources.ebpf.loader import ProbeSet, ProbeSettings, program_names  # noqa: E402


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile (Cornish-Fisher expansion around the normal; within 0.2 % for df >= 5)."""
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2) + (
        3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval."""
    if len(values) < 2:
        return (values[0] if values else 0.0), math.inf
    return statistics.fmean(values), t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def median_ci(values: list[float]) -> tuple[float, float, float]:
    """Median with its distribution-free 95 % interval (order statistics, the sign test's binomial bounds): robust to
    the rounds a busy host slowed down, which widen a t-interval."""
    n = len(values)
    s = sorted(values)
    k = 0  # the largest k with P(Binomial(n, 1/2) < k) <= 0.025
    while k < n // 2 and sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n <= 0.025:
        k += 1
    lo, hi = (s[k - 1], s[n - k]) if k else (-math.inf, math.inf)
    return statistics.median(s), lo, hi


async def measure(client: HttpKeepAlive, server_pid: int, n: int) -> tuple[float, float]:
    """One round: (median request time, client + server CPU per request), both in µs."""
    s0 = oncpu_ns(server_pid)
    lat, client_cpu = await client.round(n)
    server_cpu = oncpu_ns(server_pid) - s0
    return statistics.median(lat) / 1000, (client_cpu + server_cpu) / n / 1000


async def run(pairs: int, n: int, realtime: bool) -> dict[str, object]:
    client = await HttpKeepAlive().start()
    server = client.server
    probes = ProbeSet(ProbeSettings())
    drain = Drain(probes)
    await client.reset()  # a connection the probes saw open
    # Only the client and the server are traced: with every process traced, a shared machine's other work would
    # produce records for this process to decode, and its load would fall on the measured requests.
    probes.set_allowed_pids(client.pids)
    if realtime:
        # Client and server on one CPU at a real-time priority: the machine's other work then cannot delay the
        # measured requests (the ring-buffer reader, this process, stays an ordinary task on the other CPUs).
        cpu = max(os.sched_getaffinity(0))
        for pid in client.pids:
            os.sched_setaffinity(pid, {cpu})
            os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(10))
    names = program_names()
    rounds: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    crowded = 0
    try:
        for attached in (False, True):  # warm-up: caches, the connection's state in the maps
            probes.attach() if attached else probes.detach()
            await measure(client, server.pid, n)
        for i in range(pairs):
            order = (False, True) if i % 2 == 0 else (True, False)
            for attached in order:
                probes.attach() if attached else probes.detach()
                rounds[attached].append(await measure(client, server.pid, n))
            if any(p != os.getpid() for p in agent_programs(names)):
                crowded += 1
    finally:
        drain.close()
        probes.close()
        await client.stop()

    lat_d = [a[0] - d[0] for a, d in zip(rounds[True], rounds[False])]
    cpu_d = [a[1] - d[1] for a, d in zip(rounds[True], rounds[False])]
    lat_mean, lat_ci = mean_ci(lat_d)
    cpu_mean, cpu_ci = mean_ci(cpu_d)
    lat_med, lat_lo, lat_hi = median_ci(lat_d)
    cpu_med, cpu_lo, cpu_hi = median_ci(cpu_d)
    det_lat = [r[0] for r in rounds[False]]
    det_cpu = [r[1] for r in rounds[False]]
    att_lat = [r[0] for r in rounds[True]]
    print(f"{pairs} pairs of rounds of {n} requests; round medians detached {statistics.median(det_lat):.1f} µs "
          f"(rounds {min(det_lat):.1f}-{max(det_lat):.1f}, sd {statistics.pstdev(det_lat):.1f}), attached "
          f"{statistics.median(att_lat):.1f} µs (rounds {min(att_lat):.1f}-{max(att_lat):.1f})")
    print(f"added latency per request: mean {lat_mean:+.2f} µs ± {lat_ci:.2f} (95 %, t); median {lat_med:+.2f} µs "
          f"[{lat_lo:+.2f}, {lat_hi:+.2f}] (95 %, order statistics); pairs' sd {statistics.stdev(lat_d):.2f} µs")
    print(f"added CPU per request (client + server): mean {cpu_mean:+.2f} µs ± {cpu_ci:.2f}; median {cpu_med:+.2f} "
          f"[{cpu_lo:+.2f}, {cpu_hi:+.2f}] over {statistics.median(det_cpu):.1f} µs detached; pairs' sd "
          f"{statistics.stdev(cpu_d):.2f} µs")
    print(f"records decoded meanwhile: {drain.events:,}; rounds with other processes holding the Helix probes: "
          f"{crowded} of {pairs} pairs")
    return {
        "added_latency_us": round(lat_mean, 2),
        "added_latency_ci95_us": round(lat_ci, 2),
        "added_latency_us_median": round(lat_med, 2),
        "added_latency_median_ci95_us": [round(lat_lo, 2), round(lat_hi, 2)],
        "added_cpu_us_per_request": round(cpu_mean, 2),
        "added_cpu_ci95_us": round(cpu_ci, 2),
        "added_cpu_us_median": round(cpu_med, 2),
        "added_cpu_median_ci95_us": [round(cpu_lo, 2), round(cpu_hi, 2)],
        "detached_latency_us": round(statistics.median(det_lat), 1),
        "detached_cpu_us_per_request": round(statistics.median(det_cpu), 1),
        "detached_round_sd_us": round(statistics.pstdev(det_lat), 2),
        "pairs": pairs,
        "requests_per_round": n,
        "pairs_with_other_probes": crowded,
        "realtime": realtime,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=30, help="pairs of rounds (detached, attached)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per round")
    ap.add_argument("--no-realtime", dest="realtime", action="store_false",
                    help="leave client and server at the ordinary priority and on any CPU")
    args = ap.parse_args()
    if args.pairs < 2:
        ap.error("--pairs must be at least 2 (a confidence interval needs two differences)")
    print(json.dumps(asyncio.run(run(args.pairs, args.requests, args.realtime))))


if __name__ == "__main__":
    main()
