"""What the Python task-context probes (bpf/pyctx.bpf.h) cost an aiohttp service: CPU per request with the uprobe pair
on PyContext_CopyCurrent attached and detached in turn, in one run, and how many copies a request makes.

The service is the testbed's scenario 9 (bench/accuracy_service.py --mode aiohttp: one asyncio thread, 1 to 3
concurrent calls per request through asyncio.gather, at aiohttp's defaults) calling a ThreadingHTTPServer; a load
generator sends keep-alive requests from 8 threads. All three are traced (the allow-list); the syscall probes stay
loaded throughout and this process drains and decodes the ring buffer, standing in for the agent. Per round, the
context probes are attached (PyContextAttacher, as the agent does) and detached, the order alternating. The service's
CPU time (utime + stime from /proc) per request is the figure; copies per request come from the probes' own edge
counter.

Same-run reference: the service's CPU per request with the context probes detached.

    python bench/python_contexts_cost.py [--rounds 4] [--requests 800]      (root)

Last line: JSON with µs of service CPU per request detached and attached, the difference, copies per request and µs
per copy.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge.sources.ebpf.loader import KernelEventStream, ProbeSet, ProbeSettings  # noqa: E402
from edge.sources.ebpf.py_attach import PyContextAttacher  # noqa: E402
from tests.edge.sources.ebpf.spans._grpc_recording import CLIENT, _free_port  # noqa: E402

SERVICE = str(Path(__file__).resolve().parent / "accuracy_service.py")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def phase(probes: ProbeSet, loop_pid: int, port: int, requests: int, attached: bool,
                pids: frozenset[int]) -> tuple[float, float]:
    """(service CPU µs per request, context copies per request) of one phase."""
    attacher = PyContextAttacher(probes, os.getpid(), pids)
    if attached:
        attacher.start()
    edges0 = probes.pyctx_counts().get("context_edges", 0)
    c0 = cpu_s(loop_pid)
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", CLIENT, str(port), str(requests), "8", "/loop",
                                             "0"], check=True, timeout=600)
    c1 = cpu_s(loop_pid)
    edges = probes.pyctx_counts().get("context_edges", 0) - edges0
    attacher.close()
    return (c1 - c0) / requests * 1e6, edges / requests


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=800)
    args = ap.parse_args()
    db, port = _free_port(), _free_port()
    procs = [subprocess.Popen([sys.executable, SERVICE, "--name", name, "--mode", mode, "--port", str(p),
                               "--oracle", "/dev/null", *extra], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                              text=True)
             for name, mode, p, extra in (("db", "http", db, []),
                                          ("loop", "aiohttp", port, ["--call", f"http://127.0.0.1:{db}/db"]))]
    try:
        for p in procs:
            assert p.stdout is not None
            p.stdout.readline()
        loop_pid = procs[1].pid
        off: list[float] = []
        on: list[float] = []
        copies: list[float] = []
        with ProbeSet(ProbeSettings()) as probes:
            probes.set_allowed_pids([p.pid for p in procs])
            stream = KernelEventStream(probes, lambda evs: None)
            stream.start(asyncio.get_running_loop())
            pids = frozenset(p.pid for p in procs)
            await phase(probes, loop_pid, port, 200, False, pids)  # warm-up: connections, imports
            for r in range(args.rounds):
                for attached in ((False, True) if r % 2 == 0 else (True, False)):
                    us, n = await phase(probes, loop_pid, port, args.requests, attached, pids)
                    (on if attached else off).append(us)
                    if attached:
                        copies.append(n)
            stream.close()
        detached, attached_us = statistics.median(off), statistics.median(on)
        per_request = statistics.median(copies)
        added = attached_us - detached
        print(f"service CPU per request: detached {detached:.0f} µs, attached {attached_us:.0f} µs "
              f"({added:+.0f} µs); {per_request:.1f} context copies per request")
        print(json.dumps({"cpu_us_per_request_detached": round(detached, 1),
                          "cpu_us_per_request_attached": round(attached_us, 1),
                          "added_us_per_request": round(added, 1), "ratio": round(attached_us / detached, 3),
                          "copies_per_request": round(per_request, 2),
                          "added_us_per_copy": round(added / per_request, 2) if per_request else None,
                          "rounds": args.rounds, "requests": args.requests,
                          "detached_runs": [round(x, 1) for x in off], "attached_runs": [round(x, 1) for x in on]}))
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)


if __name__ == "__main__":
    asyncio.run(main())
