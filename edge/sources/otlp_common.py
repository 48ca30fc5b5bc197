"""What the OTLP/HTTP and OTLP/gRPC receivers share: turning a request into spans for the pipeline."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from ..codec.otlp import ExportTraceServiceRequest, ExportTraceServiceResponse, spans_from_request
from ..model import Source, Span
from ..ratelimit import RateLimitedLog

__all__ = ["OtlpIngest", "OtlpStats", "IngestResult"]

log = logging.getLogger(__name__)

Sink = Callable[[list[Span], Source], int]
HasRoom = Callable[[int], bool]


@dataclass(slots=True)
class OtlpStats:
    """Counters shared by both OTLP receivers; `dropped` is keyed by reason."""

    requests: int = 0
    spans: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"bad_request": 0, "bad_span": 0, "oversize": 0,
                                                              "busy": 0})


@dataclass(slots=True)
class IngestResult:
    """The outcome of one export request."""

    response: ExportTraceServiceResponse
    busy: bool = False  # nothing was taken: the client should retry later


# Decoded spans take about five times their OTLP protobuf size in memory (1.7 KiB per span decoded from ~0.3-0.4
# KiB on the wire, bench/_workload.py spans); refusing on an underestimate would accept requests that then do not
# fit, and spans refused after acceptance (partial success) are not retried by SDKs.
_DECODED_PER_WIRE_BYTE = 6


class OtlpIngest:
    """Validates spans of an export request and hands them to the pipeline, or pushes back when it is full."""

    def __init__(self, sink: Sink, has_room: HasRoom) -> None:
        self.sink = sink
        self.has_room = has_room
        self.stats = OtlpStats()
        self.warn = RateLimitedLog(log)

    def room_for(self, wire_size: int) -> bool:
        """Whether the spans of a request of `wire_size` protobuf bytes would fit the pipeline now."""
        return self.has_room(wire_size * _DECODED_PER_WIRE_BYTE)

    def busy(self) -> IngestResult:
        """The answer to a request refused because the pipeline is full (the SDK retries it later)."""
        self.stats.dropped["busy"] += 1
        return IngestResult(ExportTraceServiceResponse(), busy=True)

    def ingest(self, req: ExportTraceServiceRequest, wire_size: int) -> IngestResult:
        """Take the request's spans; rejected spans are reported through OTLP partial success."""
        self.stats.requests += 1
        # Refuse before decoding when the pipeline is full: the SDK keeps the data and retries, so nothing is lost.
        if not self.room_for(wire_size):
            return self.busy()
        errors: list[str] = []
        spans = spans_from_request(req, Source.SDK_OTLP, errors)
        accepted = self.sink(spans, Source.SDK_OTLP) if spans else 0
        self.stats.spans += accepted
        resp = ExportTraceServiceResponse()
        rejected = len(errors) + (len(spans) - accepted)
        if rejected:
            self.stats.dropped["bad_span"] += len(errors)
            resp.partial_success.rejected_spans = rejected
            resp.partial_success.error_message = errors[0] if errors else "agent queue full"
            self.warn.warning("OTLP export: rejected %d span(s): %s", rejected, resp.partial_success.error_message)
        return IngestResult(resp)
