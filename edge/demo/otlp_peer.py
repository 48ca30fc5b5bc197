"""An OTLP trace receiver (gRPC and HTTP) built on the official opentelemetry-proto messages.

It stands in for a backend in `helix demo` and in tests: it keeps every export request, appends each as a
line of OTLP/JSON to a file when asked, and can be told to refuse exports (UNAVAILABLE, 429/503 with
Retry-After, partial success) to exercise the gateway's retry logic.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ..codec.otlp import request_to_json, spans_from_request
from ..model import Span

__all__ = ["OtlpPeer", "Refusal"]


@dataclass(slots=True)
class Refusal:
    """One planned refusal: a gRPC status name (e.g. 'UNAVAILABLE') or an HTTP status, and a Retry-After."""

    grpc_code: str = "UNAVAILABLE"
    http_status: int = 503
    retry_after_s: float | None = None
    rejected_spans: int = 0  # > 0 answers with partial success instead of an error (data points, for metrics)


@dataclass
class OtlpPeer:
    """A real OTLP endpoint on loopback: gRPC on `grpc_port`, HTTP on `http_port` (0 picks a free port)."""

    json_path: Path | None = None
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    refusals: deque[Refusal] = field(default_factory=deque)
    grpc_port: int = 0
    http_port: int = 0
    received: asyncio.Event = field(default_factory=asyncio.Event)
    attempts: int = 0
    metric_requests: list[ExportMetricsServiceRequest] = field(default_factory=list)
    metric_refusals: deque[Refusal] = field(default_factory=deque)  # planned refusals of metrics exports
    metric_attempts: int = 0
    metrics_received: asyncio.Event = field(default_factory=asyncio.Event)
    _server: grpc.aio.Server | None = None
    _runner: web.AppRunner | None = None
    _json: IO[str] | None = None

    @property
    def grpc_endpoint(self) -> str:
        """Endpoint for an OTLP/gRPC exporter."""
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """Base endpoint for an OTLP/HTTP exporter (traces go to /v1/traces)."""
        return f"http://127.0.0.1:{self.http_port}"

    def spans(self) -> list[Span]:
        """Every span received so far, decoded into the span model."""
        return [s for req in self.requests for s in spans_from_request(req)]

    def refuse(self, times: int, refusal: Refusal | None = None) -> None:
        """Refuse the next `times` exports."""
        for _ in range(times):
            self.refusals.append(refusal or Refusal())

    async def start(self) -> OtlpPeer:
        """Start both servers."""
        if self.json_path is not None:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            self._json = open(self.json_path, "a", encoding="utf-8")
        self._server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsServicer(self), self._server)
        self.grpc_port = self._server.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        await self._server.start()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._http_export)
        app.router.add_post("/v1/metrics", self._http_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.http_port)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        """Stop both servers and close the JSON file."""
        if self._server is not None:
            await self._server.stop(grace=0.5)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._json is not None:
            self._json.close()
            self._json = None

    def _accept(self, req: ExportTraceServiceRequest) -> None:
        self.requests.append(req)
        if self._json is not None:
            self._json.write(request_to_json(req) + "\n")
            self._json.flush()
        self.received.set()

    def _accept_metrics(self, req: ExportMetricsServiceRequest) -> None:
        self.metric_requests.append(req)
        self.metrics_received.set()

    async def _http_metrics(self, request: web.Request) -> web.Response:
        self.metric_attempts += 1
        return await _http_answer(request, ExportMetricsServiceRequest(), ExportMetricsServiceResponse(),
                                  self.metric_refusals, self._accept_metrics, _partial_points)

    async def _http_export(self, request: web.Request) -> web.Response:
        self.attempts += 1
        return await _http_answer(request, ExportTraceServiceRequest(), ExportTraceServiceResponse(), self.refusals,
                                  self._accept, _partial_spans)


def _partial_spans(resp: Any, refusal: Refusal) -> None:
    resp.partial_success.rejected_spans = refusal.rejected_spans
    resp.partial_success.error_message = "some spans were refused by the test peer"


def _partial_points(resp: Any, refusal: Refusal) -> None:
    resp.partial_success.rejected_data_points = refusal.rejected_spans
    resp.partial_success.error_message = "some data points were refused by the test peer"


async def _http_answer(request: web.Request, req: Any, resp: Any, refusals: deque[Refusal],
                       accept: Callable[[Any], None], partial: Callable[[Any, Refusal], None]) -> web.Response:
    """Parse an OTLP/HTTP export, then refuse it, accept it in part, or accept it, as planned."""
    try:
        req.ParseFromString(await request.read())
    except Exception:  # noqa: BLE001 - any garbage is a 400, as the OTLP spec says
        return web.Response(status=400, text="bad protobuf")
    refusal = refusals.popleft() if refusals else None
    if refusal is not None and not refusal.rejected_spans:
        headers = {"Retry-After": str(int(refusal.retry_after_s))} if refusal.retry_after_s is not None else {}
        return web.Response(status=refusal.http_status, headers=headers)
    if refusal is not None:
        partial(resp, refusal)
    accept(req)
    return web.Response(body=resp.SerializeToString(), content_type="application/x-protobuf")


async def _grpc_answer(request: Any, context: grpc.aio.ServicerContext, resp: Any, refusals: deque[Refusal],
                       accept: Callable[[Any], None], partial: Callable[[Any, Refusal], None]) -> Any:
    """The same for an OTLP/gRPC export: refused with the planned status, accepted in part, or accepted."""
    refusal = refusals.popleft() if refusals else None
    if refusal is not None and not refusal.rejected_spans:
        await context.abort(getattr(grpc.StatusCode, refusal.grpc_code), "refused by the test peer")
    if refusal is not None:
        partial(resp, refusal)
    accept(request)
    return resp


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, peer: OtlpPeer) -> None:
        self.peer = peer

    async def Export(self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext) -> ExportTraceServiceResponse:  # noqa: N802 - gRPC naming
        self.peer.attempts += 1
        return await _grpc_answer(request, context, ExportTraceServiceResponse(), self.peer.refusals, self.peer._accept,
                                  _partial_spans)


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, peer: OtlpPeer) -> None:
        self.peer = peer

    async def Export(self, request: ExportMetricsServiceRequest, context: grpc.aio.ServicerContext) -> ExportMetricsServiceResponse:  # noqa: N802 - gRPC naming
        self.peer.metric_attempts += 1
        return await _grpc_answer(request, context, ExportMetricsServiceResponse(), self.peer.metric_refusals,
                                  self.peer._accept_metrics, _partial_points)
