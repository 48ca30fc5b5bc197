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


class OtlpIngest:
    """Validates spans of an export request and hands them to the pipeline, or pushes back when it is full."""

    def __init__(self, sink: Sink, has_room: HasRoom) -> None:
        self.sink = sink
        self.has_room = has_room
        self.stats = OtlpStats()
        self.warn = RateLimitedLog(log)

    def ingest(self, req: ExportTraceServiceRequest, wire_size: int) -> IngestResult:
        """Take the request's spans; rejected spans are reported through OTLP partial success."""
        self.stats.requests += 1
        # Refuse before decoding when the pipeline is full: the SDK keeps the data and retries, so nothing is lost.
        if not self.has_room(wire_size * 2):
            self.stats.dropped["busy"] += 1
            return IngestResult(ExportTraceServiceResponse(), busy=True)
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
