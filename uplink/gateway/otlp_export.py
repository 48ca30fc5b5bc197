"""OTLP export from the gateway to any backend, traces and metrics alike: gRPC or HTTP, with the OTLP
specification's retry rules, one export loop for both signals."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc

from edge.codec.otlp import ExportTraceServiceResponse
from edge.codec.otlp_writer import request_bytes
from edge.config.uplink import GatewayConfig
from edge.errors import ExportError
from edge.model import MetricBatch, Span
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
class Delivered:
    """What became of the items (spans, or metric data points) of one signal."""

    exported: int = 0
    rejected: int = 0  # refused by the backend in a partial success
    dropped: int = 0  # non-retryable failures


@dataclass(slots=True)
class ExporterStats:
    """Counters of the OTLP exporter: attempts for both signals, items per signal."""

    exports: int = 0
    metric_exports: int = 0
    failed_attempts: int = 0
    retries: int = 0
    spans: Delivered = field(default_factory=Delivered)
    points: Delivered = field(default_factory=Delivered)  # metric data points

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (`spans_exported`, `points_dropped`, ...)."""
        out = {"exports": self.exports, "metric_exports": self.metric_exports, "failed_attempts": self.failed_attempts,
               "retries": self.retries}
        for unit, d in (("spans", self.spans), ("points", self.points)):
            out.update({f"{unit}_exported": d.exported, f"{unit}_rejected": d.rejected, f"{unit}_dropped": d.dropped})
        return out


@dataclass(slots=True, frozen=True)
class _Signal:
    """What differs between exporting traces and metrics: the request, the path, the service, the counters."""

    name: str  # "spans" or "metrics", for log lines
    unit: str  # what the counts count: "spans" or "points"
    path: str  # OTLP/HTTP path
    method: str  # the gRPC method, sent the request's serialized bytes as they are
    response: Any  # the Export*ServiceResponse class
    rejected: Callable[[Any], int]  # the partial success's count of refused items


def _traces() -> _Signal:
    return _Signal("spans", "spans", "/v1/traces", "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                   ExportTraceServiceResponse, lambda ps: ps.rejected_spans)


def _metrics() -> _Signal:
    # Imported on first use: a gateway that never receives a metrics batch does not load these classes.
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

    return _Signal("metrics", "points", "/v1/metrics", "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                   metrics_service_pb2.ExportMetricsServiceResponse, lambda ps: ps.rejected_data_points)


class OtlpExporter:
    """Sends spans and metrics to `cfg.export_endpoint` with `cfg.export_protocol`; create and use it inside the
    event loop."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.stats = ExporterStats()
        self._throttle = Throttle()
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, Any] = {}
        self._session: Any = None
        self._signals: dict[str, _Signal] = {}
        self._metadata = tuple((k.lower(), v) for k, v in cfg.export_headers.items())
        endpoint = cfg.export_endpoint.rstrip("/")
        # An endpoint given with its trace path (".../v1/traces") is the base of the metrics path too.
        self._base = endpoint[: -len("/v1/traces")] if endpoint.endswith("/v1/traces") else endpoint
        self.url = self._base + "/v1/traces"

    @property
    def endpoint(self) -> str:
        """Where data goes, for log lines."""
        return f"{self.cfg.export_protocol}:{self.url if self.cfg.export_protocol == 'http' else self.cfg.export_endpoint}"

    async def export(self, spans: list[Span], max_elapsed: float | None = None) -> ExportResult:
        """Export spans with retries for up to `max_elapsed` seconds (default `cfg.retry_max_elapsed`); never raises."""
        self.stats.exports += 1
        return await self._export(self._signal("spans"), lambda: request_bytes(spans), len(spans), max_elapsed)

    async def export_request(self, request: bytes, n: int, max_elapsed: float | None = None) -> ExportResult:
        """Export an OTLP trace request already written (of `n` spans) with the retries of `export`; never raises."""
        self.stats.exports += 1
        return await self._export(self._signal("spans"), lambda: request, n, max_elapsed)

    async def export_metrics(self, batch: MetricBatch, max_elapsed: float | None = None) -> ExportResult:
        """Export a MetricBatch as an OTLP ExportMetricsServiceRequest, with the same retry rules as spans; never
        raises. `spans`/`exported`/`rejected` in the result count data points."""
        from edge.codec.otlp_metrics import request_from_metrics

        self.stats.metric_exports += 1
        return await self._export(self._signal("metrics"), lambda: request_from_metrics(batch).SerializeToString(),
                                  batch.point_count(), max_elapsed)

    def _signal(self, name: str) -> _Signal:
        signal = self._signals.get(name)
        if signal is None:
            signal = self._signals[name] = _traces() if name == "spans" else _metrics()
        return signal

    def _delivered(self, signal: _Signal) -> Delivered:
        return self.stats.spans if signal.unit == "spans" else self.stats.points

    async def _export(self, signal: _Signal, build: Callable[[], bytes], n: int,
                      max_elapsed: float | None) -> ExportResult:
        try:
            req = build()
        except Exception as e:  # noqa: BLE001 - a value OTLP cannot hold (e.g. an int over 64 bits) is bad data, not a crash
            return self._dropped(signal, n, 0, f"{signal.name} cannot be expressed in OTLP: {e}")
        budget = self.cfg.retry_max_elapsed if max_elapsed is None else max_elapsed
        deadline = time.monotonic() + budget
        backoff = Backoff(maximum=30.0)
        attempts = 0
        while True:
            attempts += 1
            try:
                rejected, message = await self._attempt(signal, req)
            except ExportError as e:
                self.stats.failed_attempts += 1
                if not e.retryable:
                    return self._dropped(signal, n, attempts, str(e))
                delay = e.retry_after_s if e.retry_after_s is not None else backoff.next()
                if time.monotonic() + delay > deadline:
                    return ExportResult(False, n, attempts=attempts, retryable=True, retry_after_s=e.retry_after_s,
                                        error=str(e))
                key = "retry-" + signal.name
                if self._throttle.ready(key):
                    extra = self._throttle.take_suppressed(key)
                    log.warning("OTLP %s export to %s failed: %s; retrying in %.1fs%s", signal.name, self.endpoint, e,
                                delay, f" ({extra} similar failures not shown)" if extra else "")
                self.stats.retries += 1
                await asyncio.sleep(delay)
                continue
            exported = n - min(rejected, n)
            delivered = self._delivered(signal)
            delivered.exported += exported
            if rejected:
                delivered.rejected += rejected
                log.warning("OTLP backend %s rejected %d of %d %s: %s", self.endpoint, rejected, n, signal.unit, message)
            return ExportResult(True, n, exported=exported, rejected=rejected, attempts=attempts, error=message)

    def _dropped(self, signal: _Signal, n: int, attempts: int, error: str) -> ExportResult:
        self._delivered(signal).dropped += n
        log.error("OTLP export to %s dropped %d %s (not retryable): %s", self.endpoint, n, signal.unit, error)
        return ExportResult(False, n, attempts=attempts, retryable=False, error=error)

    async def _attempt(self, signal: _Signal, req: bytes) -> tuple[int, str]:
        """One attempt; returns (rejected items, message) from a partial success, raises ExportError otherwise."""
        if self.cfg.export_protocol == "http":
            return await self._attempt_http(signal, req)
        return await self._attempt_grpc(signal, req)

    # --------------------------------------------------------------------------------------------------- gRPC

    def _grpc_call(self, signal: _Signal) -> Any:
        if self._channel is None:
            parts = urlsplit(self.cfg.export_endpoint)
            target = parts.netloc or parts.path
            # grpc's own reconnect backoff reaches 120 s; keep it short so a backend that comes back is used soon.
            options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                       ("grpc.max_reconnect_backoff_ms", 5000), ("grpc.max_send_message_length", 64 * 1024 * 1024)]
            if parts.scheme == "https":
                self._channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
            else:
                self._channel = grpc.aio.insecure_channel(target, options=options)
        call = self._calls.get(signal.name)
        if call is None:
            # No request serializer: the request is already its protobuf bytes (edge/codec/otlp_writer.py).
            call = self._calls[signal.name] = self._channel.unary_unary(
                signal.method, request_serializer=None, response_deserializer=signal.response.FromString)
        return call

    async def _attempt_grpc(self, signal: _Signal, req: bytes) -> tuple[int, str]:
        call = self._grpc_call(signal)
        try:
            resp = await call(req, timeout=self.cfg.export_timeout, metadata=self._metadata or None)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            retry_after = _grpc_retry_delay(e)
            retryable = code in RETRYABLE_GRPC or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None)
            raise ExportError(f"gRPC {code.name}: {e.details()}", retryable, retry_after) from None
        return signal.rejected(resp.partial_success), resp.partial_success.error_message

    # --------------------------------------------------------------------------------------------------- HTTP

    async def _attempt_http(self, signal: _Signal, req: bytes) -> tuple[int, str]:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.export_timeout))
        url = self._base + signal.path
        headers = {**self.cfg.export_headers, "Content-Type": _PROTOBUF}
        try:
            async with self._session.post(url, data=req, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise ExportError(f"OTLP/HTTP endpoint {url} unreachable: {e or type(e).__name__}", True) from None
        if 200 <= status < 300:
            out = signal.response()
            try:
                out.ParseFromString(body)
            except Exception:  # noqa: BLE001 - a 2xx with an unreadable body still means delivered
                return 0, ""
            return signal.rejected(out.partial_success), out.partial_success.error_message
        text = _status_message(body)
        raise ExportError(f"HTTP {status} from {url}: {text}", status in RETRYABLE_HTTP,
                          retry_after if status in RETRYABLE_HTTP else None)

    async def close(self) -> None:
        """Close channels and sessions."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._calls.clear()
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
