"""Encrypted and gRPC hops for the testbed services (bench/accuracy_service.py), at the libraries' defaults.

- HTTPS: a server socket wrapped by Python's `ssl` (a certificate the bench made, see bench/accuracy_tls.py), and
  calls made with `requests` (one Session per thread: its default pooled keep-alive, verifying the bench's
  certificate);
- gRPC: a grpcio server (its default ThreadPoolExecutor handlers) with one generic unary method, and calls on one
  grpcio channel per process (so concurrent calls are streams of one HTTP/2 connection, as grpcio does by default).

A gRPC call carries its oracle ids as metadata (`oracle-rid`, `oracle-prid`, `oracle-trace`) and the trace context,
where the caller propagates it, as `traceparent` metadata, as OpenTelemetry's gRPC instrumentation would send it.
"""
from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["GRPC_METHOD", "RID_METADATA", "GrpcCaller", "HttpsCaller", "server_context", "serve_grpc"]

GRPC_METHOD = "/acc.Chain/Call"
RID_METADATA = "oracle-rid"  # the agent keeps this metadata as rpc.grpc.request.metadata.oracle-rid


def server_context(tls_dir: Path) -> ssl.SSLContext:
    """The server side of the bench's certificate (Python's defaults otherwise)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
    return ctx


class HttpsCaller:
    """GET over HTTPS with `requests` at its defaults: a Session (pooled keep-alive) per thread."""

    def __init__(self, tls_dir: Path) -> None:
        self.cafile = str(tls_dir / "cert.pem")
        self.local = threading.local()

    def get(self, url: str, headers: dict[str, str]) -> None:
        """One request, its body read."""
        import requests
        session = self.local.__dict__.get("session")
        if session is None:
            session = self.local.session = requests.Session()
        r = session.get(url, headers=headers, verify=self.cafile, timeout=10)
        r.raise_for_status()


class GrpcCaller:
    """Unary calls on one channel per target and process (grpcio's defaults: insecure, h2c)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stubs: dict[str, Any] = {}

    def call(self, url: str, rid: str, parent: str, trace: str, context: dict[str, str]) -> None:
        """grpc://host:port — the ids and `context` as metadata."""
        import grpc
        netloc = urlsplit(url).netloc
        with self.lock:
            stub = self.stubs.get(netloc)
            if stub is None:
                stub = self.stubs[netloc] = grpc.insecure_channel(netloc).unary_unary(GRPC_METHOD)
        metadata = [(RID_METADATA, rid), ("oracle-prid", parent), ("oracle-trace", trace), *context.items()]
        stub(b"call", metadata=metadata, timeout=10)


def serve_grpc(port: int, handle: Callable[[str, str | None, str, bool], None]) -> None:
    """A grpcio server on `port`; each call runs handle(rid, parent rid, trace, context on the wire)."""
    import grpc

    def call(request: bytes, context: Any) -> bytes:
        md = dict(context.invocation_metadata())
        rid = md.get(RID_METADATA) or "?"
        handle(rid, md.get("oracle-prid"), md.get("oracle-trace") or rid, "traceparent" in md)
        return b"ok"

    server = grpc.server(ThreadPoolExecutor(max_workers=10))
    service, method = GRPC_METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(call)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
