"""What the OTLP/HTTP and OTLP/gRPC receivers share: turning a request into spans for the pipeline."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable

from ..codec.otlp_wire import encode_export_response
from ..errors import DecodeError
from ..model import Source, Span
from ..net.retry import RateLimitedLog

__all__ = ["OtlpIngest", "OtlpStats", "IngestResult", "Decode"]

log = logging.getLogger(__name__)

Sink = Callable[[list[Span], Source], int]
HasRoom = Callable[[int], bool]
# Reads a request's spans, appending the reasons of spans it skipped; raises DecodeError on a malformed request.
Decode = Callable[[list[str]], list[Span]]


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

    rejected_spans: int = 0
    error_message: str = ""
    busy: bool = False  # nothing was taken: the client should retry later

    def protobuf(self) -> bytes:
        """The ExportTraceServiceResponse, OTLP/protobuf."""
        return encode_export_response(self.rejected_spans, self.error_message)

    def json(self) -> bytes:
        """The ExportTraceServiceResponse, OTLP/JSON (int64 as a string, as protobuf's JSON mapping writes it)."""
        if not self.rejected_spans and not self.error_message:
            return b"{}"
        partial: dict[str, str] = {}
        if self.rejected_spans:
            partial["rejectedSpans"] = str(self.rejected_spans)
        if self.error_message:
            partial["errorMessage"] = self.error_message
        return json.dumps({"partialSuccess": partial}).encode()


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
        return IngestResult(busy=True)

    def ingest(self, decode: Decode, wire_size: int) -> IngestResult:
        """Take the request's spans; rejected spans are reported through OTLP partial success.

        DecodeError from `decode` is counted as a bad request and raised for the receiver to answer.
        """
        self.stats.requests += 1
        # Refuse before decoding when the pipeline is full: the SDK keeps the data and retries, so nothing is lost.
        if not self.room_for(wire_size):
            return self.busy()
        errors: list[str] = []
        try:
            spans = decode(errors)
        except DecodeError:
            self.stats.dropped["bad_request"] += 1
            raise
        accepted = self.sink(spans, Source.SDK_OTLP) if spans else 0
        self.stats.spans += accepted
        rejected = len(errors) + (len(spans) - accepted)
        if not rejected:
            return IngestResult()
        self.stats.dropped["bad_span"] += len(errors)
        message = errors[0] if errors else "agent queue full"
        self.warn.warning("OTLP export: rejected %d span(s): %s", rejected, message)
        return IngestResult(rejected, message)
