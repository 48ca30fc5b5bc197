"""What the span builder holds while it waits to decide calls, and how long their decisions are delayed, at a rate.

Drives the span builder (no probes: the events the probes would send, in time order, on a simulated kernel clock)
with two workloads at once, together `--rate` spans per second (a server span and a client span per exchange):
- asyncio: one event loop thread serving requests, each handler making one call written in its task context and
  answering 2 ms after the call, or, for `--late` of them, 0.6 to 1.4 s after it (a slow call of its own): the
  `task` rule (tasks.py) holds the call until its handler answers;
- pool: request threads handing each request's call to a worker (a wakeup), the worker handing the result back (a
  wakeup) at once, or, for `--late` of them, nobody waiting for it: the call waits for its decision (causes.py).
The builder is flushed once per simulated second, as the agent's source does (source.py `_FLUSH_INTERVAL_S`).

Each run is done twice, in the same process on the same events: with the `task` rule's longer wait (LONG_WAIT_NS)
and without it (`long_wait_ns` = 0: the plain DECIDE_WAIT_NS), the same-run reference. Figures per run: calls held
at once (peak), bytes held (peak, the builder's own estimate, as the memory governor sees it in BuilderState.bytes),
bytes held measured by tracemalloc at the peak's sample (`--measure`), the delay from a call's end to when its span
left the builder (p50, p99, max), calls decided by `task` among the late ones, calls the bounds released early.

    python bench/decision_hold.py [--rate 5000] [--seconds 10] [--late 0.1] [--measure]

Last line: {"rate_spans_per_s", "seconds", "late_share", "long_wait": {...}, "plain_wait": {...},
"held_bytes_peak_ratio", "delay_p99_ratio"} (ratios: long wait over plain wait).
"""
from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge.model import SpanKind  # noqa: E402
from edge.sources.ebpf.builder_state import BuilderState  # noqa: E402
from edge.sources.ebpf.events import (CloseEvent, DataEvent, Direction, Endpoint, PyContextEvent, Role,  # noqa: E402
                                      WakeupEvent)
from edge.sources.ebpf.spans import FixedClock, SpanBuilder, SpanBuilderConfig  # noqa: E402
from edge.sources.ebpf.spans.causes import CAUSE_VIA  # noqa: E402

SRV = Endpoint("10.0.0.5", 8080)
DB = Endpoint("10.0.0.7", 5432)
LOOP_PID, LOOP_TID = 100, 101
POOL_PID = 200
MS = 1_000_000
S = 1_000_000_000
FLUSH_NS = S  # source.py _FLUSH_INTERVAL_S


def _req(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: bench/1.0\r\n\r\n".encode()


RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _data(ts: int, pid: int, tid: int, sock: int, role: Role, direction: Direction, payload: bytes, remote: Endpoint,
          prev_bytes: int = 0, prev_end: int = 0) -> DataEvent:
    local = SRV if role == Role.SERVER else Endpoint("10.0.0.5", 30000 + sock % 30000)
    return DataEvent(ts, ts + 1000, pid, tid, "api", 7, sock, role, direction, local, remote, len(payload), payload,
                     prev_bytes, prev_end, 0)


def workload(rate: int, seconds: float, late: float,
             seed: int = 7) -> tuple[list[tuple[int, int, Any]], dict[str, int]]:
    """The events of both workloads in time order, and each call's end by its query (`c=<n>`)."""
    rnd = random.Random(seed)
    events: list[tuple[int, int, Any]] = []
    ends: dict[str, int] = {}
    n = 0
    exchanges = int(rate * seconds / 2)
    gap = 2 * S // rate  # between exchanges, both workloads together
    sock = 1000
    busy = [0] * 4096  # the pool's request threads: busy until
    for i in range(exchanges):
        t = 10 * MS + i * gap
        is_late = rnd.random() < late
        srv, cli = sock, sock + 1
        sock += 2
        peer = Endpoint("10.0.0.9", 40000 + i % 20000)
        rq, cq = _req(f"/api?r={i}"), _req(f"/db?c={i}")
        call_at, call_end = t + 200_000, t + 1_200_000
        ends[f"c={i}"] = call_end + 1000
        if i % 2 == 0:  # asyncio: handler context per request, the call's task copied from it
            pid, tid = LOOP_PID, LOOP_TID
            handler, task = 0x1000_0000 + 16 * i, 0x2000_0000 + 16 * i
            answer_at = call_end + (rnd.randint(600, 1400) * MS if is_late else 2 * MS)
            evs: list[tuple[int, Any]] = [
                (t, _data(t, pid, tid, srv, Role.SERVER, Direction.INGRESS, rq, peer)),
                (call_at, PyContextEvent(call_at, pid, tid, cli, (task, handler, 0xC0))),
                (call_at, _data(call_at, pid, tid, cli, Role.CLIENT, Direction.EGRESS, cq, DB)),
                (call_end, _data(call_end, pid, tid, cli, Role.CLIENT, Direction.INGRESS, RESP, DB, len(cq),
                                 call_at + 1000)),
                (call_end + 2000, CloseEvent(call_end + 2000, pid, tid, 7, cli, len(RESP), call_end + 1000, 0)),
                (answer_at, PyContextEvent(answer_at, pid, tid, srv, (handler, 0xC0))),
                (answer_at, _data(answer_at, pid, tid, srv, Role.SERVER, Direction.EGRESS, RESP, peer, len(rq),
                                  t + 1000)),
                (answer_at + 2000, CloseEvent(answer_at + 2000, pid, tid, 7, srv, len(RESP), answer_at + 1000, 0)),
            ]
        else:  # pool: request thread hands the call to a worker, which hands the result back (or nobody waits)
            pid = POOL_PID
            answer_at = call_end + (rnd.randint(600, 1400) * MS if is_late else 2 * MS)
            # A request thread serves one request until it answers: the first one free.
            k = next(k for k, until in enumerate(busy) if until < t)
            busy[k] = answer_at + 3000
            req_tid, worker = 1000 + k, 500 + (i // 2) % 16
            evs = [
                (t, _data(t, pid, req_tid, srv, Role.SERVER, Direction.INGRESS, rq, peer)),
                (t + 100_000, WakeupEvent(t + 100_000, pid, req_tid, worker, 0)),
                (call_at, _data(call_at, pid, worker, cli, Role.CLIENT, Direction.EGRESS, cq, DB)),
                (call_end, _data(call_end, pid, worker, cli, Role.CLIENT, Direction.INGRESS, RESP, DB, len(cq),
                                 call_at + 1000)),
                (call_end + 2000, CloseEvent(call_end + 2000, pid, worker, 7, cli, len(RESP), call_end + 1000, 0)),
                (answer_at, _data(answer_at, pid, req_tid, srv, Role.SERVER, Direction.EGRESS, RESP, peer, len(rq),
                                  t + 1000)),
                (answer_at + 2000, CloseEvent(answer_at + 2000, pid, req_tid, 7, srv, len(RESP), answer_at + 1000,
                                              0)),
            ]
            if not is_late:  # the result handed back to the request thread, asleep since the hand-off
                evs.append((call_end + 50_000, WakeupEvent(call_end + 50_000, pid, worker, req_tid, t + 110_000)))
        for ts, ev in evs:
            events.append((ts, n, ev))
            n += 1
    heapq.heapify(events)
    return [heapq.heappop(events) for _ in range(len(events))], ends


def _pct(xs: list[int], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / MS


def run(events: list[tuple[int, int, Any]], ends: dict[str, int], late_queries: set[str], long_wait: bool,
        measure: bool) -> dict[str, Any]:
    """Feed the events, flushing once per simulated second; the figures of one run."""
    b = SpanBuilder(SpanBuilderConfig(host_name="edge-1"), FixedClock(offset_ns=1_700_000_000 * S))
    if not long_wait:
        b.causes.tasks.long_wait_ns = 0
    state = BuilderState(b)
    delays: dict[str, list[int]] = {"asyncio": [], "pool": []}
    vias: dict[str, int] = {}
    late_task = late_total = 0
    peak_calls = peak_bytes = 0
    peak_state = 0
    traced_peak = 0
    next_flush = FLUSH_NS
    if measure:
        tracemalloc.start()
    began = time.perf_counter()

    def take(spans: list, now: int) -> None:
        nonlocal late_task, late_total
        for s in spans:
            if s.kind != SpanKind.CLIENT:
                continue
            q = s.attributes.get("url.query", "")
            kind = "pool" if int(q[2:]) % 2 else "asyncio"  # odd exchanges are the pool's
            delays[kind].append(max(0, now - ends[q]))
            via = str(s.attributes.get(CAUSE_VIA, ""))
            vias[via] = vias.get(via, 0) + 1
            if q in late_queries and kind == "asyncio":
                late_total += 1
                late_task += via == "task"

    def sample() -> None:
        nonlocal peak_calls, peak_bytes, peak_state, traced_peak
        calls, held = b.causes.waiting_count, b.causes.held_bytes
        peak_calls = max(peak_calls, calls)
        if held > peak_bytes:
            peak_bytes = held
            peak_state = state.bytes
            if measure:
                traced_peak = tracemalloc.get_traced_memory()[0]

    for ts, _, ev in events:
        while ts >= next_flush:
            take(b.flush(next_flush), next_flush)
            sample()
            next_flush += FLUSH_NS
        take(b.feed([ev]), ts)
        if ts % (10 * MS) < 200_000:
            sample()
    end = events[-1][0]
    while next_flush <= end + 4 * S:
        take(b.flush(next_flush), next_flush)
        next_flush += FLUSH_NS
    elapsed = time.perf_counter() - began
    baseline = 0
    if measure:
        baseline = tracemalloc.get_traced_memory()[0]  # nothing held any more: the builder's other state and ours
        tracemalloc.stop()
    ts_ = b.causes.tasks.stats
    out: dict[str, Any] = {
        "held_calls_peak": peak_calls,
        "held_bytes_peak": peak_bytes,
        "state_bytes_at_peak": peak_state,
        "task_held_bytes_peak": ts_.held_bytes_peak,
        "delay_ms": {k: {"p50": _pct(v, 0.5), "p99": _pct(v, 0.99), "max": _pct(v, 1.0), "calls": len(v)}
                     for k, v in delays.items()},
        "late_asyncio_calls_by_task": f"{late_task}/{late_total}",
        "vias": vias,
        "released_early": ts_.held_dropped + b.causes.stats.waiting_forced,
        "waited_long": ts_.waited_long, "long_expired": ts_.long_expired,
        "wall_s": round(elapsed, 2),
    }
    if measure:
        out["traced_bytes_at_peak_over_end"] = traced_peak - baseline
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=5000, help="spans per second, both workloads together")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--late", type=float, default=0.1, help="share of handlers answering 0.6-1.4 s after the call")
    ap.add_argument("--measure", action="store_true", help="also measure the bytes held with tracemalloc (slow)")
    a = ap.parse_args()
    events, ends = workload(a.rate, a.seconds, a.late)
    late_queries = _late(events)
    long = run(events, ends, late_queries, True, a.measure)
    print(json.dumps({"long_wait": long}))
    plain = run(events, ends, late_queries, False, a.measure)
    print(json.dumps({"plain_wait": plain}))
    ratio = (lambda x, y: round(x / y, 2) if y else None)
    print(json.dumps({
        "rate_spans_per_s": a.rate, "seconds": a.seconds, "late_share": a.late, "long_wait": long, "plain_wait": plain,
        "held_bytes_peak_ratio": ratio(long["held_bytes_peak"], plain["held_bytes_peak"]),
        "delay_p99_ratio": ratio(long["delay_ms"]["asyncio"]["p99"], plain["delay_ms"]["asyncio"]["p99"]),
    }))


def _late(events: list[tuple[int, int, Any]]) -> set[str]:
    """The queries of the asyncio calls whose handler answered more than DECIDE_WAIT_NS-ish (100 ms) after them."""
    call_end: dict[int, int] = {}
    answered: dict[int, int] = {}
    for ts, _, ev in events:
        if isinstance(ev, DataEvent) and ev.pid == LOOP_PID:
            i = int(ev.sock)
            if ev.role == Role.CLIENT and ev.direction == Direction.INGRESS:
                call_end[(i - 1000) // 2] = ts
            elif ev.role == Role.SERVER and ev.direction == Direction.EGRESS:
                answered[(i - 1000) // 2] = ts
    return {f"c={i}" for i, end in call_end.items() if answered.get(i, 0) - end > 100 * MS}


if __name__ == "__main__":
    main()
