"""Source: OTLP/gRPC receiver (TraceService/Export) built on the official opentelemetry-proto stubs."""
from __future__ import annotations

import logging

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from ..codec.otlp import parse_request_protobuf
from ..errors import DecodeError, HelixError
from .otlp_common import OtlpIngest

__all__ = ["OtlpGrpcReceiver"]

log = logging.getLogger(__name__)

_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"  # as in the official trace_service.proto

class OtlpGrpcReceiver:
    """A grpc.aio server for OTLP traces; messages over `max_request` are refused by gRPC itself.

    The method takes the request as bytes, so that a request that would not fit the pipeline is refused before it
    is parsed: calls waiting for the event loop in a burst then hold their wire bytes, not decoded messages (about
    three times as large, and outside every bound the agent keeps), and a malformed one is counted, not a gRPC
    internal error.
    """

    def __init__(self, ingest: OtlpIngest, host: str, port: int, max_request: int) -> None:
        self.ingest = ingest
        self.host = host
        self.port = port
        self.max_request = max_request
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind and serve; the actual port is in `self.port` afterwards."""
        self._server = grpc.aio.server(options=[("grpc.max_receive_message_length", self.max_request)])
        export = grpc.unary_unary_rpc_method_handler(self.export, request_deserializer=None,
                                                     response_serializer=ExportTraceServiceResponse.SerializeToString)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, {"Export": export}),))
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

    async def export(self, data: bytes, context: grpc.aio.ServicerContext) -> ExportTraceServiceResponse:
        """Handle one export (TraceService/Export); UNAVAILABLE (retryable) when the agent is full."""
        if not self.ingest.room_for(len(data)):
            self.ingest.stats.requests += 1
            self.ingest.busy()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "agent is busy; retry later")
        try:
            request = parse_request_protobuf(data)
        except DecodeError as e:
            self.ingest.stats.requests += 1
            self.ingest.stats.dropped["bad_request"] += 1
            self.ingest.warn.warning("OTLP/gRPC: refused an undecodable request from %s: %s", context.peer(), e)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        result = self.ingest.ingest(request, len(data))
        if result.busy:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "agent is busy; retry later")
        return result.response
