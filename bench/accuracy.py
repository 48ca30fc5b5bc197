"""Stitching accuracy against ground truth: real services, real kernel probes, real broker, scored per scenario.

Runs a private Mosquitto, an OTLP peer, `helix gateway` and `helix run` (kernel probes on, traced PIDs
restricted to the testbed's processes) as real processes, and the testbed services (bench/accuracy_service.py,
some instrumented with the OpenTelemetry SDK at its defaults, some not; nginx as a reverse proxy; a Node.js
server, bench/accuracy_node.js) which record every request they handle, with its true parent, in their own oracle
files. Each scenario is driven in turn, what reaches the OTLP peer is scored against the oracle
(bench/accuracy_score.py; definitions in docs/accuracy.md). Needs root and BPF.

    python bench/accuracy.py [--quick] [--only NAMES] [--dump DIR [--dump-events]] [--no-doc] [--fast-export]
                             [--payload-bytes N]

--dump-events also records each scenario's kernel events beside the agent (bench/accuracy_events.py) to
DIR/<scenario>.events.jsonl.gz, for replay through the span builder.
--fast-export makes the SDKs export every 200 ms instead of their default 5 s (quick runs; the figures in the docs
come from the defaults). Prints a table, writes it to the "Stitching accuracy" section of docs/benchmarks.md (full
runs of every scenario at the SDK defaults), and as the last line: {"scenarios": {name: {"traceid_match",
"parent_precision", "parent_recall", "coverage", "false_link_rate", "orphan_rate", "sdk_traceid_kept",
"moved_marked", "spans"}}, "overall": {...}}
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.accuracy_events import EventRecorder  # noqa: E402
from bench.accuracy_score import OracleEntry, Score, oracle_entry, pooled, score  # noqa: E402
from bench.accuracy_tls import make_cert, nginx_listen, tls_broker  # noqa: E402
from bench.accuracy_wire import RID_METADATA  # noqa: E402
from edge.codec.otlp import request_to_json, spans_from_request  # noqa: E402
from edge.demo.broker import Mosquitto, free_port  # noqa: E402
from edge.demo.otlp_peer import OtlpPeer  # noqa: E402
from edge.demo.stack import Stack  # noqa: E402
from edge.demo.trees import format_trace, group_traces  # noqa: E402
from edge.errors import HelixError, ProbeUnavailable  # noqa: E402
from edge.model import Span  # noqa: E402

__all__ = ["Outcome", "Scenario", "Svc", "run", "scenarios", "table", "GOALS"]

ROOT = Path(__file__).resolve().parent.parent
SERVICE = str(Path(__file__).with_name("accuracy_service.py"))
NODE_SERVICE = str(Path(__file__).with_name("accuracy_node.js"))
NODE = shutil.which("node") or shutil.which("nodejs")
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Stitching accuracy"
# The peer has received nothing for this long: the scenario's spans are all through (the assembler holds a span
# for its 2 s window, the uplink batches for 300 ms; exports follow each other closely while spans flow).
QUIET_S = 3.0
QUIET_QUICK_S = 2.5
# A span can take longer than the quiet time when its message end is known only by timeout (the builder's 2 s,
# checked once a second) before the assembler's window: while the oracle has a request with no span, wait this long.
PATIENCE_S = 6.0
# The OpenTelemetry SDKs' default batch delay, and the one of --fast-export: after the agent released everything it
# held, the peer must stay quiet this long (plus a second) before the SDKs can have nothing left to send.
SDK_DELAY_S, FAST_SDK_DELAY_S = 5.0, 0.2
# With SDKs at their defaults, spans wait in the agent for their SDK up to assembler.sdk_wait (8 s) on top of the
# window: a scenario gives up waiting for its last spans after this long without anything new at the peer.
SDK_PATIENCE_S = 20.0
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class Svc:
    """A testbed service: its name, mode (see accuracy_service.py), instrumentation and callees."""

    name: str
    mode: str = "http"
    sdk: bool = False
    calls: list[str] = field(default_factory=list)  # names of services of the same scenario
    extra: list[str] = field(default_factory=list)
    otlp_http: bool = False  # the SDK exports OTLP/HTTP instead of OTLP/gRPC
    node: bool = False  # bench/accuracy_node.js on Node.js instead of accuracy_service.py


@dataclass
class Scenario:
    """Services and how the load generator drives them (entry: the service it calls; None: self-driven)."""

    name: str
    services: list[Svc]
    entry: str | None = None
    clients: int = 1  # concurrent load-generator connections
    requests: int = 50
    fresh: bool = False  # load generator opens a new connection per request
    pause_s: float = 0.005  # between a client's requests
    nginx_before: str | None = None  # calls to this service go through an nginx reverse proxy
    skip: str = ""  # why it cannot run on this machine (reported, not run)
    tls: bool = False  # every HTTP hop is HTTPS, MQTT is mqtts to a TLS listener (bench/accuracy_tls.py)


@dataclass
class Outcome:
    """One scenario's result: the score and what it was computed from."""

    score: Score
    spans: list[Span]
    oracle: list[OracleEntry]


# The goals (docs/accuracy.md): (scenario name prefixes, figure keys, minimum, label); the first that matches a
# scenario applies.
POOLS = ("5-thread-pool", "5c-", "5d-")
LOOPS = ("9-", "10-")
GOALS: list[tuple[tuple[str, ...], tuple[str, ...], float, str]] = [
    (POOLS, ("parent_precision", "parent_recall"), 0.99, "thread pool parent-child ≥ 99 %"),
    (LOOPS, ("parent_precision", "parent_recall"), 0.95, "event loop parent-child ≥ 95 %"),
    (("",), ("parent_precision", "parent_recall"), 0.995, "parent-child ≥ 99.5 %"),
]
ORPHAN_GOAL = 0.001  # spans whose parent is in another trace, per scenario
FALSE_LINK_GOAL = 0.002  # overall


def goal_of(name: str) -> tuple[tuple[str, ...], float, str]:
    """The parent-child goal that applies to a scenario."""
    for prefixes, keys, floor, label in GOALS:
        if any(name.startswith(p) for p in prefixes):
            return keys, floor, label
    raise AssertionError(name)


def scenarios(quick: bool) -> list[Scenario]:
    """Every scenario: the original seven (3 in two variants), SDKs at their default delay (8), thread pools at 4 and
    16 clients (5, 5c, 5d) and event loops (9, 10)."""
    n = 20 if quick else 100

    def chain() -> list[Svc]:
        return [Svc("createOrder", sdk=True, calls=["applyPromotion"]), Svc("applyPromotion", calls=["riskReview"]),
                Svc("riskReview", sdk=True, calls=["db"]), Svc("db")]

    return [
        Scenario("1-sync-chain", chain(), entry="createOrder", requests=n),
        Scenario("2-nginx-proxy", chain(), entry="createOrder", requests=n, nginx_before="applyPromotion"),
        Scenario("3-mqtt-async", [Svc("publisher", "publish", sdk=True, extra=["--count", str(n), "--topic", "acc/orders"]),
                                  Svc("subscriber", "subscribe", calls=["db"], extra=["--topic", "acc/orders"]),
                                  Svc("db")]),
        Scenario("3b-mqtt-no-context",
                 [Svc("publisher", "publish", sdk=True, extra=["--count", str(n), "--topic", "acc/jobs", "--no-propagate"]),
                  Svc("subscriber", "subscribe", calls=["db"], extra=["--topic", "acc/jobs"]), Svc("db")]),
        Scenario("4-batch-fanout", [Svc("batchJob", "batch", sdk=True, calls=["db"],
                                        extra=["--count", "1" if quick else "2", "--fanout", "100", "--workers", "4"]),
                                    Svc("db")]),
        Scenario("5-thread-pool", [Svc("pool", "pool", calls=["db"]), Svc("db")], entry="pool", clients=4, requests=n),
        Scenario("6-keep-alive", [Svc("front", sdk=True, calls=["back"]), Svc("back", calls=["store"]), Svc("store")],
                 entry="front", clients=4, requests=n, pause_s=0.0),
        Scenario("7-no-context", [Svc("front", calls=["back"], extra=["--fresh"]), Svc("back")], entry="front",
                 requests=n, fresh=True),
        *sdk_default_delay(n),
        *thread_pools(n),
        *event_loops(n),
        *tls_and_grpc(n),
    ]


def sdk_default_delay(n: int) -> list[Scenario]:
    """An SDK service at its default batch delay between uninstrumented ones: its caller uninstrumented (the kernel
    is all the agent sees of it) or instrumented itself; each with the OTLP/gRPC and the OTLP/HTTP exporter."""
    out = []
    for proto in ("grpc", "http"):
        http = proto == "http"
        out.append(Scenario(f"8-sdk-default-delay-{proto}", [
            Svc("edge", calls=["frontend"]),
            Svc("frontend", sdk=True, calls=["backend"], otlp_http=http),
            Svc("backend")], entry="edge", clients=4, requests=n))
        out.append(Scenario(f"8-sdk-default-delay-sdk-caller-{proto}", [
            Svc("edge", sdk=True, calls=["frontend"], otlp_http=http),
            Svc("frontend", sdk=True, calls=["backend"], otlp_http=http),
            Svc("backend")], entry="edge", clients=4, requests=n))
    return out


def thread_pools(n: int) -> list[Scenario]:
    """The request thread hands the call to a ThreadPoolExecutor and waits (5), to a hand-written queue.Queue pool
    of 4 threads and waits on an Event (5c), or an accept thread hands the whole connection to a pool worker (5d);
    at 4 and 16 concurrent clients."""
    out = [Scenario("5-thread-pool-16", [Svc("pool", "pool", calls=["db"]), Svc("db")], entry="pool", clients=16,
                    requests=n)]
    for clients in (4, 16):
        out.append(Scenario(f"5c-pool-handoff-{clients}", [Svc("handoff", "handoff", calls=["db"]), Svc("db")],
                            entry="handoff", clients=clients, requests=n))
    for clients in (4, 16):
        out.append(Scenario(f"5d-pool-workers-{clients}",
                            [Svc("workers", "workers", calls=["db"], extra=["--workers", "32"]), Svc("db")],
                            entry="workers", clients=clients, requests=n))
    return out


def event_loops(n: int) -> list[Scenario]:
    """One thread serving 8 concurrent clients, each request making 1 to 3 concurrent downstream calls: aiohttp (9)
    and a plain Node.js http server (10)."""
    node_skip = "" if NODE else "Node.js not installed (Debian: apt-get install nodejs)"
    return [
        Scenario("9-asyncio-fanout", [Svc("loop", "aiohttp", calls=["db"]), Svc("db")], entry="loop", clients=8,
                 requests=n),
        Scenario("10-node-eventloop", [Svc("nodeloop", node=True, calls=["db"]), Svc("db")], entry="nodeloop",
                 clients=8, requests=n, skip=node_skip),
    ]


def tls_and_grpc(n: int) -> list[Scenario]:
    """The cleartext chains over TLS (11: scenario 2 with HTTPS on every hop and nginx `ssl`; 11b: scenario 3 over
    mqtts) and through gRPC (12: SDK caller → uninstrumented grpcio server → HTTP); bench/accuracy_tls.py."""
    def chain() -> list[Svc]:
        return [Svc("createOrder", sdk=True, calls=["applyPromotion"]), Svc("applyPromotion", calls=["riskReview"]),
                Svc("riskReview", sdk=True, calls=["db"]), Svc("db")]
    return [
        Scenario("11-tls-chain", chain(), entry="createOrder", requests=n, nginx_before="applyPromotion", tls=True),
        Scenario("11b-tls-mqtt",
                 [Svc("publisher", "publish", sdk=True, extra=["--count", str(n), "--topic", "acc/secure"]),
                  Svc("subscriber", "subscribe", calls=["db"], extra=["--topic", "acc/secure"]), Svc("db")], tls=True),
        Scenario("12-grpc-chain", [Svc("front", sdk=True, calls=["rpc"]), Svc("rpc", "grpc", calls=["db"]), Svc("db")],
                 entry="front", clients=4, requests=n),
    ]


class _Proc:
    """A child process with line-oriented stdin/stdout control and its stderr in a log file."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as fh:
            self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fh, text=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def expect(self, word: str, timeout: float = 60.0) -> None:
        """Wait for a line with `word` on the child's stdout."""
        assert self.p.stdout is not None
        line: list[str] = []
        t = threading.Thread(target=lambda: line.append(self.p.stdout.readline() if self.p.stdout else ""), daemon=True)
        t.start()
        t.join(timeout)
        if not line or word not in line[0]:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise HelixError(f"{self.name} did not say {word!r} (got {line!r}); its log {self.log}:\n{tail}")

    def send(self, text: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def stop(self, timeout: float = 10.0) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for f in (self.p.stdin, self.p.stdout):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()


class Bed:
    """One scenario's processes: its services (callees first) and its nginx."""

    def __init__(self, sc: Scenario, work: Path, broker_port: int, agent_otlp: str, agent_otlp_http: str,
                 fast_export: bool = False) -> None:
        self.sc = sc
        self.work = work / sc.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.broker_port = broker_port
        self.agent_otlp = agent_otlp
        self.agent_otlp_http = agent_otlp_http
        self.fast_export = fast_export
        self.ports = {s.name: free_port() for s in sc.services}
        self.procs: dict[str, _Proc] = {}
        self.nginx: subprocess.Popen[bytes] | None = None
        self.nginx_port = 0
        self._pids: list[int] = []
        self.tls_dir = make_cert(self.work / "tls") if sc.tls else None
        self.broker: Mosquitto | None = None  # a TLS broker of the scenario's own

    def oracle_path(self, svc: str) -> Path:
        return self.work / f"{svc}.oracle.jsonl"

    def start(self) -> None:
        """Launch every process, then wait until each says it is ready."""
        if self.sc.nginx_before:
            self._start_nginx(self.ports[self.sc.nginx_before])
        if self.tls_dir is not None and any(s.mode in ("publish", "subscribe") for s in self.sc.services):
            self.broker, self.broker_port = tls_broker(self.work / "broker", self.tls_dir)
        modes = {s.name: s.mode for s in self.sc.services}
        scheme = "https" if self.tls_dir is not None else "http"
        for svc in reversed(self.sc.services):
            args = [sys.executable, SERVICE, "--name", svc.name, "--mode", svc.mode, "--oracle",
                    str(self.oracle_path(svc.name)), "--port", str(self.ports[svc.name]), "--broker",
                    str(self.broker_port), *svc.extra]
            if svc.node:
                args = [NODE or "node", NODE_SERVICE, "--name", svc.name, "--oracle", str(self.oracle_path(svc.name)),
                        "--port", str(self.ports[svc.name])]
            if self.tls_dir is not None:
                args += ["--tls", str(self.tls_dir)]
            if svc.sdk:
                args += ["--sdk", self.agent_otlp_http if svc.otlp_http else self.agent_otlp]
                args += ["--otlp-http"] if svc.otlp_http else []
                args += ["--fast-export"] if self.fast_export else []
            for callee in svc.calls:
                port = self.nginx_port if callee == self.sc.nginx_before else self.ports[callee]
                args += ["--call", f"{'grpc' if modes[callee] == 'grpc' else scheme}://127.0.0.1:{port}/{callee}"]
            self.procs[svc.name] = _Proc(svc.name, args, self.work / f"{svc.name}.log")
        for proc in self.procs.values():
            proc.expect("ready")
        self._pids = self._find_pids()

    def _start_nginx(self, upstream: int) -> None:
        self.nginx_port = free_port()
        w = self.work
        listen, upstream_scheme = nginx_listen(self.nginx_port, self.tls_dir)
        conf = w / "nginx.conf"
        conf.write_text(f"""user root;
worker_processes 1;
daemon off;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {w}; proxy_temp_path {w}; fastcgi_temp_path {w}; uwsgi_temp_path {w}; scgi_temp_path {w};
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 8; }}
  server {{
    {listen}
    location / {{ proxy_pass {upstream_scheme}://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        self.nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(w)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket_ok = http.client.HTTPConnection("127.0.0.1", self.nginx_port, timeout=1)
                socket_ok.connect()
                socket_ok.close()
                return
            time.sleep(0.1)
        raise HelixError(f"nginx did not start; see {w}/nginx-error.log")

    def pids(self) -> list[int]:
        """Every process of the scenario, nginx workers included (as started)."""
        return list(self._pids)

    def _find_pids(self) -> list[int]:
        out = [p.pid for p in self.procs.values()]
        if self.nginx is not None:
            out.append(self.nginx.pid)
            for task in Path(f"/proc/{self.nginx.pid}/task").glob("*"):
                with contextlib.suppress(OSError):
                    out += [int(c) for c in (task / "children").read_text().split()]
        return out

    def drive(self) -> None:
        """Run the scenario's load to its end (blocking)."""
        if self.sc.entry:
            scheme = "https" if self.tls_dir is not None else "http"
            drive_http(f"{scheme}://127.0.0.1:{self.ports[self.sc.entry]}/{self.sc.entry}", self.sc, self.tls_dir)
            return
        for name in ("subscriber",):
            if name in self.procs:
                self.procs[name].send("go")
                self.procs[name].expect("subscribed")
        for svc in self.sc.services:
            if svc.mode in ("publish", "batch"):
                self.procs[svc.name].send("go")
                self.procs[svc.name].expect("done", timeout=300)

    def oracle(self) -> list[OracleEntry]:
        out = []
        for svc in self.sc.services:
            p = self.oracle_path(svc.name)
            if p.exists():
                out += [oracle_entry(json.loads(line)) for line in p.read_text().splitlines() if line.strip()]
        return out

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.p.poll() is None:
                proc.p.terminate()
        for proc in self.procs.values():
            proc.stop()
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
        if self.broker is not None:
            self.broker.stop()


def drive_http(url: str, sc: Scenario, tls_dir: Path | None = None) -> None:
    """The load generator: the roots of the scenario's traces, no trace context, on keep-alive connections
    (or a new connection per request); HTTPS trusting the certificate in `tls_dir` for an https URL."""
    host = url.split("/")[2]
    path = "/" + url.split("/", 3)[3]

    def connect() -> http.client.HTTPConnection:
        if url.startswith("https:") and tls_dir is not None:
            ctx = ssl.create_default_context(cafile=str(tls_dir / "cert.pem"))
            return http.client.HTTPSConnection(host, timeout=30, context=ctx)
        return http.client.HTTPConnection(host, timeout=30)

    def worker(n: int) -> None:
        conn = connect()
        for _ in range(n):
            rid = uuid.uuid4().hex[:16]
            if sc.fresh:
                conn = connect()
            conn.request("GET", f"{path}?rid={rid}&trace={rid}", headers={"Connection": "close"} if sc.fresh else {})
            conn.getresponse().read()
            if sc.fresh:
                conn.close()
            if sc.pause_s:
                time.sleep(sc.pause_s)
        conn.close()

    per = [sc.requests // sc.clients + (i < sc.requests % sc.clients) for i in range(sc.clients)]
    threads = [threading.Thread(target=worker, args=(k,)) for k in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


async def _quiet(peer: OtlpPeer, seconds: float = QUIET_S, done: Callable[[], bool] = lambda: True,
                 patience: float = PATIENCE_S, limit: float = 90.0) -> None:
    """Wait until the peer has received nothing for `seconds` and `done()` holds, or nothing for `patience`."""
    last, since, start = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - start < limit:
        await asyncio.sleep(0.25)
        if len(peer.requests) != last:
            last, since = len(peer.requests), time.monotonic()
        idle = time.monotonic() - since
        if idle >= patience or (idle >= seconds and await asyncio.to_thread(done)):
            return


def _agent_metrics(metrics_port: int) -> str | None:
    """The agent's /metrics text; None if it cannot be read."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=2)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
        conn.close()
        return body
    return None


def agent_holds(metrics_port: int) -> int:
    """Bytes the agent's assembler holds (its window and what waits for an SDK), from its /metrics; -1 if unknown."""
    body = _agent_metrics(metrics_port)
    m = re.search(r'^helix_agent_queue_bytes\{[^}]*queue="assembler"[^}]*\} (\S+)', body, re.M) if body else None
    return int(float(m.group(1))) if m else -1


def agent_memory(metrics_port: int) -> str:
    """The agent's keep-probability and where its memory is, from its /metrics: for the progress lines."""
    body = _agent_metrics(metrics_port)
    if body is None:
        return "agent memory unknown"

    def val(pattern: str) -> float:
        m = re.search(r"^" + pattern + r"(?:\{[^}]*\})? (\S+)$", body, re.M)  # labels include service_name
        return float(m.group(1)) if m else -1.0

    where = {k: int(float(v)) >> 10 for k, v in
             re.findall(r'^helix_agent_memory_above_idle_bytes\{[^}]*where="(\w+)"\} (\S+)$', body, re.M)}
    actions = {k: int(float(v)) for k, v in
               re.findall(r'^helix_agent_memory_actions_total\{[^}]*step="(\w+)"\} (\S+)$', body, re.M)}
    return (f"keep-probability {val('helix_agent_sampling_keep_probability'):.4g}, pressure "
            f"{val('helix_agent_memory_pressure'):.2f}, above idle (KiB) {where}, lowered "
            f"{actions.get('raise_threshold', 0)}x, floor held {actions.get('floor_held', 0)}x, drop step "
            f"{actions.get('drop', 0)}x (buffers emptied {actions.get('drop_all', 0)}x)")


def _scenario_spans(spans: list[Span], pids: set[int]) -> list[Span]:
    """Spans made by the scenario's processes, and the spans of the traces they are in that name no process."""
    def pid(s: Span) -> int | None:
        for k, v in s.resource.attributes:
            if k == "process.pid" and isinstance(v, int):
                return v
        v = s.attributes.get("process.pid")
        return v if isinstance(v, int) else None
    mine = [s for s in spans if pid(s) in pids]
    traces = {s.trace_id for s in mine}
    return mine + [s for s in spans if pid(s) is None and s.trace_id in traces]


async def run(quick: bool, only: tuple[str, ...] = (), dump: Path | None = None,
              log: IO[str] = sys.stderr, fast_export: bool = False, payload_bytes: int = 0,
              memory: str = "", dump_events: bool = False) -> dict[str, Outcome]:
    """Run the testbed; the outcome of each scenario by name (a scenario that cannot run here is left out, said)."""
    if os.geteuid() != 0:
        raise ProbeUnavailable("the testbed loads the kernel probes, which needs root", "run it as root")
    say = lambda msg: print(msg, file=log, flush=True)  # noqa: E731 - progress to stderr
    chosen = [sc for sc in scenarios(quick) if not only or any(o in sc.name for o in only)]
    for sc in chosen:
        if sc.skip:
            if os.environ.get("CI"):
                raise HelixError(f"scenario {sc.name} cannot run: {sc.skip}")
            say(f"accuracy: {sc.name} skipped: {sc.skip}")
    chosen = [sc for sc in chosen if not sc.skip]
    work = Path(tempfile.mkdtemp(prefix="helix-accuracy-"))
    stack = await Stack(work, cwd=ROOT).__aenter__()
    peer = stack.peer
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    beds = [Bed(sc, work, stack.broker.port, f"http://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}",
                fast_export) for sc in chosen]
    sdk_delay = FAST_SDK_DELAY_S if fast_export else SDK_DELAY_S
    results: dict[str, Outcome] = {}
    recorder = EventRecorder() if dump is not None and dump_events else None
    try:
        # Services first, so that the agent traces exactly their PIDs; they open connections only when driven.
        await asyncio.gather(*(asyncio.to_thread(bed.start) for bed in beds))
        pids = sorted({p for bed in beds for p in bed.pids()})
        await stack.start_gateway()
        agent = await stack.start_agent(stack.agent_config(
            "accuracy", grpc_listen=f"127.0.0.1:{grpc_port}", http_listen=f"127.0.0.1:{http_port}",
            batch_max_age="300ms",
            more=f'[sources.ebpf]\nenabled = "auto"\npids = [{", ".join(map(str, pids))}]\n'
                 f'capture_headers = ["{RID_METADATA}"]\n'
                 + (f'payload_bytes = {payload_bytes}\n' if payload_bytes else '')
                 + f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\nexport_interval = "0s"\n'
                 + (_memory_section(memory) if memory else '')))
        agent_log = agent.log.read_text(errors="replace")
        if "kernel probes running" not in agent_log:
            why = next((ln for ln in agent_log.splitlines() if "kernel probes unavailable" in ln), agent_log[-500:])
            raise ProbeUnavailable(f"the agent runs without its kernel probes: {why}", "run `helix doctor`")
        say(f"accuracy: agent, gateway and {len(pids)} testbed processes up ({work})")
        if recorder is not None:
            await recorder.start(pids)
        await asyncio.sleep(1.0)
        for bed in beds:
            mark = len(peer.requests)
            t0 = time.monotonic()
            await asyncio.to_thread(bed.drive)
            def covered(bed: Bed = bed, mark: int = mark) -> bool:
                spans = _scenario_spans([s for r in peer.requests[mark:] for s in spans_from_request(r)],
                                        set(bed.pids()))
                got = score(spans, bed.oracle())
                return got.covered == got.requests and agent_holds(metrics_port) == 0

            # Everything released and nothing new for a full SDK batch delay: the SDKs have sent their last spans.
            await _quiet(peer, max(QUIET_QUICK_S if quick else QUIET_S, sdk_delay + 1.0), covered,
                         patience=SDK_PATIENCE_S)
            reqs = peer.requests[mark:]
            spans = _scenario_spans([s for r in reqs for s in spans_from_request(r)], set(bed.pids()))
            oracle = bed.oracle()
            results[bed.sc.name] = Outcome(score(spans, oracle), spans, oracle)
            r = results[bed.sc.name].score
            kernel = sum(1 for s in spans if s.scope.name == "helix.ebpf")
            say(f"  {bed.sc.name}: {r.requests} requests, {r.spans} spans ({kernel} from the kernel; {r.orphans} whose "
                f"parent is not in their trace), {time.monotonic() - t0:.1f} s; {agent_memory(metrics_port)}")
            if dump is not None:
                _dump(dump, bed, reqs, spans)
                (dump / f"{bed.sc.name}.metrics.txt").write_text(_agent_metrics(metrics_port) or "")
            if recorder is not None and dump is not None:
                n = recorder.write(dump / f"{bed.sc.name}.events.jsonl.gz", set(bed.pids()))
                say(f"  {bed.sc.name}: {n} kernel events recorded")
    finally:
        if recorder is not None:
            recorder.close()
        try:
            await asyncio.gather(*(asyncio.to_thread(bed.stop) for bed in beds))
        finally:
            await stack.close(timeout=15)  # whatever happened to the testbed, no agent or broker outlives the run
        if dump is not None:
            for name in ("agent.log", "gateway.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(work / name, dump / name)
        shutil.rmtree(work, ignore_errors=True)
    return results


def _memory_section(memory: str) -> str:
    """--memory LIMIT[,BASELINE] as the agent's [memory] section."""
    limit, _, baseline = memory.partition(",")
    return f'[memory]\nlimit = "{limit}"\n' + (f'baseline = "{baseline}"\n' if baseline else '')


def _dump(dump: Path, bed: Bed, reqs: list, spans: list[Span]) -> None:
    dump.mkdir(parents=True, exist_ok=True)
    name = bed.sc.name
    (dump / f"{name}.otlp.jsonl").write_text("".join(request_to_json(r) + "\n" for r in reqs))
    (dump / f"{name}.oracle.jsonl").write_text(
        "".join(bed.oracle_path(s.name).read_text() for s in bed.sc.services if bed.oracle_path(s.name).exists()))
    (dump / f"{name}.trees.txt").write_text("\n\n".join(format_trace(t) for t in group_traces(spans).values()))


def _pct(v: float) -> str:
    return f"{v:.1%}"


def table(scores: dict[str, Score]) -> str:
    """The human table, overall pooled."""
    rows = ["| scenario | TraceID match | parent-child precision | parent-child recall | end-to-end coverage "
            "| false-link rate | orphans | SDK trace ids kept | spans |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in [*scores.items(), ("overall", pooled(scores.values()))]:
        kept = _pct(r.sdk_traceid_kept) if r.sdk_upstream else "–"
        rows.append(f"| {name} | {_pct(r.traceid_match)} | {_pct(r.parent_precision)} | {_pct(r.parent_recall)} | "
                    f"{_pct(r.coverage)} | {_pct(r.false_link_rate)} | {_pct(r.orphan_rate)} | {kept} | {r.spans} |")
    return "\n".join(rows)


def goal_lines(scores: dict[str, Score]) -> list[str]:
    """Each goal, met or missed, with the figures."""
    out = []
    tid = {n: s.traceid_match for n, s in scores.items() if s.tid_judged}
    bad = [f"{n} {_pct(v)}" for n, v in tid.items() if v < 1.0]
    out.append("- TraceID match 100 % where context is on the wire: " + ("met" if not bad else "**missed** (" + ", ".join(bad) + ")"))
    for n, sc in scores.items():
        keys, floor, label = goal_of(n)
        d = sc.as_dict()
        figs = ", ".join(f"{k.split('_')[1]} {_pct(float(d[k]))}" for k in keys)
        ok = all(float(d[k]) >= floor for k in keys)
        out.append(f"- {n}: {label}: {'met' if ok else '**missed**'} ({figs})")
    orphans = [f"{n} {_pct(s.orphan_rate)}" for n, s in scores.items() if s.orphan_rate > ORPHAN_GOAL]
    out.append(f"- orphans (parent in another trace) ≤ {ORPHAN_GOAL:.1%} in every scenario: "
               + ("met" if not orphans else "**missed** (" + ", ".join(orphans) + ")"))
    o = pooled(scores.values())
    out.append(f"- false-link rate ≤ {FALSE_LINK_GOAL:.1%} overall: "
               f"{'met' if o.false_link_rate <= FALSE_LINK_GOAL else '**missed**'} ({_pct(o.false_link_rate)})")
    out.append(f"- SDK trace ids kept (upstream SDK traces) 100 %: {'met' if o.sdk_traceid_kept >= 1.0 else '**missed**'} "
               f"({_pct(o.sdk_traceid_kept)} of {o.sdk_upstream}); moved SDK spans carrying their original id: "
               f"{_pct(o.moved_marked)} of {o.sdk_moved}")
    return out


def write_doc(command: str, scores: dict[str, Score], json_line: str, doc: Path = DOC) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (and only it) with the figures of this run."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    intro = textwrap.fill(
        f"`{command}` (root) — real services (OpenTelemetry-SDK-instrumented and not; the SDKs at their defaults, "
        "5 s batch delay), nginx, aiohttp, Node.js, grpcio, mosquitto, HTTPS and mqtts, "
        "`helix run` with its kernel probes and `helix gateway`, scored against each service's own oracle. "
        "Definitions, scenarios and the analysis of every miss: [accuracy.md](accuracy.md).", 110)
    body = "\n".join([
        SECTION, "", intro, "", table(scores), "", "Goals:", "", *goal_lines(scores), "",
        "Where a goal is missed, the rule that fails and why: [accuracy.md, \"Where the rules fall short\"]"
        "(accuracy.md#where-the-rules-fall-short).", "", "```", json_line, "```", ""])
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + (text[nxt + 1:] if nxt >= 0 else "")
    doc.write_text(text)


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 requests per scenario instead of 100 (under a minute)")
    ap.add_argument("--only", metavar="NAMES", default="", help="comma-separated: scenarios whose name contains one")
    ap.add_argument("--dump", metavar="DIR", help="write each scenario's spans (OTLP JSON), oracle and trees to DIR")
    ap.add_argument("--dump-events", action="store_true",
                    help="with --dump: also record each scenario's kernel events beside the agent (a second probe set)")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--fast-export", action="store_true",
                    help="SDKs export every 200 ms instead of their default 5 s (quick runs; never written to the docs)")
    ap.add_argument("--payload-bytes", type=int, default=0, metavar="N",
                    help="the agent's sources.ebpf.payload_bytes (default: the agent's own; never written to the docs)")
    ap.add_argument("--memory", default="", metavar="LIMIT[,BASELINE]",
                    help="the agent's memory.limit (and memory.baseline), e.g. 50MiB,45MiB to run it under memory "
                         "pressure (default: the agent's own; never written to the docs)")
    args = ap.parse_args()
    only = tuple(n for n in args.only.split(",") if n)
    if args.dump_events and not args.dump:
        ap.error("--dump-events needs --dump DIR")
    try:
        outcomes = asyncio.run(run(args.quick, only, Path(args.dump) if args.dump else None,
                                   fast_export=args.fast_export, payload_bytes=args.payload_bytes,
                                   memory=args.memory, dump_events=args.dump_events))
    except HelixError as e:
        raise SystemExit(f"bench/accuracy.py: {e}") from None
    scores = {k: v.score for k, v in outcomes.items()}
    result = {"scenarios": {k: v.as_dict() for k, v in scores.items()}, "overall": pooled(scores.values()).as_dict()}
    line = json.dumps(result)
    print(table(scores))
    print("\n".join(goal_lines(scores)))
    if not args.no_doc and not only and not args.fast_export and not args.payload_bytes and not args.memory:
        write_doc("python bench/accuracy.py" + (" --quick" if args.quick else ""), scores, line)
    print(line)


if __name__ == "__main__":
    main()
