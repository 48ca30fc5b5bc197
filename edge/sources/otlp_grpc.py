"""Source: OTLP/gRPC receiver (TraceService/Export) built on the official opentelemetry-proto stubs."""
from __future__ import annotations

import logging

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ..errors import HelixError
from .otlp_common import OtlpIngest

__all__ = ["OtlpGrpcReceiver"]

log = logging.getLogger(__name__)


class OtlpGrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A grpc.aio server for OTLP traces; messages over `max_request` are refused by gRPC itself."""

    def __init__(self, ingest: OtlpIngest, host: str, port: int, max_request: int) -> None:
        self.ingest = ingest
        self.host = host
        self.port = port
        self.max_request = max_request
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind and serve; the actual port is in `self.port` afterwards."""
        self._server = grpc.aio.server(options=[("grpc.max_receive_message_length", self.max_request)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            port = self._server.add_insecure_port(target)
        except RuntimeError:  # grpcio ≥ 1.60 raises where older releases returned 0
            port = 0
        if port == 0:
            raise HelixError(f"cannot listen for OTLP/gRPC on {target}: address in use or not permitted "
                             "(change sources.otlp.grpc_listen)")
        self.port = port
        await self._server.start()
        log.info("OTLP/gRPC receiver listening on %s", target.rsplit(":", 1)[0] + f":{port}")

    async def stop(self) -> None:
        """Stop serving, letting in-flight exports finish briefly."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace=1.0)

    async def Export(self, request: ExportTraceServiceRequest,  # noqa: N802 - gRPC method name
                     context: grpc.aio.ServicerContext) -> ExportTraceServiceResponse:
        """Handle one export; UNAVAILABLE (retryable) when the agent is full."""
        result = self.ingest.ingest(request, request.ByteSize())
        if result.busy:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "agent is busy; retry later")
        return result.response
