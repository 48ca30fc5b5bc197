"""What the TLS uprobes cost: the kernel's own statistics per program run, and the latency they add to an HTTPS
request on loopback, with the probes attached and detached in turn in one run.

nginx (an `ssl` listener, a fixed 200 answer) and a Python client on one keep-alive HTTPS connection (http.client over
the ssl module: libssl.so.3) are the only traced processes (the allow-list). The syscall probes stay loaded
throughout; per round the TLS uprobes are attached to every OpenSSL file the two map (as the agent does, TlsAttacher)
and detached again, with the order of the two phases alternating. BPF run-time statistics count the programs' own
time (the uprobe's trap into the kernel and back is not in them: the latency difference has it). This process
drains and decodes the ring buffer, standing in for the agent. A third phase leaves the uprobes attached but takes
the processes off the allow-list: the programs take their first exit, so that phase shows what the traps alone add.
A fourth attaches the Python task-context probes (py_attach.py) too: each SSL_write entry of the client's thread then
sends its context chain (bpf/pyctx.bpf.h, one record per write); the write entry's run time with and without them is
that record's cost. The client copies its context once per batch of requests (what every asyncio task does) so that
its thread state is learned.

Same-run references: the client's request latency with the uprobes detached, and a `return 0` program on
sys_enter_read (what any program run costs here).

    python bench/tls_cost.py [--rounds 4] [--requests 3000]      (root)

Last line: JSON with ns per uprobe and uretprobe run, TLS calls per request, and the latency added per request and
per TLS call.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _perf import ReferenceProgram  # noqa: E402

from edge.demo.broker import free_port  # noqa: E402
from edge.sources.ebpf.cost import run_stats  # noqa: E402
from edge.sources.ebpf.loader import KernelEventStream, ProbeSet, ProbeSettings  # noqa: E402
from edge.sources.ebpf.py_attach import PyContextAttacher  # noqa: E402
from edge.sources.ebpf.tls_attach import ATTACH_POINTS, TlsAttacher  # noqa: E402

CLIENT = r"""
import contextvars, http.client, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
conn = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
conn.request("GET", "/"); conn.getresponse().read()
print("ready", flush=True)
for line in sys.stdin:
    contextvars.copy_context()  # PyContext_CopyCurrent: the context probes learn this thread's state
    times = []
    for _ in range(int(line)):
        t0 = time.perf_counter_ns()
        conn.request("GET", "/orders?id=1", headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
        conn.getresponse().read()
        times.append(time.perf_counter_ns() - t0)
    print(" ".join(map(str, times)), flush=True)
"""
_ENTRY = {p for p, _ in ATTACH_POINTS.values()}
_RETURN = {r for _, r in ATTACH_POINTS.values() if r}
_WRITE_ENTRY = {"tls_write_enter", "tls_write_ex_enter"}


def start_nginx(workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port = free_port()
    (workdir / "nginx.conf").write_text(f"""
user root; worker_processes 1; pid {workdir}/nginx.pid; error_log {workdir}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off; keepalive_requests 1000000;
  client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path {workdir};
  uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
           location / {{ return 200 "ok\\n"; }} }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port, cert


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def run_requests(client: subprocess.Popen[str], n: int) -> list[int]:
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(f"{n}\n")
    client.stdin.flush()
    return [int(x) for x in client.stdout.readline().split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="helix-tls-cost-"))
    nginx, port, cert = start_nginx(work)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(cert)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None and client.stdout.readline() == "ready\n"
    probes = ProbeSet(ProbeSettings())
    stream = KernelEventStream(probes, lambda evs: None)
    try:
        out = asyncio.run(measure(args, probes, stream, client, nginx))
    finally:
        probes.close()
        client.kill()
        client.wait(5)
        nginx.terminate()
        nginx.wait(5)
        shutil.rmtree(work, ignore_errors=True)
    print(f"HTTPS keep-alive GET on loopback (Python ssl client -> nginx ssl), {args.rounds} rounds x "
          f"{args.requests} requests per phase")
    print(f"  TLS uprobes: {out['uprobe_ns_per_run']} ns per entry run, {out['uretprobe_ns_per_run']} ns per return "
          f"run (program time only); {out['tls_calls_per_request']} TLS calls per request (client and server)")
    print(f"  latency median: detached {out['latency_detached_median_us']} µs, attached "
          f"{out['latency_attached_median_us']} µs: +{out['added_per_request_us']} µs per request, "
          f"+{out['added_per_tls_call_us']} µs per TLS call (trap, program and return probe)")
    print(f"  uprobes attached but the processes untraced (first exit): {out['latency_attached_untraced_median_us']} µs,"
          f" +{out['added_untraced_per_tls_call_us']} µs per TLS call (the traps alone)")
    print(f"  SSL_write entry: {out['write_entry_ns_per_run']} ns per run, {out['write_entry_with_contexts_ns_per_run']}"
          f" ns with the Python context probes ({out['context_chains_per_write']} context records per write; client and"
          f" server writes together): +{out['added_per_context_record_ns']} ns per record; latency median with them "
          f"{out['latency_contexts_median_us']} µs")
    print(f"  reference: `return 0` on sys_enter_read {out['ref_return0_ns_per_run']} ns per run")
    print(json.dumps(out))


async def measure(args: argparse.Namespace, probes: ProbeSet, stream: KernelEventStream,
                  client: subprocess.Popen[str], nginx: subprocess.Popen[bytes]) -> dict[str, float]:
    """The rounds, with this loop draining the ring buffer meanwhile as the agent's would."""
    stream.start()
    traced = [client.pid, nginx.pid, *children(nginx.pid)]
    probes.set_allowed_pids(traced)
    ref = ReferenceProgram("return 0", "syscalls/sys_enter_read")
    lat: dict[str, list[int]] = {"detached": [], "attached": [], "attached_untraced": [], "contexts": []}
    writes = {"attached": [0, 0], "contexts": [0, 0]}  # SSL_write entries: runs, run time
    chains = 0
    runs = {"entry": 0, "return": 0}
    ns = {"entry": 0, "return": 0}
    requests_attached = 0
    ref0 = ref.info()
    try:
        with run_stats():
            ref0 = ref.info()
            await asyncio.to_thread(run_requests, client, 200)  # warm
            for r in range(args.rounds):
                phases = ["detached", "attached", "attached_untraced", "contexts"]
                for phase in phases[r % 4:] + phases[:r % 4]:
                    attacher = py = None
                    if phase != "detached":
                        attacher = TlsAttacher(probes, os.getpid(), frozenset(traced))
                        await asyncio.to_thread(attacher.start)
                    if phase == "contexts":
                        py = PyContextAttacher(probes, os.getpid(), frozenset([client.pid]))
                        await asyncio.to_thread(py.start)
                        await asyncio.to_thread(run_requests, client, 1)  # (the state is learned at the next copy)
                    if attacher is not None:
                        before = probes.program_info()
                        chains0 = probes.pyctx_counts().get("context_chains", 0)
                    # untraced: the uprobes fire but the programs take their first exit (the allow-list)
                    probes.set_allowed_pids([0] if phase == "attached_untraced" else traced)
                    times = await asyncio.to_thread(run_requests, client, args.requests)
                    stream.poll()
                    if attacher is not None and phase == "attached_untraced":
                        attacher.close()
                    elif attacher is not None:
                        after = probes.program_info()
                        for name in _WRITE_ENTRY & after.keys():
                            writes[phase][0] += after[name].run_cnt - before[name].run_cnt
                            writes[phase][1] += after[name].run_time_ns - before[name].run_time_ns
                        if phase == "contexts":
                            chains += probes.pyctx_counts().get("context_chains", 0) - chains0
                            if py is not None:
                                py.close()
                            lat[phase] += times
                            attacher.close()
                            continue
                        for name, info in after.items():
                            kind = "entry" if name in _ENTRY else "return" if name in _RETURN else None
                            if kind:
                                runs[kind] += info.run_cnt - before[name].run_cnt
                                ns[kind] += info.run_time_ns - before[name].run_time_ns
                        requests_attached += len(times)
                        attacher.close()
                    lat[phase] += times
            ref1 = ref.info()
    finally:
        ref.close()
        stream.close()
    med = {k: statistics.median(v) for k, v in lat.items()}
    mean = {k: statistics.fmean(v) for k, v in lat.items()}
    calls = runs["entry"] / max(1, requests_attached)  # TLS calls (read, write, ...) per request, both processes
    added = med["attached"] - med["detached"]
    ref_ns = (ref1.run_time_ns - ref0.run_time_ns) / max(1, ref1.run_cnt - ref0.run_cnt)
    out = {
        "requests_per_phase": args.requests * args.rounds,
        "uprobe_ns_per_run": round(ns["entry"] / max(1, runs["entry"]), 1),
        "uretprobe_ns_per_run": round(ns["return"] / max(1, runs["return"]), 1),
        "tls_calls_per_request": round(calls, 2),
        "latency_detached_median_us": round(med["detached"] / 1e3, 1),
        "latency_attached_median_us": round(med["attached"] / 1e3, 1),
        "latency_detached_mean_us": round(mean["detached"] / 1e3, 1),
        "latency_attached_mean_us": round(mean["attached"] / 1e3, 1),
        "added_per_request_us": round(added / 1e3, 2),
        "added_per_tls_call_us": round(added / 1e3 / max(calls, 1e-9), 2),
        "latency_attached_untraced_median_us": round(med["attached_untraced"] / 1e3, 1),
        "added_untraced_per_tls_call_us": round((med["attached_untraced"] - med["detached"]) / 1e3 / max(calls, 1e-9),
                                                2),
        "ratio_attached_to_detached": round(med["attached"] / med["detached"], 3),
        "ref_return0_ns_per_run": round(ref_ns, 1),
        "write_entry_ns_per_run": round(writes["attached"][1] / max(1, writes["attached"][0]), 1),
        "write_entry_with_contexts_ns_per_run": round(writes["contexts"][1] / max(1, writes["contexts"][0]), 1),
        "context_chains_per_write": round(chains / max(1, writes["contexts"][0]), 3),
        # the write entries' extra run time with the context probes, per context record sent
        "added_per_context_record_ns": round((writes["contexts"][1] - writes["contexts"][0] * writes["attached"][1]
                                              / max(1, writes["attached"][0])) / max(1, chains), 1),
        "latency_contexts_median_us": round(med["contexts"] / 1e3, 1),
    }
    return out


if __name__ == "__main__":
    main()
