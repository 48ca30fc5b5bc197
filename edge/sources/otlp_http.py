"""Source: OTLP/HTTP receiver (`POST /v1/traces`, protobuf or JSON, optionally gzip) for local OpenTelemetry SDKs.

Protobuf bodies are read by codec/otlp_wire.py. JSON bodies go through the official OTLP classes and protobuf's
JSON mapping, loaded on the first JSON request only: SDKs on a node send protobuf, and the protobuf runtime
would cost every node ~4 MiB it does not use.
"""
from __future__ import annotations

import json
import logging

from ..codec.otlp_wire import decode_export_request, encode_status
from ..errors import DecodeError, HelixError
from ..net.budget import RequestBudget
from ..net.http_server import HttpServer, Request, Response
from ..model import Source, Span
from .otlp_common import JSON, PROTOBUF, Decode, OtlpIngest

__all__ = ["OtlpHttpReceiver"]

log = logging.getLogger(__name__)

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"


class OtlpHttpReceiver:
    """OTLP/HTTP for traces on the agent's own small HTTP server."""

    def __init__(self, ingest: OtlpIngest, host: str, port: int, max_request: int,
                 budget: RequestBudget | None = None) -> None:
        self.ingest = ingest
        self.host = host
        self.port = port
        self.max_request = max_request
        self.budget = budget
        self._server: HttpServer | None = None

    @property
    def server(self) -> HttpServer | None:
        """The HTTP server, once started."""
        return self._server

    async def start(self) -> None:
        """Bind and serve; the actual port is in `self.port` afterwards (useful with port 0)."""
        server = HttpServer(self.host, self.port, {("POST", "/v1/traces"): self._traces}, self.max_request,
                            name="OTLP/HTTP receiver", on_refused=self._refused, budget=self.budget)
        await server.start()
        self._server, self.port = server, server.port
        log.info("OTLP/HTTP receiver listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    def _refused(self, status: int) -> None:
        self.ingest.stats.dropped["oversize" if status == 413 else "bad_request"] += 1

    def _status(self, status: int, message: str, json_reply: bool) -> Response:
        # OTLP answers errors with a google.rpc.Status body in the request's encoding.
        code = 8 if status == 413 else 3 if status < 500 else 14  # RESOURCE_EXHAUSTED, INVALID_ARGUMENT, UNAVAILABLE
        if json_reply:
            return Response(status, json.dumps({"code": code, "message": message}).encode(), _JSON)
        return Response(status, encode_status(code, message), _PROTOBUF)

    def _busy(self, json_reply: bool) -> Response:
        resp = self._status(503, "agent is busy; retry later", json_reply)
        resp.headers["Retry-After"] = "1"
        return resp

    async def _traces(self, request: Request) -> Response:
        ctype = request.content_type
        json_reply = ctype == _JSON
        if ctype not in (_PROTOBUF, _JSON):
            self.ingest.stats.dropped["bad_request"] += 1
            return self._status(415, f"unsupported content type {ctype!r}; use {_PROTOBUF} or {_JSON}", json_reply)
        # The server already undid any Content-Encoding (gzip, deflate) and bounded the body before and after
        # decoding by sources.otlp.max_request, so a compression bomb ended as a 413 there.
        body = request.body
        decode = _json_spans(body) if json_reply else _protobuf_spans(body)
        try:
            result = self.ingest.ingest(decode, len(body), JSON if json_reply else PROTOBUF, body)
        except DecodeError as e:
            self.ingest.warn.warning("OTLP/HTTP: refused an undecodable request from %s: %s", request.remote, e)
            return self._status(400, str(e), json_reply)
        if result.committed is not None:
            try:
                await result.committed  # durable mode: success only once the request is on disk
            except HelixError:
                return self._busy(json_reply)  # the spans may be in the pipeline already: a retry adds duplicates
        if result.busy:
            return self._busy(json_reply)
        if result.too_large:
            return self._status(413, result.too_large, json_reply)  # not retryable (OTLP/HTTP: only 429, 502-504)
        if json_reply:
            return Response(200, result.json(), _JSON)
        return Response(200, result.protobuf(), _PROTOBUF)


def _protobuf_spans(body: bytes) -> Decode:
    return lambda errors, cap: decode_export_request(body, Source.SDK_OTLP, errors, cap)


def _json_spans(body: bytes) -> Decode:
    def decode(errors: list[str], cap: int | None) -> list[Span]:
        from ..codec.otlp import parse_request_json, spans_from_request  # the protobuf runtime, first JSON request

        return spans_from_request(parse_request_json(body), Source.SDK_OTLP, errors, cap)

    return decode
