"""Source: OTLP/HTTP receiver (`POST /v1/traces`, protobuf or JSON, optionally gzip) for local OpenTelemetry SDKs."""
from __future__ import annotations

import json
import logging

from google.protobuf import json_format
from google.rpc import status_pb2

from ..codec.otlp import parse_request_json, parse_request_protobuf
from ..errors import DecodeError
from ..http_server import HttpServer, Request, Response
from .otlp_common import OtlpIngest

__all__ = ["OtlpHttpReceiver"]

log = logging.getLogger(__name__)

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"


class OtlpHttpReceiver:
    """OTLP/HTTP for traces on the agent's own small HTTP server."""

    def __init__(self, ingest: OtlpIngest, host: str, port: int, max_request: int) -> None:
        self.ingest = ingest
        self.host = host
        self.port = port
        self.max_request = max_request
        self._server: HttpServer | None = None

    async def start(self) -> None:
        """Bind and serve; the actual port is in `self.port` afterwards (useful with port 0)."""
        server = HttpServer(self.host, self.port, {("POST", "/v1/traces"): self._traces}, self.max_request,
                            name="OTLP/HTTP receiver", on_refused=self._refused)
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
        st = status_pb2.Status(code=3 if status < 500 else 14, message=message)
        if json_reply:
            return Response(status, json.dumps({"code": st.code, "message": message}).encode(), _JSON)
        return Response(status, st.SerializeToString(), _PROTOBUF)

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
        if not json_reply and not self.ingest.room_for(len(body)):
            self.ingest.stats.requests += 1
            self.ingest.busy()
            return self._busy(json_reply)  # refused before the protobuf is even parsed
        try:
            req = parse_request_json(body) if json_reply else parse_request_protobuf(body)
        except DecodeError as e:
            self.ingest.stats.dropped["bad_request"] += 1
            self.ingest.warn.warning("OTLP/HTTP: refused an undecodable request from %s: %s", request.remote, e)
            return self._status(400, str(e), json_reply)
        result = self.ingest.ingest(req, len(body))
        if result.busy:
            return self._busy(json_reply)
        if json_reply:
            return Response(200, json_format.MessageToJson(result.response).encode(), _JSON)
        return Response(200, result.response.SerializeToString(), _PROTOBUF)
