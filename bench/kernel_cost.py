"""What the probes cost in the kernel, per program run and per traced request, from the kernel's own statistics.

Loads the probes (this process stands in for the agent: it drains and decodes the ring buffer), turns BPF run-time
statistics on for the run (a BPF_ENABLE_STATS fd: nothing to restore afterwards, kernel.bpf_stats_enabled is left as
it was), and drives fixed workloads on loopback, each in rounds:

- untraced: HTTP keep-alive requests and /dev/zero -> /dev/null copies by processes outside the allow-list
  (sources.ebpf.pids), so every run of every program on the machine takes the early exit;
- traced: the same and HTTP requests on new connections, MQTT publishes through Mosquitto, file I/O, with exactly
  the workload's processes in the allow-list.

The machine is shared: the programs also run for every other process's syscalls. Per-process perf counters on the
programs' tracepoints count the runs the workload caused; the other runs are charged at the untraced cost measured
in the same round and taken out. sched_switch runs on every context switch: twice the switches of the workload's
tasks are charged to it (the switch out and the switch in). Rarer programs (TCP state, exec, exit) are charged what
they ran above the rate of an idle window.

The same-run reference: two hand-assembled programs on sys_enter_read, `return 0` (what any tracepoint program run
costs here, the statistics' own clock reads included) and one hash-map miss on the tgid.

    python bench/kernel_cost.py [--rounds 3] [--requests 5000]      (root)

Last line: JSON with ns per run (traced, untraced, references), kernel ns per traced request per workload, and per
workload each program's runs per request and ns per run (where a request's kernel time goes).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loopback import Workload, make_workloads, start_broker  # noqa: E402
from _perf import REFERENCES, SYSCALL_NR, Drain, ReferenceProgram, syscall_counter  # noqa: E402

from edge.sampler.consistent import threshold_for_ratio  # noqa: E402
from edge.sources.ebpf import _libbpf  # noqa: E402
from edge.sources.ebpf.cost import run_stats, stats_sysctl  # noqa: E402
from edge.sources.ebpf.loader import TRACEPOINTS, ProbeSet, ProbeSettings  # noqa: E402

_NOBODY = 0  # an allow-list entry no process has: every process is untraced
_SWITCH_TP = "sched/sched_switch"
_REF_TP = "syscalls/sys_enter_read"
_UNTRACED_GOAL_NS = 40  # the goal for a program run on an untraced process's syscall
_RED_BOUNDS_NS = [5_000_000 * 2 ** i for i in range(12)]
# Per workload: (requests per round relative to --requests, allow-list on, sampling ratio)
_PHASES: dict[str, tuple[str, float, bool, float]] = {
    "untraced_http_keepalive": ("http_keepalive", 1.0, False, 1.0),
    "untraced_device_io": ("device_io", 4.0, False, 1.0),
    "http_keepalive": ("http_keepalive", 1.0, True, 1.0),
    "http_keepalive_ratio_0.1": ("http_keepalive", 1.0, True, 0.1),
    "http_new_connection": ("http_new_connection", 0.2, True, 1.0),
    "mqtt_publish": ("mqtt_publish", 0.2, True, 1.0),
    "file_io": ("file_io", 4.0, True, 1.0),
    "device_io": ("device_io", 4.0, True, 1.0),
}


def syscall_tracepoint(prog: str) -> str | None:
    """The syscall tracepoint of a program named enter_<call> / exit_<call>, else None."""
    edge, _, call = prog.partition("_")
    if edge in ("enter", "exit") and call:
        return f"syscalls/sys_{edge}_{call}"
    return None


@dataclass(slots=True)
class Window:
    """Per-program runs and run time over one phase, with what the workload's own processes caused."""

    seconds: float
    runs: dict[str, int]
    ns: dict[str, int]
    workload_runs: dict[str, int] = field(default_factory=dict)  # from the perf counters (syscall programs)
    switches: int = 0
    refs: dict[str, tuple[int, int]] = field(default_factory=dict)  # reference -> (runs, ns)
    requests: int = 0


def _delta(a: Mapping[str, _libbpf.ProgInfo], b: Mapping[str, _libbpf.ProgInfo]) -> tuple[dict[str, int], dict[str, int]]:
    runs = {n: b[n].run_cnt - a[n].run_cnt for n in b}
    ns = {n: b[n].run_time_ns - a[n].run_time_ns for n in b}
    return runs, ns


class Bench:
    def __init__(self, probes: ProbeSet, refs: list[ReferenceProgram]) -> None:
        self.probes = probes
        self.refs = refs
        self.calls = sorted({tp.split("_", 2)[2] for tp in TRACEPOINTS["io"] + TRACEPOINTS["proc"]
                             if tp.startswith("syscalls/") and tp.split("_", 2)[2] in SYSCALL_NR})

    async def idle(self, seconds: float) -> Window:
        """Nothing of ours runs and nobody is traced: the machine's own rate of runs."""
        self.probes.set_allowed_pids([_NOBODY])
        a, t0 = self.probes.program_info(), time.monotonic()
        await asyncio.sleep(seconds)
        b, t1 = self.probes.program_info(), time.monotonic()
        return Window(t1 - t0, *_delta(a, b))

    async def phase(self, workload: Workload, n: int, traced: bool, ratio: float) -> Window:
        pids = workload.pids
        self.probes.set_allowed_pids(pids if traced else [_NOBODY])
        self.probes.set_sample_threshold(threshold_for_ratio(ratio) if ratio < 1.0 else 0)
        counter = syscall_counter(self.calls, pids, {"switch": _SWITCH_TP})
        try:
            c0 = counter.read()
            a, r0, t0 = self.probes.program_info(), [r.info() for r in self.refs], time.monotonic()
            await workload.round(n)
            b, r1, t1 = self.probes.program_info(), [r.info() for r in self.refs], time.monotonic()
            c1 = counter.read()
        finally:
            counter.close()
            self.probes.set_sample_threshold(0)
        w = Window(t1 - t0, *_delta(a, b), requests=n)
        w.refs = {r.kind: (y.run_cnt - x.run_cnt, y.run_time_ns - x.run_time_ns) for r, x, y in zip(self.refs, r0, r1)}
        counts = {tp: c1[tp] - c0[tp] for tp in c1}
        for prog in w.runs:
            if syscall_tracepoint(prog) is not None:
                # a syscall's enter and exit programs run once each per call
                w.workload_runs[prog] = min(counts.get(prog.split("_", 1)[1], 0), w.runs[prog])
        w.switches = counts.get("switch", 0)
        return w


def pooled(parts: list[tuple[Mapping[str, float], Mapping[str, float]]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-program runs and ns summed over (runs, ns) pairs of windows or attributions."""
    runs: dict[str, float] = {}
    ns: dict[str, float] = {}
    for r, t in parts:
        for p in r:
            runs[p] = runs.get(p, 0) + r[p]
            ns[p] = ns.get(p, 0) + t[p]
    return runs, ns


def untraced_cost(windows: list[Window]) -> dict[str, float]:
    """ns per run of each program when nobody is traced (pooled over the windows)."""
    runs, ns = pooled([(w.runs, w.ns) for w in windows])
    pooled_runs = sum(runs.get(p, 0) for p in runs if syscall_tracepoint(p))
    fallback = sum(ns.get(p, 0) for p in runs if syscall_tracepoint(p)) / max(1, pooled_runs)
    return {p: (ns[p] / runs[p] if runs[p] >= 100 else fallback) for p in runs}


@dataclass(slots=True)
class Attribution:
    """A traced phase's kernel time charged to its workload, per program."""

    runs: dict[str, float]
    ns: dict[str, float]

    @property
    def syscall_runs(self) -> float:
        return sum(r for p, r in self.runs.items() if syscall_tracepoint(p))

    @property
    def syscall_ns(self) -> float:
        return sum(v for p, v in self.ns.items() if syscall_tracepoint(p))

    @property
    def total_ns(self) -> float:
        return sum(self.ns.values())


def attribute(w: Window, untraced: dict[str, float], idle: Window) -> Attribution:
    runs: dict[str, float] = {}
    ns: dict[str, float] = {}
    for p, total in w.runs.items():
        if not total:
            continue
        if p in w.workload_runs:
            mine = w.workload_runs[p]
            others = total - mine
            runs[p] = mine
            ns[p] = max(0.0, w.ns[p] - others * untraced.get(p, 0.0))
        elif p == "on_sched_switch":
            mine = min(total, 2 * w.switches)
            runs[p] = mine
            ns[p] = w.ns[p] / total * mine
        else:
            background = idle.runs.get(p, 0) / idle.seconds * w.seconds if idle.seconds else 0
            mine = max(0.0, total - background)
            runs[p] = mine
            ns[p] = w.ns[p] / total * mine
    return Attribution(runs, ns)


async def run(rounds: int, requests: int, phases: list[str]) -> dict[str, object]:
    probes = ProbeSet(ProbeSettings())
    drain = Drain(probes)
    probes.set_red_bounds(_RED_BOUNDS_NS)
    broker = await start_broker()
    workloads = await make_workloads(broker, tuple(sorted({_PHASES[p][0] for p in phases})))
    refs = [ReferenceProgram(kind, _REF_TP) for kind in REFERENCES]
    sysctl_before = stats_sysctl()
    results: dict[str, list[Window]] = {name: [] for name in phases}
    idles: list[Window] = []
    bench = Bench(probes, refs)
    for wl in workloads.values():
        await wl.reset()  # connections the probes saw open
    try:
        with run_stats():
            for _ in range(rounds):
                idles.append(await bench.idle(1.0))
                for name in phases:
                    wl, scale, traced, ratio = _PHASES[name]
                    n = max(50, int(requests * scale))
                    results[name].append(await bench.phase(workloads[wl], n, traced, ratio))
    finally:
        for r in refs:
            r.close()
        drain.close()
        probes.close()
        for w in workloads.values():
            await w.stop()
        broker.stop()
    assert stats_sysctl() == sysctl_before
    return report(results, idles, drain.events)


def _fmt_ns(v: float) -> str:
    return f"{v:8.1f}"


def report(results: dict[str, list[Window]], idles: list[Window], drained: int) -> dict[str, object]:
    untraced_windows = [w for name, ws in results.items() if name.startswith("untraced") for w in ws] + idles
    untraced = untraced_cost(untraced_windows)
    idle = Window(sum(w.seconds for w in idles), {}, {})
    for w in idles:
        for p in w.runs:
            idle.runs[p] = idle.runs.get(p, 0) + w.runs[p]
    all_windows = [w for ws in results.values() for w in ws]
    ref_ns = {k: sum(w.refs[k][1] for w in all_windows) / max(1, sum(w.refs[k][0] for w in all_windows))
              for k in REFERENCES}
    floor = ref_ns["return 0"]
    print(f"reference programs on {_REF_TP}: " + ", ".join(f"{k} {v:.1f} ns/run" for k, v in ref_ns.items()))
    print(f"idle machine: {sum(idle.runs.values()) / max(idle.seconds, 1e-9):,.0f} program runs/s from other processes")

    # Untraced: every run on the machine takes the early exit; pooled over every untraced window.
    syscall_progs = [p for p in untraced if syscall_tracepoint(p)]
    u_runs = sum(w.runs[p] for w in untraced_windows for p in syscall_progs)
    u_ns = sum(w.ns[p] for w in untraced_windows for p in syscall_progs)
    untraced_mean = u_ns / max(1, u_runs)
    enter = [p for p in syscall_progs if p.startswith("enter_")]
    u_enter = sum(w.ns[p] for w in untraced_windows for p in enter) / max(1, sum(w.runs[p] for w in untraced_windows
                                                                                for p in enter))
    u_exit = sum(w.ns[p] for w in untraced_windows for p in syscall_progs if p not in enter) / max(
        1, sum(w.runs[p] for w in untraced_windows for p in syscall_progs if p not in enter))
    print(f"untraced processes: {untraced_mean:.1f} ns per syscall-tracepoint run ({u_runs:,} runs; sys_enter "
          f"{u_enter:.1f}, sys_exit {u_exit:.1f}); {untraced_mean - floor:.1f} above `return 0`")
    if floor > _UNTRACED_GOAL_NS:
        print(f"the untraced goal ({_UNTRACED_GOAL_NS} ns per run) is below what an empty program costs here: "
              f"`return 0` {floor:.1f} ns per run in this very run")

    out: dict[str, object] = {
        "ref_return0_ns_per_run": round(floor, 1),
        "ref_hash_miss_ns_per_run": round(ref_ns["tgid hash miss"], 1),
        "untraced_ns_per_run": round(untraced_mean, 1),
        "untraced_enter_ns_per_run": round(u_enter, 1),
        "untraced_exit_ns_per_run": round(u_exit, 1),
        "untraced_above_floor_ns_per_run": round(untraced_mean - floor, 1),
        "untraced_goal_below_floor": floor > _UNTRACED_GOAL_NS,
    }
    programs: dict[str, dict[str, list[float]]] = {}
    per_request: dict[str, float] = {}
    per_run: dict[str, float] = {}
    spread: dict[str, list[float]] = {}
    for name, ws in results.items():
        if name.startswith("untraced"):
            continue
        atts = [attribute(w, untraced, idle) for w in ws]
        reqs = sum(w.requests for w in ws)
        runs, ns = pooled([(a.runs, a.ns) for a in atts])
        total = sum(ns.values())
        sys_runs = sum(r for p, r in runs.items() if syscall_tracepoint(p))
        sys_ns = sum(v for p, v in ns.items() if syscall_tracepoint(p))
        per_request[name] = total / max(1, reqs)
        per_run[name] = sys_ns / max(1, sys_runs)
        spread[name] = [a.total_ns / max(1, w.requests) for a, w in zip(atts, ws)]
        unit = "request" if "http" in name else "publish" if "mqtt" in name else "syscall"
        print(f"\n{name}: {reqs:,} {unit}s in {len(ws)} rounds; kernel {per_request[name]:,.0f} ns per {unit} "
              f"(rounds: {', '.join(f'{x:,.0f}' for x in spread[name])}); syscall-tracepoint runs "
              f"{per_run[name]:.1f} ns each, {sys_runs / max(1, reqs):.1f} per {unit}")
        print(f"  {'program':22s} {'runs/' + unit:>14s} {'ns/run':>8s} {'ns/' + unit:>10s}")
        programs[name] = {}
        for p in sorted(ns, key=lambda p: -ns[p]):
            if runs[p] / max(1, reqs) < 0.005:
                continue
            programs[name][p] = [round(runs[p] / reqs, 2), round(ns[p] / max(1, runs[p]), 1)]
            print(f"  {p:22s} {runs[p] / reqs:14.2f} {_fmt_ns(ns[p] / max(1, runs[p]))} {ns[p] / reqs:10.1f}")
    # The scheduler programs run for every process of the machine, traced or not: their machine-wide rate and cost
    # over the whole run (busy phases and idle windows alike) is what a node pays for them.
    seconds = sum(w.seconds for w in all_windows) + idle.seconds
    # The event-loop turn programs (sys_exit of every epoll wait of the machine) likewise.
    for key, programs in (("sched_programs", ("on_sched_switch", "on_sched_waking", "on_sched_wakeup_new")),
                          ("turn_programs", ("exit_epoll_wait", "exit_epoll_pwait", "exit_epoll_pwait2"))):
        sched: dict[str, dict[str, float]] = {}
        for p in programs:
            runs_p = sum(w.runs.get(p, 0) for w in all_windows) + idle.runs.get(p, 0)
            ns_p = sum(w.ns.get(p, 0) for w in all_windows) + sum(w.ns.get(p, 0) for w in idles)
            if runs_p:
                sched[p] = {"runs_per_s": round(runs_p / max(seconds, 1e-9)), "ns_per_run": round(ns_p / runs_p, 1),
                            "cpu_pct": round(100 * ns_p / 1e9 / max(seconds, 1e-9), 3)}
                print(f"{p}: {sched[p]['runs_per_s']:,} runs/s machine-wide, {sched[p]['ns_per_run']} ns each, "
                      f"{sched[p]['cpu_pct']} % of one CPU")
        out[key] = sched
    out["traced_ns_per_run"] = {k: round(v, 1) for k, v in per_run.items()}
    out["kernel_ns_per_request"] = {k: round(v) for k, v in per_request.items()}
    out["kernel_ns_per_request_round_spread"] = {k: round(max(v) - min(v)) for k, v in spread.items() if v}
    out["programs_per_request"] = programs  # phase -> program -> [runs per request, ns per run]
    out["records_drained"] = drained
    if "http_keepalive" in per_run:
        out["ratio_traced_run_to_return0"] = round(per_run["http_keepalive"] / floor, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=5000, help="HTTP keep-alive requests per round (others scaled)")
    ap.add_argument("--phases", default=",".join(_PHASES), help=f"comma-separated subset of {', '.join(_PHASES)}")
    args = ap.parse_args()
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(_PHASES)
    if unknown:
        ap.error(f"unknown phases: {', '.join(sorted(unknown))}")
    result = asyncio.run(run(args.rounds, args.requests, phases))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
