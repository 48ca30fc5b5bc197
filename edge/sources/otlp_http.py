"""Source: OTLP/HTTP receiver (`POST /v1/traces`, protobuf or JSON, optionally gzip) for local OpenTelemetry SDKs."""
from __future__ import annotations

import json
import logging

from aiohttp import web
from google.protobuf import json_format
from google.rpc import status_pb2

from ..codec.otlp import parse_request_json, parse_request_protobuf
from ..errors import DecodeError
from .otlp_common import OtlpIngest

__all__ = ["OtlpHttpReceiver"]

log = logging.getLogger(__name__)

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"


class OtlpHttpReceiver:
    """An aiohttp server speaking OTLP/HTTP for traces."""

    def __init__(self, ingest: OtlpIngest, host: str, port: int, max_request: int) -> None:
        self.ingest = ingest
        self.host = host
        self.port = port
        self.max_request = max_request
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve; the actual port is in `self.port` afterwards (useful with port 0)."""
        app = web.Application(client_max_size=self.max_request)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("OTLP/HTTP receiver listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _status(self, status: int, message: str, json_reply: bool) -> web.Response:
        # OTLP answers errors with a google.rpc.Status body in the request's encoding.
        st = status_pb2.Status(code=3 if status < 500 else 14, message=message)
        if json_reply:
            return web.Response(status=status, text=json.dumps({"code": st.code, "message": message}),
                                content_type=_JSON)
        return web.Response(status=status, body=st.SerializeToString(), content_type=_PROTOBUF)

    async def _traces(self, request: web.Request) -> web.Response:
        ctype = (request.content_type or "").lower()
        json_reply = ctype == _JSON
        if ctype not in (_PROTOBUF, _JSON):
            self.ingest.stats.dropped["bad_request"] += 1
            return self._status(415, f"unsupported content type {ctype!r}; use {_PROTOBUF} or {_JSON}", json_reply)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.ingest.stats.dropped["oversize"] += 1
            return self._status(413, f"request body over sources.otlp.max_request ({self.max_request} bytes)", json_reply)
        # aiohttp already undid any Content-Encoding (gzip, deflate), and client_max_size bounds the expanded
        # size, so a compression bomb ends as a 413 above.
        wire_size = len(body)
        try:
            req = parse_request_json(body) if json_reply else parse_request_protobuf(body)
        except DecodeError as e:
            self.ingest.stats.dropped["bad_request"] += 1
            self.ingest.warn.warning("OTLP/HTTP: refused an undecodable request from %s: %s", request.remote, e)
            return self._status(400, str(e), json_reply)
        result = self.ingest.ingest(req, wire_size)
        if result.busy:
            resp = self._status(503, "agent is busy; retry later", json_reply)
            resp.headers["Retry-After"] = "1"
            return resp
        if json_reply:
            return web.Response(text=json_format.MessageToJson(result.response), content_type=_JSON)
        return web.Response(body=result.response.SerializeToString(), content_type=_PROTOBUF)

