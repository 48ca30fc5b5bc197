"""Source: OTLP/gRPC receiver (TraceService/Export), served by the agent's own gRPC server (edge/net/grpc_server.py)."""
from __future__ import annotations

import logging
from collections.abc import Awaitable

from ..codec.otlp_wire import decode_export_request
from ..errors import DecodeError, HelixError
from ..net.budget import RequestBudget
from ..net.grpc_server import Call, Code, GrpcServer, GrpcStatus, Method
from ..model import Source
from .otlp_common import PROTOBUF, IngestResult, OtlpIngest

__all__ = ["OtlpGrpcReceiver", "EXPORT_PATH"]

log = logging.getLogger(__name__)

# The method path from the official opentelemetry-proto trace_service.proto.
EXPORT_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class OtlpGrpcReceiver:
    """OTLP/gRPC traces; a request whose spans would not fit the pipeline waits for room, then is refused.

    It waits (up to `max_wait` s) before it is parsed, holding its wire bytes, not decoded spans (about six times
    as large); meanwhile the server's flow control makes other clients wait too. A refusal is UNAVAILABLE, which
    every OTLP exporter retries, so nothing is lost.
    """

    def __init__(self, ingest: OtlpIngest, host: str, port: int, max_request: int,
                 max_buffered: int = 1 << 20, max_wait: float = 2.0, budget: RequestBudget | None = None) -> None:
        self.ingest = ingest
        self.server = GrpcServer(host, port, {EXPORT_PATH: Method(self.export, ready=ingest.room_for,
                                                                  refused=self.refused)},
                                 max_request, max_buffered, name="OTLP/gRPC", max_wait=max_wait, budget=budget)

    @property
    def port(self) -> int:
        """The bound port (after `start()`)."""
        return self.server.port

    @property
    def bytes(self) -> int:
        """Wire bytes of export requests still arriving."""
        return self.server.buffered

    def set_bound(self, n: int) -> int:
        """Bound the wire bytes of requests still arriving (the memory governor's plan): flow control holds the
        clients back, nothing is dropped."""
        self.server.max_buffered = n
        return 0

    async def start(self) -> None:
        """Bind and serve; the actual port is in `self.port` afterwards."""
        try:
            await self.server.start()
        except HelixError as e:
            raise HelixError(f"{e} (change sources.otlp.grpc_listen)") from None
        log.info("OTLP/gRPC receiver listening on %s:%d", self.server.host, self.port)

    async def stop(self) -> None:
        """Stop serving."""
        await self.server.stop()

    def refused(self, call: Call) -> None:
        """Count a request refused because the pipeline stayed full."""
        self.ingest.stats.requests += 1
        self.ingest.busy()

    def export(self, data: bytes, call: Call) -> bytes | Awaitable[bytes]:
        """Handle one export (TraceService/Export)."""
        try:
            result = self.ingest.ingest(lambda errors, cap: decode_export_request(data, Source.SDK_OTLP, errors, cap),
                                        len(data), PROTOBUF, data)
        except DecodeError as e:
            self.ingest.warn.warning("OTLP/gRPC: refused an undecodable request from %s: %s", call.peer, e)
            raise GrpcStatus(Code.INVALID_ARGUMENT, str(e)) from None
        if result.busy:
            raise GrpcStatus(Code.UNAVAILABLE, "agent is busy; retry later")
        if result.too_large:
            # Without RetryInfo, RESOURCE_EXHAUSTED is not retryable (OTLP specification, OTLP/gRPC failures).
            raise GrpcStatus(Code.RESOURCE_EXHAUSTED, result.too_large)
        if result.committed is not None:
            return _after_commit(result)
        return result.protobuf()


async def _after_commit(result: IngestResult) -> bytes:
    """Durable mode: the answer once the request is on disk; UNAVAILABLE (retried by every exporter) if it is not."""
    assert result.committed is not None
    try:
        await result.committed
    except HelixError:
        raise GrpcStatus(Code.UNAVAILABLE, "agent cannot log the request now (disk full?); retry later") from None
    return result.protobuf()
