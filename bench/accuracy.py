"""Stitching accuracy against ground truth: real services, real kernel probes, real broker, scored per scenario.

Runs the agent (kernel probes on) and the gateway in this process, an OTLP peer collecting what the gateway
exports, and testbed services (bench/accuracy_service.py) as separate processes that record every request
they handle, with its true parent, in oracle files. Then scores the received traces (bench/accuracy_score.py,
definitions in docs/accuracy.md). Needs root and BPF.

    python bench/accuracy.py [--quick]

Last line: {"scenarios": {name: {"traceid_match", "parent_precision", "parent_recall", "coverage",
"false_link_rate", "spans"}}, "overall": {...}}
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.accuracy_score import OracleEntry, Score, pooled, score  # noqa: E402
from edge.agent import Agent  # noqa: E402
from edge.codec.otlp import request_to_json, spans_from_request  # noqa: E402
from edge.config import parse_config  # noqa: E402
from edge.demo.broker import Mosquitto, free_port  # noqa: E402
from edge.demo.otlp_peer import OtlpPeer  # noqa: E402
from uplink.gateway import Gateway  # noqa: E402

SERVICE = str(Path(__file__).with_name("accuracy_service.py"))


@dataclass
class Svc:
    """A testbed service to start: name, mode, instrumented or not, whom it calls."""

    name: str
    mode: str = "http"
    sdk: bool = False
    calls: list[str] = field(default_factory=list)  # names of other services
    extra: list[str] = field(default_factory=list)


@dataclass
class Scenario:
    """Services, how to drive them, and which services are entered by the load generator."""

    name: str
    services: list[Svc]
    entry: str | None = None  # service the load generator calls (None: the scenario drives itself)
    clients: int = 1
    requests: int = 50
    nginx_before: str | None = None  # put an nginx reverse proxy in front of this service


class Testbed:
    def __init__(self, work: Path, broker: Mosquitto, agent_otlp: str) -> None:
        self.work = work
        self.broker = broker
        self.agent_otlp = agent_otlp
        self.procs: list[subprocess.Popen[str]] = []
        self.ports: dict[str, int] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/{name}"

    def start(self, sc: Scenario) -> list[Path]:
        oracles = []
        for svc in sc.services:
            self.ports[svc.name] = free_port()
        nginx_port = None
        if sc.nginx_before:
            nginx_port = self.nginx(self.ports[sc.nginx_before])
        # Start callees first (reverse order) so every call finds its server.
        for svc in reversed(sc.services):
            oracle = self.work / f"{sc.name}-{svc.name}.jsonl"
            oracles.append(oracle)
            args = [sys.executable, SERVICE, "--name", svc.name, "--mode", svc.mode, "--oracle", str(oracle),
                    "--port", str(self.ports[svc.name]), "--broker", str(self.broker.port), *svc.extra]
            if svc.sdk:
                args += ["--sdk", self.agent_otlp]
            for callee in svc.calls:
                port = nginx_port if callee == sc.nginx_before else self.ports[callee]
                args += ["--call", f"http://127.0.0.1:{port}/{callee}"]
            p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
            if svc.mode not in ("batch", "publish"):
                assert p.stdout is not None
                line = p.stdout.readline()
                if "ready" not in line:
                    raise SystemExit(f"service {svc.name} did not start")
        return oracles

    def nginx(self, upstream: int) -> int:
        port = free_port()
        conf = self.work / f"nginx-{port}.conf"
        conf.write_text(f"""user root; worker_processes 1; pid {self.work}/nginx-{port}.pid;
error_log {self.work}/nginx-{port}.log warn; events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {self.work}; proxy_temp_path {self.work};
  fastcgi_temp_path {self.work}; uwsgi_temp_path {self.work}; scgi_temp_path {self.work};
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 8; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.procs.append(subprocess.Popen([binary, "-c", str(conf), "-g", "daemon off;"]))
        time.sleep(0.5)
        return port

    def wait_self_driven(self) -> None:
        for p in self.procs:
            if p.args[p.args.index("--mode") + 1] in ("batch", "publish") if "--mode" in p.args else False:
                p.wait(300)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


def drive(url: str, requests: int, clients: int) -> None:
    """The load generator: roots of the scenario's traces, on keep-alive connections."""
    host = url.split("/")[2]
    path = "/" + url.split("/", 3)[3]

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection(host, timeout=30)
        for _ in range(n):
            rid = uuid.uuid4().hex[:16]
            conn.request("GET", f"{path}?rid={rid}&trace={rid}")
            conn.getresponse().read()
            time.sleep(0.005)
        conn.close()

    threads = [threading.Thread(target=worker, args=(requests // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def scenarios(quick: bool) -> list[Scenario]:
    n = 20 if quick else 100
    chain = [Svc("createOrder", sdk=True, calls=["applyPromotion"]), Svc("applyPromotion", calls=["riskReview"]),
             Svc("riskReview", sdk=True, calls=["db"]), Svc("db")]
    return [
        Scenario("1-sync-chain", chain, entry="createOrder", requests=n),
        Scenario("2-nginx-proxy", [Svc(s.name, s.mode, s.sdk, list(s.calls)) for s in chain], entry="createOrder",
                 requests=n, nginx_before="applyPromotion"),
        Scenario("3-mqtt-async", [Svc("publisher", "publish", sdk=True, extra=["--count", str(n)]),
                                  Svc("subscriber", "subscribe", calls=["db"]), Svc("db")]),
        Scenario("4-batch-fanout", [Svc("batchJob", "batch", sdk=True, calls=["db"],
                                        extra=["--count", "1" if quick else "2", "--fanout", "100"]), Svc("db")]),
        Scenario("5-thread-pool", [Svc("pool", "pool", calls=["db"]), Svc("db")], entry="pool", clients=4,
                 requests=n),
        Scenario("6-keep-alive", [Svc("front", sdk=True, calls=["back"]), Svc("back", sdk=True)], entry="front",
                 requests=n),
        Scenario("7-no-context", [Svc("front", calls=["back"]), Svc("back")], entry="front", requests=n),
    ]


def read_oracle(paths: list[Path]) -> list[OracleEntry]:
    out = []
    for p in paths:
        if p.exists():
            for line in p.read_text().splitlines():
                d = json.loads(line)
                out.append(OracleEntry(d["rid"], d["parent_rid"], d["trace"], d["service"]))
    return out


async def run(quick: bool, only: tuple[str, ...] = (), dump: Path | None = None) -> dict[str, Score]:
    work = Path(tempfile.mkdtemp(prefix="helix-accuracy-"))
    broker = Mosquitto(workdir=work).start()
    peer = await OtlpPeer().start()
    grpc_port = free_port()
    cfg = parse_config({
        "sources": {"mqtt": {"broker": broker.url}, "ebpf": {"enabled": True},
                    "otlp": {"grpc_listen": f"127.0.0.1:{grpc_port}", "http_listen": ""}},
        "uplink": {"broker": broker.url, "batch_max_age": "300ms", "spool_dir": str(work / "spool")},
        "gateway": {"broker": broker.url, "http_listen": "", "export_endpoint": peer.grpc_endpoint},
    })
    stop = asyncio.Event()
    agent = Agent(cfg)
    tasks = [asyncio.create_task(Gateway(cfg.gateway).run(stop)), asyncio.create_task(agent.run(stop))]
    await asyncio.wait_for(agent.started.wait(), 30)
    await asyncio.sleep(1.0)
    results: dict[str, Score] = {}
    try:
        for sc in scenarios(quick):
            if only and not any(o in sc.name for o in only):
                continue
            mark = len(peer.requests)
            bed = Testbed(work, broker, f"http://127.0.0.1:{grpc_port}")
            oracles = bed.start(sc)
            await asyncio.sleep(0.5)
            if sc.entry:
                await asyncio.to_thread(drive, bed.url(sc.entry), sc.requests, sc.clients)
            else:
                await asyncio.to_thread(bed.wait_self_driven)
                await asyncio.sleep(1.0)
            # Everything must pass the assembler window and the uplink before it is scored.
            last, quiet = -1, time.monotonic()
            while time.monotonic() - quiet < 3.0:
                await asyncio.sleep(0.3)
                if len(peer.requests) != last:
                    last, quiet = len(peer.requests), time.monotonic()
            await asyncio.to_thread(bed.stop)
            spans = [s for req in peer.requests[mark:] for s in spans_from_request(req)]
            oracle = read_oracle(oracles)
            if dump is not None:
                dump.mkdir(parents=True, exist_ok=True)
                (dump / f"{sc.name}.otlp.jsonl").write_text(
                    "".join(request_to_json(req) + "\n" for req in peer.requests[mark:]))
                (dump / f"{sc.name}.oracle.jsonl").write_text("".join(p.read_text() for p in oracles if p.exists()))
            sdk_services = {s.name for s in sc.services if s.sdk}
            on_wire = {o.rid for o in oracle if o.parent_rid and _service_of(o.parent_rid, oracle) in sdk_services}
            results[sc.name] = score(spans, oracle, on_wire)
            r = results[sc.name]
            print(f"  {sc.name}: {r.requests} requests, {r.spans} spans", file=sys.stderr, flush=True)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await peer.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def _service_of(rid: str, oracle: list[OracleEntry]) -> str | None:
    for o in oracle:
        if o.rid == rid:
            return o.service
    return None


def table(results: dict[str, Score]) -> str:
    """The human table."""
    head = "| scenario | TraceID match | parent-child precision | parent-child recall | end-to-end coverage | false-link rate | spans |"
    rows = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        rows.append(f"| {name} | {r.traceid_match:.1%} | {r.parent_precision:.1%} | {r.parent_recall:.1%} | "
                    f"{r.coverage:.1%} | {r.false_link_rate:.1%} | {r.spans} |")
    o = pooled(results)
    rows.append(f"| overall | {o['traceid_match']:.1%} | {o['parent_precision']:.1%} | {o['parent_recall']:.1%} | "
                f"{o['coverage']:.1%} | {o['false_link_rate']:.1%} | {o['spans']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests per scenario (about a minute)")
    ap.add_argument("--only", metavar="NAMES", default="",
                    help="comma-separated: run the scenarios whose name contains one of them")
    ap.add_argument("--dump", metavar="DIR", help="write each scenario's spans (OTLP JSON) and oracle to DIR")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/accuracy.py loads the kernel probes: run it as root")
    only = tuple(n for n in args.only.split(",") if n)
    results = asyncio.run(run(args.quick, only, Path(args.dump) if args.dump else None))
    print(table(results))
    print(json.dumps({"scenarios": {k: v.as_dict() for k, v in results.items()}, "overall": pooled(results)}))


if __name__ == "__main__":
    main()
