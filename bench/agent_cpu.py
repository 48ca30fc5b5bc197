"""The agent's CPU time per traced request, with every exchange kept (ratio 1.0) and with the kernel deciding (0.1).

Runs `helix run` as a real process with the kernel probes, tracing only the workload's processes (its
sources.ebpf.pids allow-list, so that other work on a shared machine adds nothing), its uplink to a Mosquitto of its
own where a real `helix gateway` takes and confirms its batches, and drives rounds of loopback HTTP/1.1 keep-alive
requests, HTTP/1.1 requests on new connections and MQTT publishes (bench/_loopback.py; client and server both traced, so one request is two exchanges, a client and a
server span). The agent's CPU time (user + system, from the scheduler's clock in /proc/<pid>/task/*/schedstat) is
read around each round and until the agent is idle again (the last spans leave through the assembler's window and the
uplink); its idle rate, measured beforehand, is taken out. At ratio 0.1 the kernel holds back nine exchanges in ten
and counts them into its RED aggregates: the agent never sees their records.

The same-run references, each taken before and after: bench/span_builder.py's fixed calibration loop (plain CPython
work that no change to the agent moves: agent CPU per request is also given in thousands of its loops, "kloops"), and
decoding and building spans from synthetic HTTP records in this process (which the agent's own span building
speeds up or slows down with it; agent CPU per request is also given in those records' time, "reference records").
The agent's idle rate and the kernel spans it accepted per request (its /metrics) are printed beside.

    python bench/agent_cpu.py [--requests 1000] [--rounds 2] [--rate 200] [--ratios 1.0,0.1] [--profile PATH]  (root)

Last line: JSON with µs of agent CPU per request per workload and ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loopback import Workload, make_workloads, oncpu_ns, start_broker  # noqa: E402
from span_builder import calibration_loops_per_s, decode_and_build, http_records  # noqa: E402

from edge.demo.broker import Mosquitto, free_port  # noqa: E402
from edge.demo.stack import Stack  # noqa: E402

# requests per round relative to --requests
_SCALE = {"http_keepalive": 1.0, "http_new_connection": 0.5, "mqtt_publish": 0.5}
_SETTLE_STEP_S = 0.5


def agent_config(work: Path, ratio: float, pids: list[int], uplink: Mosquitto, metrics_port: int,
                 python_contexts: bool = True) -> Path:
    path = work / f"agent-{ratio}.toml"
    path.write_text(f"""
[node]
id = "bench-node"
[sources.mqtt]
enabled = false
[sources.otlp]
grpc_listen = ""
http_listen = ""
[sources.ebpf]
enabled = "auto"
pids = {json.dumps(pids)}
python_contexts = {json.dumps(python_contexts)}
[sampler]
ratio = {ratio}
[metrics]
listen = "127.0.0.1:{metrics_port}"
[uplink]
broker = "{uplink.url}"
spool_dir = "{work / f'spool-{ratio}'}"
""")
    return path


async def wait_log(path: Path, text: str, timeout: float = 90) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        body = path.read_text(errors="replace") if path.exists() else ""
        if text in body:
            return body
        await asyncio.sleep(0.2)
    raise SystemExit(f"timed out waiting for {text!r} in {path}:\n{path.read_text(errors='replace')[-2000:]}")


def span_counts(metrics_port: int) -> tuple[int, int]:
    """Kernel spans the agent has accepted so far, and spans it dropped for want of room (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^helix_agent_spans_accepted_total\{[^}]*source="ebpf"[^}]*\} (\d+)', text, re.M)
    dropped = sum(int(v) for reason, v in re.findall(r'^helix_agent_spans_dropped_total\{[^}]*reason="([^"]+)"[^}]*\} '
                                                       r'(\d+)', text, re.M) if reason != "sampled_out")
    return (int(m.group(1)) if m else 0), dropped


def reference_us_per_record(exchanges: int = 5000) -> float:
    """µs per record to decode and build spans in this process (bench/span_builder.py's records)."""
    records = http_records(exchanges)
    _, _, seconds = decode_and_build(records)
    return seconds / len(records) * 1e6


async def idle_rate(pid: int, seconds: float) -> float:
    """The agent's CPU ns per second of wall time with nothing to do."""
    c0, t0 = oncpu_ns(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (oncpu_ns(pid) - c0) / (time.monotonic() - t0)


async def charged_round(agent_pid: int, wl: Workload, n: int, rate: float, idle: float) -> float:
    """Agent CPU ns the round caused: until the agent is back to its idle rate, minus that rate."""
    c0, t0 = oncpu_ns(agent_pid), time.monotonic()
    await wl.round(n, max(wl.interval, 1 / rate))
    await asyncio.sleep(1.5)  # the flush interval: spans whose end came last leave by then
    for _ in range(40):
        a = oncpu_ns(agent_pid)
        await asyncio.sleep(_SETTLE_STEP_S)
        if oncpu_ns(agent_pid) - a <= 2 * idle * _SETTLE_STEP_S + 1_000_000:
            break
    return (oncpu_ns(agent_pid) - c0) - idle * (time.monotonic() - t0)


async def run(requests: int, rounds: int, rate: float, ratios: list[float], profile: str = "",
              python_contexts: bool = True) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="helix-bench-cpu-"))
    broker = await start_broker(work / "mqtt")
    # A real gateway takes the uplink and confirms each batch, as on a node: without confirmations the agent would
    # send every batch again and count that work as the requests'.
    (work / "uplink").mkdir()
    upstream = Stack(work / "uplink")
    await upstream.__aenter__()
    await upstream.start_gateway()
    uplink = upstream.broker
    workloads = await make_workloads(broker, tuple(_SCALE))
    pids = sorted({p for wl in workloads.values() for p in wl.pids})
    out: dict[str, object] = {"python_contexts": python_contexts}
    per_request: dict[str, float] = {}
    refs = [reference_us_per_record()]
    cals = [calibration_loops_per_s()]
    try:
        for ratio in ratios:
            metrics_port = free_port()
            log_path = work / f"agent-{ratio}.log"
            with open(log_path, "wb") as log:
                prof = ["-m", "cProfile", "-o", f"{profile}.{ratio}"] if profile else []
                agent = await asyncio.create_subprocess_exec(
                    sys.executable, *prof, "-m", "edge", "run", "--config",
                    str(agent_config(work, ratio, pids, uplink, metrics_port, python_contexts)), "--log-level", "info",
                    stdout=log, stderr=log)
            try:
                started = await wait_log(log_path, "agent running")
                if "kernel=running" not in started:
                    raise SystemExit(f"the agent runs without the kernel probes:\n{started[-2000:]}")
                for wl in workloads.values():
                    await wl.reset()  # connections this agent's probes saw open
                await asyncio.sleep(2.0)
                idle = await idle_rate(agent.pid, 3.0)
                print(f"ratio {ratio}: agent idle {idle / 1e6:.2f} ms CPU per s", file=sys.stderr)
                for name, wl in workloads.items():
                    n = max(100, int(requests * _SCALE[name]))
                    per_req = []
                    spans0, dropped0 = span_counts(metrics_port)
                    for _ in range(rounds):
                        per_req.append(await charged_round(agent.pid, wl, n, rate, idle) / n / 1000)
                    spans1, dropped1 = span_counts(metrics_port)
                    spans = (spans1 - spans0) / (n * rounds)
                    out[f"{name}@{ratio}_dropped"] = dropped1 - dropped0
                    if dropped1 > dropped0:
                        print(f"  ({dropped1 - dropped0} spans dropped for want of room: the agent did not keep up; "
                              "lower --rate)", file=sys.stderr)
                    key = f"{name}@{ratio}"
                    out[key] = per_request[key] = round(statistics.median(per_req), 2)
                    print(f"  {name:20s} ratio {ratio}: {statistics.median(per_req):7.2f} µs agent CPU per "
                          f"{wl.unit} (rounds: {', '.join(f'{x:.2f}' for x in per_req)}); {spans:.2f} kernel spans "
                          f"per {wl.unit}", file=sys.stderr)
                    out[f"{key}_spans_per_request"] = round(spans, 2)
                out[f"agent_idle_ms_per_s@{ratio}"] = round(idle / 1e6, 2)
            finally:
                agent.terminate()
                await agent.wait()
    finally:
        for wl in workloads.values():
            await wl.stop()
        await upstream.close()
        broker.stop()
    refs.append(reference_us_per_record())
    cals.append(calibration_loops_per_s())
    out["calibration_loops_per_s"] = [round(c) for c in cals]
    loop_us = 1e6 / statistics.fmean(cals)
    print(f"reference: decode + span building {refs[0]:.1f} µs per record before, {refs[1]:.1f} after",
          file=sys.stderr)
    out["reference_us_per_record"] = [round(r, 2) for r in refs]
    # in the time one reference record takes in the same run (the mean of before and after: a shared machine's speed
    # drifts over a run)
    ref = statistics.fmean(refs)
    for key, us in per_request.items():
        out[f"{key}_in_reference_records"] = round(us / ref, 2)
        out[f"{key}_in_calibration_kloops"] = round(us / loop_us / 1000, 3)
        print(f"  {key:26s} {us:8.2f} µs = {us / ref:5.2f} reference records = {us / loop_us / 1000:6.3f} "
              "calibration kloops", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="keep-alive requests per round (others scaled)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=float, default=200.0,
                    help="requests per second offered (an agent that cannot keep up would drop, not work, per request)")
    ap.add_argument("--ratios", default="1.0,0.1", help="comma-separated sampling ratios (sampler.ratio)")
    ap.add_argument("--profile", default="", metavar="PATH",
                    help="run the agent under cProfile, writing PATH.<ratio> (the CPU figures then include cProfile's "
                         "own cost)")
    ap.add_argument("--python-contexts", choices=("on", "off"), default="on",
                    help="sources.ebpf.python_contexts: the uprobe pair on PyContext_CopyCurrent of every interpreter "
                         "file the traced processes run (the workloads run the agent's own interpreter)")
    args = ap.parse_args()
    ratios = [float(r) for r in args.ratios.split(",") if r]
    print(json.dumps(asyncio.run(run(args.requests, args.rounds, args.rate, ratios, args.profile,
                                    args.python_contexts == "on"))))


if __name__ == "__main__":
    main()
