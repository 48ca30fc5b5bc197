"""A testbed service for bench/accuracy.py: a real HTTP or MQTT process that writes a ground-truth oracle.

Every handled request has a rid. A caller puts the callee's rid, its own rid (prid) and the true root's rid
(trace) in the query string; an MQTT publisher puts them in the message body. The handler appends
{rid, parent_rid, trace, service, ts, pid, ctx, mqtt, sdk_trace} to its own oracle file — out of band, never over
the traced path. `ctx` says whether trace context was on the wire into the request (a traceparent header or
MQTT v5 user property), `mqtt` names the message (direction, topic, packet id) for mapping kernel MQTT spans,
`sdk_trace` is the trace id the service's SDK gave the request (instrumented services only).

Modes:
  http       HTTP/1.1 server (ThreadingHTTPServer, keep-alive); per request it calls every --call URL
  pool       the same, but the calls run on ThreadPoolExecutor workers while the request thread waits
  handoff    the same, but each call is handed to one of --workers threads through a queue.Queue and the request
             thread waits on a threading.Event (a hand-written pool)
  workers    an accept thread hands each connection to a ThreadPoolExecutor of --workers threads, whose worker
             reads the requests, makes the calls and answers
  aiohttp    an aiohttp server (one thread, asyncio): per request 1 to 3 of the --call URLs, concurrently
  asyncio    the same with the standard library only (asyncio streams, HTTP/1.1 keep-alive in, a new connection per
             call out), so that any CPython runs it without packages; it serves plain HTTP, and calls https:// URLs
             over TLS (asyncio's own, OpenSSL through memory BIOs) trusting the --tls DIR certificate
  batch      after "go" on stdin: --count jobs, each one root span making --fanout calls on --workers threads
  publish    after "go": --count MQTT v5 QoS 1 messages on --topic (traceparent in user properties with --sdk,
             unless --no-propagate)
  subscribe  after "go": subscribes to --topic; each delivery calls every --call URL
  grpc       a grpcio server (h2c) whose one method calls every --call URL (bench/accuracy_wire.py)

With --tls DIR the HTTP modes serve HTTPS and the MQTT modes connect over TLS with the certificate in DIR; https://
and grpc:// --call URLs are called with `requests` and grpcio (bench/accuracy_wire.py).

With --sdk ENDPOINT the service is instrumented with the OpenTelemetry Python SDK at its defaults (a
BatchSpanProcessor exporting every 5 s, OTLP/gRPC to ENDPOINT, or OTLP/HTTP with --otlp-http; W3C propagation both
ways); --fast-export makes it export every 200 ms instead, for quick runs. Without --sdk it never imports
OpenTelemetry and only the kernel sees it. Processes that connect on "go" do so after the agent's probes are
attached, so the kernel sees their connections open.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import signal
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import accuracy_wire as wire  # run as a script: its own directory is on the path

__all__ = ["main", "new_rid"]

_TRACE_HEADERS = ("traceparent",)


def new_rid() -> str:
    """A short unique request id."""
    return uuid.uuid4().hex[:16]


class Oracle:
    """Appends ground-truth lines to this service's own file (line-buffered, one lock)."""

    def __init__(self, path: str, service: str) -> None:
        self.f = open(path, "a", buffering=1, encoding="utf-8")
        self.service = service
        self.lock = threading.Lock()

    def write(self, rid: str, parent: str | None, trace: str, ctx: bool, mqtt: str | None = None,
              sdk_trace: str | None = None) -> None:
        """One handled request."""
        line = json.dumps({"rid": rid, "parent_rid": parent, "trace": trace, "service": self.service,
                           "ts": time.time_ns(), "pid": os.getpid(), "ctx": ctx, "mqtt": mqtt, "sdk_trace": sdk_trace})
        with self.lock:
            self.f.write(line + "\n")


class Sdk:
    """The OpenTelemetry SDK when the service is instrumented; every method is a no-op otherwise."""

    def __init__(self, endpoint: str | None, service: str, http: bool = False, fast: bool = False) -> None:
        self.tracer: Any = None
        if not endpoint:
            return
        from opentelemetry import propagate, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind

        exporter: Any
        if http:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
            exporter = HttpExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
            exporter = GrpcExporter(endpoint=endpoint, insecure=True)
        # process.pid lets the agent relate SDK spans to the kernel's view of the same process. The processor is the
        # SDK's default one at its defaults (5 s schedule delay, 512-span batches, retries) unless --fast-export.
        self.provider = TracerProvider(resource=Resource.create({"service.name": service, "process.pid": os.getpid()}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200) if fast
                                         else BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("helix.accuracy")
        self.propagate = propagate
        self.trace = trace
        self.kinds = SpanKind

    def trace_id(self) -> str | None:
        """The trace id of the current span, as the application would log it (None when not instrumented)."""
        if self.tracer is None:
            return None
        return f"{self.trace.get_current_span().get_span_context().trace_id:032x}"

    def span(self, name: str, kind: str, rid: str, carrier: dict[str, str] | None = None) -> Any:
        """A span with the oracle rid; `carrier`: incoming headers to extract the parent from."""
        if self.tracer is None:
            return _Null()
        ctx = self.propagate.extract(carrier) if carrier is not None else None
        return self.tracer.start_as_current_span(name, context=ctx, kind=getattr(self.kinds, kind),
                                                 attributes={"oracle.rid": rid})

    def inject(self, carrier: dict[str, str]) -> None:
        """W3C trace context of the current span into `carrier`."""
        if self.tracer is not None:
            self.propagate.inject(carrier)

    def shutdown(self) -> None:
        """Export what is buffered."""
        if self.tracer is not None:
            self.provider.shutdown()


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


class Caller:
    """Downstream HTTP calls: a persistent connection per target and thread (keep-alive), unless `fresh`."""

    def __init__(self, sdk: Sdk, propagate: bool, client_spans: bool = True, fresh: bool = False,
                 tls_dir: Path | None = None) -> None:
        self.sdk = sdk
        self.propagate = propagate
        self.client_spans = client_spans
        self.fresh = fresh
        self.local = threading.local()
        self.https = wire.HttpsCaller(tls_dir) if tls_dir else None
        self.grpc = wire.GrpcCaller()

    def call(self, url: str, rid: str, parent: str, trace: str) -> None:
        """GET url?rid=..&prid=..&trace=.. (in an SDK client span when instrumented)."""
        parts = urlsplit(url)
        target = f"{parts.path}?rid={rid}&prid={parent}&trace={trace}"
        span = self.sdk.span(f"GET {parts.path}", "CLIENT", rid) if self.client_spans else _Null()
        with span:
            headers: dict[str, str] = {}
            if self.propagate:
                self.sdk.inject(headers)
            if parts.scheme == "grpc":
                self.grpc.call(url, rid, parent, trace, headers)
                return
            if parts.scheme == "https" and self.https is not None:
                self.https.get(f"{url}?rid={rid}&prid={parent}&trace={trace}", headers)
                return
            if self.fresh:
                conn = http.client.HTTPConnection(parts.netloc, timeout=10)
                headers["Connection"] = "close"
                try:
                    conn.request("GET", target, headers=headers)
                    conn.getresponse().read()
                finally:
                    conn.close()
                return
            conns: dict[str, http.client.HTTPConnection] = self.local.__dict__.setdefault("conns", {})
            for attempt in (0, 1):
                conn = conns.get(parts.netloc)
                if conn is None:
                    conn = conns[parts.netloc] = http.client.HTTPConnection(parts.netloc, timeout=10)
                try:
                    conn.request("GET", target, headers=headers)
                    conn.getresponse().read()
                    return
                except (OSError, http.client.HTTPException):
                    # The server closed an idle keep-alive connection: once more on a new one.
                    conn.close()
                    del conns[parts.netloc]
                    if attempt:
                        raise


class HandoffPool:
    """A hand-written pool: work goes to one of `n` threads through a queue; the submitter waits on an Event."""

    def __init__(self, n: int) -> None:
        self.work: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        for i in range(n):
            threading.Thread(target=self._run, name=f"handoff-{i}", daemon=True).start()

    def _run(self) -> None:
        while True:
            fn, done = self.work.get()
            try:
                fn()
            finally:
                done.set()

    def run(self, fn: Callable[[], None]) -> None:
        """Run `fn` on a worker and wait for it."""
        done = threading.Event()
        self.work.put((fn, done))
        done.wait()


class PoolHTTPServer(HTTPServer):
    """An accept thread that hands each connection to a ThreadPoolExecutor worker, which serves it to the end."""

    def __init__(self, address: tuple[str, int], handler: Any, workers: int) -> None:
        super().__init__(address, handler)
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pool.submit(self._serve, request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


def serve(args: argparse.Namespace, oracle: Oracle, sdk: Sdk, caller: Caller) -> None:
    """The HTTP modes (http, pool, handoff, workers)."""
    pool = ThreadPoolExecutor(max_workers=args.workers) if args.mode == "pool" else None
    handoff = HandoffPool(args.workers) if args.mode == "handoff" else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            rid = q.get("rid") or new_rid()
            parent, trace = q.get("prid"), q.get("trace") or rid
            headers = {k.lower(): v for k, v in self.headers.items()}
            with sdk.span(args.name, "SERVER", rid, headers):
                oracle.write(rid, parent, trace, any(h in headers for h in _TRACE_HEADERS), sdk_trace=sdk.trace_id())

                def downstream() -> None:
                    for url in args.call:
                        caller.call(url, new_rid(), rid, trace)
                if pool is not None:
                    pool.submit(downstream).result()
                elif handoff is not None:
                    handoff.run(downstream)
                else:
                    downstream()
                if args.work_ms:
                    time.sleep(args.work_ms / 1000)
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv: HTTPServer
    if args.mode == "workers":
        srv = PoolHTTPServer(("127.0.0.1", args.port), Handler, args.workers)
    else:
        srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
        srv.daemon_threads = True
    if args.tls:
        srv.socket = wire.server_context(args.tls).wrap_socket(srv.socket, server_side=True)
    print("ready", flush=True)
    srv.serve_forever()


def serve_aiohttp(args: argparse.Namespace, oracle: Oracle) -> None:
    """An uninstrumented aiohttp server: per request, 1 to 3 of the --call URLs (by the request's rid), at once."""
    import asyncio

    from aiohttp import ClientSession, web

    async def main() -> None:
        session = ClientSession()

        async def call(url: str, rid: str, trace: str) -> None:
            async with session.get(f"{url}?rid={new_rid()}&prid={rid}&trace={trace}") as r:
                await r.read()

        async def handle(request: web.Request) -> web.Response:
            rid = request.query.get("rid") or new_rid()
            trace = request.query.get("trace") or rid
            oracle.write(rid, request.query.get("prid"), trace, "traceparent" in request.headers)
            n = random.Random(rid).randint(1, 3)
            await asyncio.gather(*(call(args.call[i % len(args.call)], rid, trace) for i in range(n)))
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/{name}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_asyncio(args: argparse.Namespace, oracle: Oracle) -> None:
    """An uninstrumented standard-library asyncio server: per request 1 to 3 of the --call URLs (by the request's
    rid), at once, each over a new connection."""
    import asyncio

    tls = ssl.create_default_context(cafile=str(args.tls / "cert.pem")) if args.tls else None

    async def call(url: str, rid: str, trace: str) -> None:
        u = urlsplit(url)
        reader, writer = await asyncio.open_connection(u.hostname, u.port, ssl=tls if u.scheme == "https" else None)
        writer.write(f"GET {u.path}?rid={new_rid()}&prid={rid}&trace={trace} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await reader.read()  # to the callee's close
        writer.close()
        await writer.wait_closed()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            q = {k: v[0] for k, v in parse_qs(urlsplit(head.split(b" ", 2)[1].decode()).query).items()}
            rid = q.get("rid") or new_rid()
            trace = q.get("trace") or rid
            oracle.write(rid, q.get("prid"), trace, b"traceparent:" in head.lower())
            n = random.Random(rid).randint(1, 3)
            await asyncio.gather(*(call(args.call[i % len(args.call)], rid, trace) for i in range(n)))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its keep-alive connection
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", args.port)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def serve_grpc(args: argparse.Namespace, oracle: Oracle, caller: Caller) -> None:
    """An uninstrumented grpcio server: each call calls every --call URL (no context out)."""
    def handle(rid: str, parent: str | None, trace: str, ctx: bool) -> None:
        oracle.write(rid, parent, trace, ctx)
        for url in args.call:
            caller.call(url, new_rid(), rid, trace)
    wire.serve_grpc(args.port, handle)


def wait_go() -> None:
    """Block until the bench says go (a line on stdin)."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(0)


def batch(args: argparse.Namespace, oracle: Oracle, sdk: Sdk) -> None:
    """Jobs that each fan out to many calls (uninstrumented calls: no client spans, no context)."""
    caller = Caller(sdk, propagate=False, client_spans=False)
    wait_go()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for _ in range(args.count):
            job = new_rid()
            with sdk.span("batchJob", "INTERNAL", job):
                oracle.write(job, None, job, False, sdk_trace=sdk.trace_id())
                futures = [pool.submit(caller.call, args.call[0], new_rid(), job, job) for _ in range(args.fanout)]
                for f in futures:
                    f.result()
            time.sleep(args.interval)
    print("done", flush=True)


def mqtt_client(name: str, port: int, tls_dir: Path | None = None) -> Any:
    """A connected paho MQTT v5 client (over TLS, mqtts, with `tls_dir`)."""
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}", protocol=mqtt.MQTTv5)
    if tls_dir is not None:
        c.tls_set(ca_certs=str(tls_dir / "cert.pem"))
    c.connect("127.0.0.1", port)
    return c


def publish(args: argparse.Namespace, oracle: Oracle, sdk: Sdk) -> None:
    """Root messages; the rid travels in the body, the trace context (if any) in user properties."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    wait_go()
    c = mqtt_client(args.name, args.broker, args.tls)
    c.loop_start()
    for _ in range(args.count):
        rid = new_rid()
        with sdk.span(f"publish {args.topic}", "PRODUCER", rid):
            props = Properties(PacketTypes.PUBLISH)
            carrier: dict[str, str] = {}
            if args.propagate:
                sdk.inject(carrier)
            if carrier:
                props.UserProperty = list(carrier.items())
            info = c.publish(args.topic, json.dumps({"rid": rid, "trace": rid}).encode(), qos=1, properties=props)
            info.wait_for_publish(10)
            sdk_trace = sdk.trace_id()
        oracle.write(rid, None, rid, False, f"send:{args.topic}#{info.mid}", sdk_trace=sdk_trace)
        time.sleep(args.interval)
    c.disconnect()
    c.loop_stop()
    print("done", flush=True)


def subscribe(args: argparse.Namespace, oracle: Oracle, caller: Caller) -> None:
    """Each delivery is a request whose parent is the publish; its handler calls every --call URL."""
    wait_go()
    c = mqtt_client(args.name, args.broker, args.tls)
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        body = json.loads(msg.payload)
        props = getattr(msg.properties, "UserProperty", None) or []
        rid = new_rid()
        oracle.write(rid, body["rid"], body["trace"], any(k in _TRACE_HEADERS for k, _ in props),
                     f"receive:{msg.topic}#{msg.mid}")
        for url in args.call:
            caller.call(url, new_rid(), rid, body["trace"])

    c.on_message = on_message
    c.on_connect = lambda client, *a: client.subscribe(args.topic, qos=1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("subscription not acknowledged")
    print("subscribed", flush=True)
    sys.stdin.readline()  # runs until stdin closes or the bench stops it
    c.disconnect()
    c.loop_stop()


def main() -> None:
    """Run one testbed service."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--mode", default="http",
                    choices=["http", "pool", "handoff", "workers", "aiohttp", "asyncio", "batch", "publish",
                             "subscribe", "grpc"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--broker", type=int, default=0, help="mosquitto port")
    ap.add_argument("--topic", default="acc/orders")
    ap.add_argument("--call", action="append", default=[], help="URL called per request (repeatable)")
    ap.add_argument("--sdk", default="", help="OTLP endpoint: instrument with the OpenTelemetry SDK (at its defaults)")
    ap.add_argument("--otlp-http", action="store_true", help="export OTLP/HTTP (protobuf) instead of OTLP/gRPC")
    ap.add_argument("--fast-export", action="store_true", help="the SDK exports every 200 ms instead of its 5 s")
    ap.add_argument("--no-propagate", dest="propagate", action="store_false", help="instrumented, but no context out")
    ap.add_argument("--fresh", action="store_true", help="a new connection per downstream call")
    ap.add_argument("--tls", type=Path, metavar="DIR", help="serve HTTPS / connect mqtts with DIR/cert.pem, key.pem")
    ap.add_argument("--oracle", required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--fanout", type=int, default=100)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--work-ms", type=float, default=1.0)
    args = ap.parse_args()
    # SIGTERM unwinds like an exit, so that the SDK exports what it still holds.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    oracle = Oracle(args.oracle, args.name)
    sdk = Sdk(args.sdk or None, args.name, http=args.otlp_http, fast=args.fast_export)
    caller = Caller(sdk, args.propagate and bool(args.sdk), fresh=args.fresh, tls_dir=args.tls)
    try:
        if args.mode in ("http", "pool", "handoff", "workers"):
            serve(args, oracle, sdk, caller)
        elif args.mode == "aiohttp":
            serve_aiohttp(args, oracle)
        elif args.mode == "asyncio":
            serve_asyncio(args, oracle)
        elif args.mode == "grpc":
            serve_grpc(args, oracle, caller)
        elif args.mode == "batch":
            batch(args, oracle, sdk)
        elif args.mode == "publish":
            publish(args, oracle, sdk)
        else:
            subscribe(args, oracle, caller)
    finally:
        sdk.shutdown()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
