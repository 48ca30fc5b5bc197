"""What the OTLP/HTTP and OTLP/gRPC receivers share: turning a request into spans for the pipeline."""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..codec.otlp_wire import decode_export_request, encode_export_response
from ..errors import DecodeError, OverBudget, describe
from ..model import Source, Span
from ..net.retry import RateLimitedLog

__all__ = ["OtlpIngest", "OtlpStats", "IngestResult", "Decode", "Door", "DurableLog", "PROTOBUF", "JSON",
           "decode_logged"]

log = logging.getLogger(__name__)

Sink = Callable[[list[Span], Source], int]
HasRoom = Callable[[int], bool]
# Reads a request's spans, appending the reasons of spans it skipped; raises DecodeError on a malformed request and,
# given a number of bytes, OverBudget as soon as the spans read take more.
Decode = Callable[[list[str], "int | None"], list[Span]]


PROTOBUF = 1  # kinds of logged request bodies (durable mode)
JSON = 2


class DurableLog(Protocol):
    """Durable mode's log as the receivers see it (edge/agent/accepted_log.py)."""

    def has_room(self, nbytes: int) -> bool:
        """Whether a request of `nbytes` can be logged now."""
        ...

    def append(self, kind: int, body: bytes) -> tuple[int, asyncio.Future[None]]:
        """Queue a record: its number, and a future done once it is on disk (raising if it could not be)."""
        ...


class Door(Protocol):
    """The pipeline's inbox as the receivers see it: what it holds and its bound now."""

    @property
    def bytes(self) -> int:
        """Bytes of spans waiting now."""
        ...

    @property
    def max_bytes(self) -> int:
        """Its bound now (the governor's plan, or less under memory pressure)."""
        ...


@dataclass(slots=True)
class OtlpStats:
    """Counters shared by both OTLP receivers; `dropped` is keyed by reason."""

    requests: int = 0
    spans: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"bad_request": 0, "bad_span": 0, "oversize": 0,
                                                              "busy": 0, "log_full": 0})


@dataclass(slots=True)
class IngestResult:
    """The outcome of one export request."""

    rejected_spans: int = 0
    error_message: str = ""
    busy: bool = False  # nothing was taken: the client should retry later
    too_large: str = ""  # nothing was taken, and never will be: why (the client must not retry)
    # Durable mode: answer only once this is done; if it raises, the request was not logged: answer busy.
    committed: asyncio.Future[None] | None = None

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
    """Validates spans of an export request and hands them to the pipeline, or pushes back when it is full.

    Every request under `sources.otlp.max_request` is either taken, or answered busy (retryable) while the pipeline
    holds other spans, or refused as too large (not retryable) with the reason. The first check is an estimate (six
    times the wire size covers every real span seen); when it says no, `door` (the inbox) decides by the real size:
    the request is decoded with what is free as its cap, and when the inbox is empty that is the whole inbox, so a
    request is refused as too large only when its spans alone would overflow the inbox at its planned bound
    (`ceiling()`, the governor's plan; the bound now when not given).
    """

    def __init__(self, sink: Sink, has_room: HasRoom, door: Door | None = None,
                 ceiling: Callable[[], int] | None = None, durable: DurableLog | None = None) -> None:
        self.sink = sink
        self.durable = durable
        self.has_room = has_room
        self.door = door
        self.ceiling = ceiling
        self.stats = OtlpStats()
        self.warn = RateLimitedLog(log)

    def room_for(self, wire_size: int) -> bool:
        """Whether a request of `wire_size` protobuf bytes may be tried now: its spans would fit the pipeline, or
        the pipeline is empty (it is then taken, or refused as too large: either way, not worth waiting for)."""
        return self.has_room(wire_size * _DECODED_PER_WIRE_BYTE) or (self.door is not None and self.door.bytes == 0)

    def busy(self) -> IngestResult:
        """The answer to a request refused because the pipeline is full (the SDK retries it later)."""
        self.stats.dropped["busy"] += 1
        return IngestResult(busy=True)

    def ingest(self, decode: Decode, wire_size: int, kind: int = PROTOBUF, body: bytes = b"") -> IngestResult:
        """Take the request's spans; rejected spans are reported through OTLP partial success.

        DecodeError from `decode` is counted as a bad request and raised for the receiver to answer. In durable mode
        `body` (of `kind`) is logged and the result's `committed` says when it is on disk.
        """
        self.stats.requests += 1
        cap: int | None = None
        door = self.door
        durable = self.durable
        if durable is not None and not durable.has_room(len(body)):
            self.stats.dropped["log_full"] += 1  # at its bound: busy until segments are retired
            return IngestResult(busy=True)
        if not self.has_room(wire_size * _DECODED_PER_WIRE_BYTE):
            # Refused before decoding when the pipeline is full: the SDK keeps the data and retries.
            cap = door.max_bytes - door.bytes if door is not None else 0
            if cap <= 0:
                return self.busy()
        errors: list[str] = []
        try:
            spans = decode(errors, cap)
        except OverBudget as e:
            return self._over(e, door)
        except DecodeError:
            self.stats.dropped["bad_request"] += 1
            raise
        except Exception as e:  # noqa: BLE001 - whatever the body, the request is refused, never the receiver broken
            self.stats.dropped["bad_request"] += 1
            raise DecodeError(f"not an OTLP export request ({type(e).__name__})") from None
        committed = None
        if durable is not None and spans:
            # Logged before the spans enter the pipeline, each stamped with the record's number, so that the log
            # keeps the record while any of them is still held there.
            number, committed = durable.append(kind, body)
            for s in spans:
                s.logged = number
        accepted = self.sink(spans, Source.SDK_OTLP) if spans else 0
        self.stats.spans += accepted
        rejected = len(errors) + (len(spans) - accepted)
        if not rejected:
            return IngestResult(committed=committed)
        self.stats.dropped["bad_span"] += len(errors)
        message = errors[0] if errors else "agent queue full"
        self.warn.warning("OTLP export: rejected %d span(s): %s", rejected, message)
        return IngestResult(rejected, message, committed=committed)

    def _over(self, e: OverBudget, door: Door | None) -> IngestResult:
        """A request whose spans did not fit what was free: busy, unless nothing else waited and the inbox was at
        its planned bound, in which case it can never be taken."""
        assert door is not None
        planned = self.ceiling() if self.ceiling is not None else door.max_bytes
        if door.bytes or door.max_bytes < planned:
            return self.busy()
        self.stats.dropped["oversize"] += 1
        why = (f"the request's spans take over {e.allowed} bytes in memory once decoded, more than this agent takes "
               f"in one request (its inbox, planned from memory.limit); export smaller batches (fewer spans per "
               f"request, e.g. OTEL_BSP_MAX_EXPORT_BATCH_SIZE) or raise memory.limit")
        self.warn.warning("OTLP export: refused a request as too large: %s", describe(why, 400))
        return IngestResult(too_large=why)


def decode_logged(kind: int, body: bytes, errors: list[str]) -> list[Span]:
    """The spans of a request read back from durable mode's log, decoded as its receiver decoded them."""
    if kind == JSON:
        from ..codec.otlp import parse_request_json, spans_from_request  # the protobuf runtime, only if needed

        return spans_from_request(parse_request_json(body), Source.SDK_OTLP, errors, None)
    return decode_export_request(body, Source.SDK_OTLP, errors, None)
