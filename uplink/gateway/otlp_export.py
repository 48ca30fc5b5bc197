"""OTLP trace export from the gateway to any backend, over gRPC or HTTP, with the OTLP specification's retry rules."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from edge.codec.otlp import ExportTraceServiceRequest, ExportTraceServiceResponse, request_from_spans
from edge.config import GatewayConfig
from edge.errors import ExportError
from edge.model import Span

from edge.net.retry import Backoff, Throttle, parse_retry_after

__all__ = ["OtlpExporter", "ExportResult", "ExporterStats", "RETRYABLE_GRPC", "RETRYABLE_HTTP"]

log = logging.getLogger(__name__)

# OTLP/gRPC: RESOURCE_EXHAUSTED is retryable only when the server sends RetryInfo (checked separately).
RETRYABLE_GRPC = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_PROTOBUF = "application/x-protobuf"


@dataclass(slots=True)
class ExportResult:
    """What became of one export: delivered (maybe partially), or not and whether a later retry could help."""

    ok: bool
    spans: int
    exported: int = 0
    rejected: int = 0
    attempts: int = 0
    retryable: bool = False
    retry_after_s: float | None = None
    error: str = ""


@dataclass(slots=True)
class ExporterStats:
    """Counters of the OTLP exporter."""

    exports: int = 0
    spans_exported: int = 0
    spans_rejected: int = 0  # refused by the backend in a partial success
    spans_dropped: int = 0  # non-retryable failures
    failed_attempts: int = 0
    retries: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


class OtlpExporter:
    """Sends spans to `cfg.export_endpoint` with `cfg.export_protocol`; create and use it inside the event loop."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.stats = ExporterStats()
        self._throttle = Throttle()
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._session: Any = None
        self._metadata = tuple((k.lower(), v) for k, v in cfg.export_headers.items())
        endpoint = cfg.export_endpoint.rstrip("/")
        self.url = endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"

    @property
    def endpoint(self) -> str:
        """Where spans go, for log lines."""
        return f"{self.cfg.export_protocol}:{self.url if self.cfg.export_protocol == 'http' else self.cfg.export_endpoint}"

    async def export(self, spans: list[Span], max_elapsed: float | None = None) -> ExportResult:
        """Export with retries for up to `max_elapsed` seconds (default `cfg.retry_max_elapsed`); never raises."""
        n = len(spans)
        self.stats.exports += 1
        try:
            req = request_from_spans(spans)
        except Exception as e:  # noqa: BLE001 - a value OTLP cannot hold (e.g. an int over 64 bits) is bad data, not a crash
            return self._dropped(n, 0, f"spans cannot be expressed in OTLP: {e}")
        budget = self.cfg.retry_max_elapsed if max_elapsed is None else max_elapsed
        deadline = time.monotonic() + budget
        backoff = Backoff(maximum=30.0)
        attempts = 0
        while True:
            attempts += 1
            try:
                rejected, message = await self.export_request(req)
            except ExportError as e:
                self.stats.failed_attempts += 1
                if not e.retryable:
                    return self._dropped(n, attempts, str(e))
                delay = e.retry_after_s if e.retry_after_s is not None else backoff.next()
                if time.monotonic() + delay > deadline:
                    return ExportResult(False, n, attempts=attempts, retryable=True, retry_after_s=e.retry_after_s,
                                        error=str(e))
                if self._throttle.ready("retry"):
                    extra = self._throttle.take_suppressed("retry")
                    log.warning("OTLP export to %s failed: %s; retrying in %.1fs%s", self.endpoint, e, delay,
                                f" ({extra} similar failures not shown)" if extra else "")
                self.stats.retries += 1
                await asyncio.sleep(delay)
                continue
            exported = n - min(rejected, n)
            self.stats.spans_exported += exported
            if rejected:
                self.stats.spans_rejected += rejected
                log.warning("OTLP backend %s rejected %d of %d spans: %s", self.endpoint, rejected, n, message)
            return ExportResult(True, n, exported=exported, rejected=rejected, attempts=attempts, error=message)

    def _dropped(self, n: int, attempts: int, error: str) -> ExportResult:
        self.stats.spans_dropped += n
        log.error("OTLP export to %s dropped %d spans (not retryable): %s", self.endpoint, n, error)
        return ExportResult(False, n, attempts=attempts, retryable=False, error=error)

    async def export_request(self, req: ExportTraceServiceRequest) -> tuple[int, str]:
        """One attempt; returns (rejected spans, message) from a partial success, raises ExportError otherwise."""
        if self.cfg.export_protocol == "http":
            return await self._export_http(req)
        return await self._export_grpc(req)

    # --------------------------------------------------------------------------------------------------- gRPC

    def _grpc_stub(self) -> Any:
        if self._stub is None:
            parts = urlsplit(self.cfg.export_endpoint)
            target = parts.netloc or parts.path
            # grpc's own reconnect backoff reaches 120 s; keep it short so a backend that comes back is used soon.
            options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                       ("grpc.max_reconnect_backoff_ms", 5000), ("grpc.max_send_message_length", 64 * 1024 * 1024)]
            if parts.scheme == "https":
                self._channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
            else:
                self._channel = grpc.aio.insecure_channel(target, options=options)
            self._stub = trace_service_pb2_grpc.TraceServiceStub(self._channel)
        return self._stub

    async def _export_grpc(self, req: ExportTraceServiceRequest) -> tuple[int, str]:
        stub = self._grpc_stub()
        try:
            resp: ExportTraceServiceResponse = await stub.Export(req, timeout=self.cfg.export_timeout,
                                                                 metadata=self._metadata or None)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            retry_after = _grpc_retry_delay(e)
            retryable = code in RETRYABLE_GRPC or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None)
            raise ExportError(f"gRPC {code.name}: {e.details()}", retryable, retry_after) from None
        ps = resp.partial_success
        return ps.rejected_spans, ps.error_message

    # --------------------------------------------------------------------------------------------------- HTTP

    async def _export_http(self, req: ExportTraceServiceRequest) -> tuple[int, str]:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.export_timeout))
        headers = {**self.cfg.export_headers, "Content-Type": _PROTOBUF}
        try:
            async with self._session.post(self.url, data=req.SerializeToString(), headers=headers) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise ExportError(f"OTLP/HTTP endpoint {self.url} unreachable: {e or type(e).__name__}", True) from None
        if 200 <= status < 300:
            out = ExportTraceServiceResponse()
            try:
                out.ParseFromString(body)
            except Exception:  # noqa: BLE001 - a 2xx with an unreadable body still means delivered
                return 0, ""
            return out.partial_success.rejected_spans, out.partial_success.error_message
        text = _status_message(body)
        raise ExportError(f"HTTP {status} from {self.url}: {text}", status in RETRYABLE_HTTP,
                          retry_after if status in RETRYABLE_HTTP else None)

    # ------------------------------------------------------------------------------------------ metrics (issue 5)

    async def export_metrics(self, batch: Any, max_elapsed: float | None = None) -> ExportResult:
        """Export an `edge.model.MetricBatch` as an OTLP ExportMetricsServiceRequest (gRPC
        MetricsService/Export or HTTP POST to /v1/metrics), with the same retry rules as spans; never raises.
        `spans`/`exported` in the result count data points."""
        from edge.codec.otlp_metrics import request_from_metrics

        n = batch.point_count()
        try:
            req = request_from_metrics(batch)
        except Exception as e:  # noqa: BLE001 - a value OTLP cannot hold is bad data, not a crash
            return ExportResult(False, n, error=f"metrics cannot be expressed in OTLP: {e}")
        budget = self.cfg.retry_max_elapsed if max_elapsed is None else max_elapsed
        deadline = time.monotonic() + budget
        backoff = Backoff(maximum=30.0)
        attempts = 0
        while True:
            attempts += 1
            try:
                rejected, message = await self._export_metrics_request(req)
            except ExportError as e:
                delay = e.retry_after_s if e.retry_after_s is not None else backoff.next()
                if not e.retryable or time.monotonic() + delay > deadline:
                    if self._throttle.ready("metrics"):
                        log.warning("OTLP metrics export to %s failed: %s", self.endpoint, e)
                    return ExportResult(False, n, attempts=attempts, retryable=e.retryable,
                                        retry_after_s=e.retry_after_s, error=str(e))
                await asyncio.sleep(delay)
                continue
            return ExportResult(True, n, exported=n - min(rejected, n), rejected=rejected, attempts=attempts,
                                error=message)

    async def _export_metrics_request(self, req: Any) -> tuple[int, str]:
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

        if self.cfg.export_protocol == "http":
            import aiohttp

            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.export_timeout))
            url = self.url[: -len("/v1/traces")] + "/v1/metrics" if self.url.endswith("/v1/traces") else self.url
            headers = {**self.cfg.export_headers, "Content-Type": _PROTOBUF}
            try:
                async with self._session.post(url, data=req.SerializeToString(), headers=headers) as resp:
                    body, status = await resp.read(), resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                raise ExportError(f"OTLP/HTTP endpoint {url} unreachable: {e or type(e).__name__}", True) from None
            if 200 <= status < 300:
                out = metrics_service_pb2.ExportMetricsServiceResponse()
                try:
                    out.ParseFromString(body)
                except Exception:  # noqa: BLE001 - a 2xx with an unreadable body still means delivered
                    return 0, ""
                return out.partial_success.rejected_data_points, out.partial_success.error_message
            raise ExportError(f"HTTP {status} from {url}: {_status_message(body)}", status in RETRYABLE_HTTP,
                              retry_after if status in RETRYABLE_HTTP else None)
        self._grpc_stub()  # opens the channel
        stub = metrics_service_pb2_grpc.MetricsServiceStub(self._channel)
        try:
            resp = await stub.Export(req, timeout=self.cfg.export_timeout, metadata=self._metadata or None)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            retry_after = _grpc_retry_delay(e)
            retryable = code in RETRYABLE_GRPC or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None)
            raise ExportError(f"gRPC {code.name}: {e.details()}", retryable, retry_after) from None
        return resp.partial_success.rejected_data_points, resp.partial_success.error_message

    async def close(self) -> None:
        """Close channels and sessions."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def _grpc_retry_delay(e: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay in the rich error details, if the server sent one."""
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:
        return None
    for key, value in e.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:  # noqa: BLE001 - unreadable details: behave as if there were none
            return None
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _status_message(body: bytes) -> str:
    """The message of an OTLP/HTTP error body (a google.rpc.Status), else the start of the body as text."""
    try:
        from google.rpc import status_pb2

        status = status_pb2.Status()
        status.ParseFromString(body)
        if status.message:
            return status.message
    except Exception:  # noqa: BLE001 - not a Status: fall back to text
        pass
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"
