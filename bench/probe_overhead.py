"""Latency and CPU the probes add to a loopback HTTP/1.1 request, resolved with many short paired rounds.

A keep-alive client (one process, one connection, rounds on demand) times requests against Python's http.server;
this process drains and decodes the ring buffer, standing in for the agent. Two kinds of pairs, each giving one
difference (traced minus reference) of the round medians of the request time and of the CPU time the client and the
server spent per request (the scheduler's on-CPU clock, /proc/<pid>/task/*/schedstat: utime + stime without the
clock-tick resolution; /proc/<pid>/stat utime + stime summed over every round of a kind is printed beside it):

- **traced vs untraced** (--pairs, short rounds of --requests): the probes stay attached and the allow-list is
  switched between the client and server and nobody, a map write, so rounds can be short and many: adjacent rounds
  see the same host. The untraced side pays the probes' early exit on every syscall.
- **untraced vs detached** (--detach-pairs, rounds of --detach-requests): what the early exit itself adds. Detaching
  takes 1-2 s (the kernel waits for RCU grace periods per tracepoint), so these pairs are few and long.

Pairs are ordered A-B then B-A in turn (a drift over the run cancels out). The bench prints each kind's mean with a
95 % confidence interval (Student's t) and median with a distribution-free one (a round the host slowed down moves
the mean, not the median), and the added latency against no probes at all: the sum of the two means, with the
intervals combined. Client and server run on one CPU at a real-time priority (--no-realtime: not), so that the
machine's other work does not delay the measured requests. Other processes that hold the Helix probes meanwhile
(other test runs on a shared machine) add their programs to both sides; the bench says whether it saw any.

    python bench/probe_overhead.py [--pairs 300] [--requests 200] [--detach-pairs 6]      (root)

Last line: JSON with added_latency_us (traced vs detached, with ci95_us its half-width), the traced-vs-untraced and
untraced-vs-detached parts, added_cpu_us_per_request (client + server), the detached reference and the noise seen.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
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


def _finite(x: float) -> float | None:
    """x rounded for the JSON line; None for an unbounded interval end (too few pairs)."""
    return round(x, 2) if math.isfinite(x) else None


@dataclass(slots=True)
class Rounds:
    """One side's rounds: median request time and client + server CPU per request (µs), and /proc stat ticks."""

    lat: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    ticks: int = 0
    requests: int = 0


def stat_ticks(pid: int) -> int:
    """utime + stime of a process (clock ticks, /proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def measure(client: HttpKeepAlive, server_pid: int, n: int, into: Rounds) -> None:
    """One round of n requests, appended to `into`."""
    pids = (client.client.pid, server_pid)
    t0 = sum(stat_ticks(p) for p in pids)
    s0 = oncpu_ns(server_pid)
    lat, client_cpu = await client.round(n)
    server_cpu = oncpu_ns(server_pid) - s0
    into.ticks += sum(stat_ticks(p) for p in pids) - t0
    into.requests += n
    into.lat.append(statistics.median(lat) / 1000)
    into.cpu.append((client_cpu + server_cpu) / n / 1000)


@dataclass(slots=True)
class Comparison:
    """Paired rounds of two settings: `a` (the one with more probe work) and `b` (its reference)."""

    name: str
    a: Rounds = field(default_factory=Rounds)
    b: Rounds = field(default_factory=Rounds)

    def diffs(self, cpu: bool = False) -> list[float]:
        xa, xb = (self.a.cpu, self.b.cpu) if cpu else (self.a.lat, self.b.lat)
        return [x - y for x, y in zip(xa, xb)]

    def summary(self, label_a: str, label_b: str) -> dict[str, object]:
        lat_d, cpu_d = self.diffs(), self.diffs(cpu=True)
        lat_mean, lat_ci = mean_ci(lat_d)
        cpu_mean, cpu_ci = mean_ci(cpu_d)
        lat_med, lat_lo, lat_hi = median_ci(lat_d)
        cpu_med, cpu_lo, cpu_hi = median_ci(cpu_d)
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        stat_a = self.a.ticks * tick_us / max(1, self.a.requests)
        stat_b = self.b.ticks * tick_us / max(1, self.b.requests)
        sd = statistics.stdev(lat_d) if len(lat_d) > 1 else 0.0
        print(f"{self.name}: {len(lat_d)} pairs of rounds of {self.a.requests // max(1, len(self.a.lat))} requests; "
              f"round medians {label_b} {statistics.median(self.b.lat):.1f} µs (rounds {min(self.b.lat):.1f}-"
              f"{max(self.b.lat):.1f}), {label_a} {statistics.median(self.a.lat):.1f} µs")
        print(f"  latency {label_a} - {label_b}: mean {lat_mean:+.2f} µs ± {lat_ci:.2f} (95 %, t); median "
              f"{lat_med:+.2f} [{lat_lo:+.2f}, {lat_hi:+.2f}] (95 %, order statistics); pairs' sd {sd:.2f} µs")
        print(f"  CPU per request (client + server, schedstat): mean {cpu_mean:+.2f} µs ± {cpu_ci:.2f}; median "
              f"{cpu_med:+.2f} [{cpu_lo:+.2f}, {cpu_hi:+.2f}] over {statistics.median(self.b.cpu):.1f} µs {label_b}; "
              f"/proc stat utime+stime over all rounds: {stat_a:.1f} vs {stat_b:.1f} µs ({stat_a - stat_b:+.1f})")
        return {
            "latency_us": round(lat_mean, 2), "latency_ci95_us": _finite(lat_ci),
            "latency_us_median": round(lat_med, 2), "latency_median_ci95_us": [_finite(lat_lo), _finite(lat_hi)],
            "cpu_us_per_request": round(cpu_mean, 2), "cpu_ci95_us": _finite(cpu_ci),
            "cpu_us_median": round(cpu_med, 2), "cpu_median_ci95_us": [_finite(cpu_lo), _finite(cpu_hi)],
            "stat_cpu_us_per_request": [round(stat_a, 1), round(stat_b, 1)],
            "reference_latency_us": round(statistics.median(self.b.lat), 1),
            "reference_cpu_us_per_request": round(statistics.median(self.b.cpu), 1),
            "pairs": len(lat_d), "pairs_sd_us": round(sd, 2),
        }


async def paired(cmp: Comparison, pairs: int, set_a: Callable[[bool], None], client: HttpKeepAlive, server_pid: int,
                 n: int, crowded: Callable[[], None]) -> None:
    """`pairs` pairs of rounds of n requests, a-b then b-a in turn; set_a(True) switches to `a`, set_a(False) to b."""
    for on in (False, True):  # warm-up: caches, the connection's state in the maps
        set_a(on)
        await client.round(n)
    for i in range(pairs):
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            set_a(on)
            await measure(client, server_pid, n, cmp.a if on else cmp.b)
        if i % 25 == 0:
            crowded()


async def run(pairs: int, n: int, detach_pairs: int, detach_n: int, realtime: bool) -> dict[str, object]:
    client = await HttpKeepAlive().start()
    server = client.server
    probes = ProbeSet(ProbeSettings())
    drain = Drain(probes)
    await client.reset()  # a connection the probes saw open
    if realtime:
        # Client and server on one CPU at a real-time priority: the machine's other work then cannot delay the
        # measured requests (the ring-buffer reader, this process, stays an ordinary task on the other CPUs).
        cpu = max(os.sched_getaffinity(0))
        for pid in client.pids:
            os.sched_setaffinity(pid, {cpu})
            os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(10))
    names = program_names()
    others: set[int] = set()

    def crowded() -> None:
        others.update(p for p in agent_programs(names) if p != os.getpid())

    # Only the client and the server are ever traced: with every process traced, a shared machine's other work would
    # produce records for this process to decode, and its load would fall on the measured requests.
    def traced(on: bool) -> None:
        probes.set_allowed_pids(client.pids if on else [0])

    def attached(on: bool) -> None:
        probes.attach() if on else probes.detach()

    toggle = Comparison("traced vs untraced (probes attached, allow-list switched)")
    early = Comparison("untraced vs detached (the early exit)")
    try:
        await paired(toggle, pairs, traced, client, server.pid, n, crowded)
        traced(False)
        if detach_pairs:
            await paired(early, detach_pairs, attached, client, server.pid, detach_n, crowded)
    finally:
        drain.close()
        probes.close()
        await client.stop()

    out: dict[str, object] = {}
    t = toggle.summary("traced", "untraced")
    out["traced_vs_untraced"] = t
    lat, ci = t["latency_us"], t["latency_ci95_us"]
    cpu, cpu_ci = t["cpu_us_per_request"], t["cpu_ci95_us"]
    if detach_pairs >= 2:
        e = early.summary("untraced", "detached")
        out["untraced_vs_detached"] = e
        lat, ci = lat + e["latency_us"], math.hypot(ci, e["latency_ci95_us"])
        cpu, cpu_ci = cpu + e["cpu_us_per_request"], math.hypot(cpu_ci, e["cpu_ci95_us"])
        print(f"added by the probes against none (the two means summed): latency {lat:+.2f} µs ± {ci:.2f}, "
              f"CPU {cpu:+.2f} µs ± {cpu_ci:.2f} per request (client + server)")
    print(f"records decoded meanwhile: {drain.events:,}; other processes holding the Helix probes during the run: "
          f"{len(others)}")
    out.update({
        "added_latency_us": round(lat, 2),
        "added_latency_ci95_us": _finite(ci),
        "added_cpu_us_per_request": round(cpu, 2),
        "added_cpu_ci95_us": _finite(cpu_ci),
        "reference_untraced_latency_us": t["reference_latency_us"],
        "other_probe_holders": len(others),
        "realtime": realtime,
    })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=300, help="pairs of short rounds, traced and untraced")
    ap.add_argument("--requests", type=int, default=200, help="requests per short round")
    ap.add_argument("--detach-pairs", type=int, default=6,
                    help="pairs of long rounds, untraced and detached (0: leave the early exit's part out)")
    ap.add_argument("--detach-requests", type=int, default=2000, help="requests per long round")
    ap.add_argument("--no-realtime", dest="realtime", action="store_false",
                    help="leave client and server at the ordinary priority and on any CPU")
    args = ap.parse_args()
    if args.pairs < 2 or args.detach_pairs == 1:
        ap.error("--pairs and --detach-pairs need at least 2 (a confidence interval needs two differences)")
    print(json.dumps(asyncio.run(run(args.pairs, args.requests, args.detach_pairs, args.detach_requests,
                                     args.realtime))))


if __name__ == "__main__":
    main()
