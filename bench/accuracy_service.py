"""A testbed service for bench/accuracy.py: real HTTP/MQTT processes that write a ground-truth oracle.

Every handled request has a rid; the caller passes the handler's rid, its own rid (prid) and the trace's root
rid in the query string, and the handler appends {rid, parent_rid, trace, service} to its oracle file (out of
band: a local file, not the traced path). Modes:

  http       an HTTP/1.1 server; per request it calls every --call URL (a child rid each)
  pool       the same, but the downstream calls run on a thread-pool worker while the request thread waits
  batch      no server: one job (a root) that makes --fanout calls to --call
  publish    no server: --count MQTT v5 messages on acc/msg/<rid> (with traceparent when --sdk)
  subscribe  an MQTT subscriber to acc/msg/+ whose handler calls every --call URL

With --sdk ENDPOINT the service is instrumented with the OpenTelemetry Python SDK (OTLP/gRPC to ENDPOINT,
W3C propagation both ways); without it, only the kernel sees it.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_lock = threading.Lock()


def new_rid() -> str:
    """A short unique request id."""
    return uuid.uuid4().hex[:16]


class Oracle:
    """Appends ground-truth lines to this service's own file."""

    def __init__(self, path: str, service: str) -> None:
        self.f = open(path, "a", buffering=1, encoding="utf-8")
        self.service = service

    def write(self, rid: str, parent: str | None, trace: str, **extra: Any) -> None:
        with _lock:
            self.f.write(json.dumps({"rid": rid, "parent_rid": parent, "trace": trace, "service": self.service,
                                     "ts": time.time_ns(), **extra}) + "\n")


class Sdk:
    """The OpenTelemetry SDK when the service is instrumented; every method is a no-op otherwise."""

    def __init__(self, endpoint: str | None, service: str) -> None:
        self.tracer = None
        if not endpoint:
            return
        from opentelemetry import propagate, trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider = TracerProvider(resource=Resource.create({"service.name": service, "process.pid": os.getpid()}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True),
                                                            schedule_delay_millis=200))
        self.tracer = self.provider.get_tracer("accuracy")
        self.propagate = propagate
        self.trace = trace

    def span(self, name: str, kind: str, rid: str, headers: dict[str, str] | None = None) -> Any:
        if self.tracer is None:
            return _Null()
        from opentelemetry.trace import SpanKind
        ctx = self.propagate.extract(headers) if headers is not None else None
        return self.tracer.start_as_current_span(name, context=ctx, kind=getattr(SpanKind, kind),
                                                 attributes={"oracle.rid": rid})

    def inject(self, headers: dict[str, str]) -> None:
        if self.tracer is not None:
            self.propagate.inject(headers)

    def shutdown(self) -> None:
        if self.tracer is not None:
            self.provider.shutdown()


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


class Caller:
    """Downstream HTTP calls; one persistent connection per target and thread (keep-alive)."""

    def __init__(self, sdk: Sdk, propagate: bool) -> None:
        self.sdk = sdk
        self.propagate = propagate
        self.local = threading.local()

    def call(self, url: str, rid: str, parent: str, trace: str) -> None:
        parts = urlsplit(url)
        conns = self.local.__dict__.setdefault("conns", {})
        conn = conns.get(parts.netloc)
        if conn is None:
            conn = conns[parts.netloc] = http.client.HTTPConnection(parts.netloc, timeout=10)
        headers: dict[str, str] = {}
        with self.sdk.span(f"GET {parts.path}", "CLIENT", rid):
            if self.propagate:
                self.sdk.inject(headers)
            for attempt in (0, 1):
                try:
                    conn.request("GET", f"{parts.path}?rid={rid}&prid={parent}&trace={trace}", headers=headers)
                    conn.getresponse().read()
                    return
                except (OSError, http.client.HTTPException):
                    conn.close()
                    if attempt:
                        raise


def serve(args: argparse.Namespace, oracle: Oracle, sdk: Sdk, caller: Caller) -> None:
    pool = ThreadPoolExecutor(max_workers=4) if args.mode == "pool" else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            rid, parent, trace = q.get("rid", new_rid()), q.get("prid"), q.get("trace", "")
            oracle.write(rid, parent, trace or rid)
            with self.server_span(rid):
                def downstream() -> None:
                    for url in args.call:
                        caller.call(url, new_rid(), rid, trace or rid)
                if pool is not None:
                    pool.submit(downstream).result()
                else:
                    downstream()
                time.sleep(args.work_ms / 1000)
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def server_span(self, rid: str) -> Any:
            return sdk.span(f"{args.name}", "SERVER", rid, dict(self.headers.items()))

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    print("ready", flush=True)
    srv.serve_forever()


def batch(args: argparse.Namespace, oracle: Oracle, sdk: Sdk, caller: Caller) -> None:
    for _ in range(args.count):
        job = new_rid()
        oracle.write(job, None, job)
        with sdk.span("batchJob", "INTERNAL", job):
            for _ in range(args.fanout):
                caller.call(args.call[0], new_rid(), job, job)
    print("done", flush=True)


def mqtt_client(name: str, port: int) -> Any:
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    return c


def publish(args: argparse.Namespace, oracle: Oracle, sdk: Sdk) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    c = mqtt_client(args.name, args.broker)
    c.loop_start()
    for _ in range(args.count):
        rid = new_rid()
        oracle.write(rid, None, rid)
        with sdk.span(f"publish acc/msg/{rid}", "PRODUCER", rid):
            props = Properties(PacketTypes.PUBLISH)
            carrier: dict[str, str] = {}
            if args.propagate:
                sdk.inject(carrier)
            if carrier:
                props.UserProperty = list(carrier.items())
            c.publish(f"acc/msg/{rid}", b"order", qos=1, properties=props).wait_for_publish(5)
        time.sleep(args.interval)
    c.loop_stop()
    print("done", flush=True)


def subscribe(args: argparse.Namespace, oracle: Oracle, caller: Caller) -> None:
    c = mqtt_client(args.name, args.broker)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        parent = msg.topic.rsplit("/", 1)[-1]
        rid = parent + ".recv"
        oracle.write(rid, parent, parent)
        for url in args.call:
            caller.call(url, new_rid(), rid, parent)

    c.on_message = on_message
    c.on_connect = lambda client, *a: client.subscribe("acc/msg/+", qos=1)
    print("ready", flush=True)
    c.loop_forever()


def main() -> None:
    """Run one testbed service."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--mode", default="http", choices=["http", "pool", "batch", "publish", "subscribe"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--broker", type=int, default=0)
    ap.add_argument("--call", action="append", default=[])
    ap.add_argument("--sdk", default="")
    ap.add_argument("--no-propagate", dest="propagate", action="store_false")
    ap.add_argument("--oracle", required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--fanout", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--work-ms", type=float, default=1.0)
    args = ap.parse_args()
    oracle = Oracle(args.oracle, args.name)
    sdk = Sdk(args.sdk or None, args.name)
    caller = Caller(sdk, args.propagate and bool(args.sdk))
    try:
        if args.mode in ("http", "pool"):
            serve(args, oracle, sdk, caller)
        elif args.mode == "batch":
            batch(args, oracle, sdk, caller)
        elif args.mode == "publish":
            publish(args, oracle, sdk)
        else:
            subscribe(args, oracle, caller)
    finally:
        sdk.shutdown()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
