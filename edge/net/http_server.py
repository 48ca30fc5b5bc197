"""A small HTTP/1.1 server on asyncio streams, for the agent's loopback endpoints (OTLP/HTTP, /metrics).

The agent serves two routes to local clients; a general web framework cost about 9 MiB of resident memory on
a node whose whole budget may be 40. This server does what those endpoints need and bounds everything a
client controls: head size, body size (before and after Content-Encoding), connections, idle time.

- bodies with Content-Length or chunked transfer coding; `Expect: 100-continue` is answered;
- `Content-Encoding: gzip | deflate | identity`; the decoded size is bounded too (a compression bomb is a 413);
- keep-alive per HTTP/1.1 (HTTP/1.0 closes unless asked); pipelined requests are answered in order;
- anything malformed gets a 4xx and the connection is closed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["HttpServer", "Request", "Response"]

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # request line and headers
HEAD_TIMEOUT = 10.0  # s to send a whole head once started (slow-loris bound)
IDLE_TIMEOUT = 75.0  # s a keep-alive connection may sit idle between requests
BODY_TIMEOUT = 30.0  # s to send a whole body
MAX_CONNECTIONS = 16  # loopback clients: a few SDK exporters and a scraper; each may buffer ~64 KiB here
_DRAIN_MAX = 16 * 1024 * 1024  # an oversized body up to this is read and discarded before the 413

_REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
            429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable"}


@dataclass(slots=True)
class Request:
    """One request: method, target path (query split off), lower-cased headers, decoded body."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    remote: str
    wire_size: int = 0  # body bytes as received, before Content-Encoding was undone

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(slots=True)
class Response:
    """What a handler returns."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


class _Refused(Exception):
    """A request answered with an error status, after which the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpServer:
    """Routes (method, path) to handlers; `start()` binds, `port` is the bound port afterwards."""

    def __init__(self, host: str, port: int, routes: dict[tuple[str, str], Handler], max_body: int,
                 name: str = "http", on_refused: Callable[[int], None] | None = None) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self.max_body = max_body
        self.name = name
        self.on_refused = on_refused  # told the status of every request refused before reaching a handler
        self.connections = 0
        self.refused_connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and serve (OSError when the address is taken)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self.connections >= MAX_CONNECTIONS:
                self.refused_connections += 1
                # Take the head first: closing on unread bytes would reset the connection before the answer is read.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(MAX_HEAD), 1.0)
                await _send(writer, Response(503, b"too many connections\n", headers={"Retry-After": "1"}), close=True)
                return
            self.connections += 1
            try:
                await self._connection(reader, writer)
            finally:
                self.connections -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop() closes connections by cancelling them; asyncio would log a cancelled callback task
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        while True:
            try:
                first = await asyncio.wait_for(reader.read(1), IDLE_TIMEOUT)
            except asyncio.TimeoutError:
                return
            if not first:
                return
            try:
                method, target, version, headers = await asyncio.wait_for(_read_head(first, reader), HEAD_TIMEOUT)
                keep_alive = _keep_alive(version, headers)
                handler = self.routes.get((method, target.split("?", 1)[0]))
                if handler is None:
                    allowed = any(path == target.split("?", 1)[0] for _, path in self.routes)
                    raise _Refused(405 if allowed else 404, f"no {method} {target.split('?', 1)[0]} here")
                if headers.get("expect", "").lower() == "100-continue":
                    _check_length(headers, self.max_body)
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                raw = await asyncio.wait_for(_read_body(reader, headers, self.max_body), BODY_TIMEOUT)
                body = _decode(raw, headers.get("content-encoding", ""), self.max_body)
            except _Refused as e:
                self._refused(e.status)
                await _send(writer, Response(e.status, f"{e}\n".encode()), close=True)
                return
            except asyncio.TimeoutError:
                self._refused(408)
                await _send(writer, Response(408, b"request not received in time\n"), close=True)
                return
            path, _, query = target.partition("?")
            req = Request(method, path, query, headers, body, remote, len(raw))
            try:
                resp = await handler(req)
            except Exception:  # noqa: BLE001 - a handler bug answers 500; the server goes on
                log.exception("%s: handler for %s %s failed", self.name, method, path)
                resp = Response(500, b"internal error\n")
            await _send(writer, resp, close=not keep_alive)
            if not keep_alive:
                return


    def _refused(self, status: int) -> None:
        if self.on_refused is not None:
            self.on_refused(status)


async def _read_head(first: bytes, reader: asyncio.StreamReader) -> tuple[str, str, str, dict[str, str]]:
    try:
        raw = first + await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _Refused(431, f"request head over {MAX_HEAD} bytes") from None
    except asyncio.IncompleteReadError:
        raise ConnectionResetError from None
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes every byte; kept for clarity of intent
        raise _Refused(400, "undecodable request head") from None
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _Refused(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise _Refused(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        if key in headers:
            if key in ("content-length", "transfer-encoding", "content-encoding", "host"):
                raise _Refused(400, f"repeated {name} header")
            headers[key] += ", " + value
        else:
            headers[key] = value
    return parts[0], parts[1], parts[2], headers


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    conn = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in conn
    return "close" not in conn


def _check_length(headers: dict[str, str], max_body: int) -> int | None:
    length = headers.get("content-length")
    if length is None:
        return None
    if not length.isdigit():
        raise _Refused(400, "malformed Content-Length")
    n = int(length)
    if n > max_body:
        raise _Refused(413, f"request body of {n} bytes is over the limit of {max_body}")
    return n


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], max_body: int) -> bytes:
    te = headers.get("transfer-encoding", "").lower()
    if te:
        if te != "chunked":
            raise _Refused(501, f"transfer coding {te!r} is not supported")
        if "content-length" in headers:
            raise _Refused(400, "both Content-Length and Transfer-Encoding")
        return await _read_chunked(reader, max_body)
    try:
        n = _check_length(headers, max_body)
    except _Refused as e:
        length = int(headers.get("content-length", "0") or 0) if e.status == 413 else 0
        if length <= _DRAIN_MAX:
            # Read what the client is sending anyway, so that it sees the 413 instead of a reset connection.
            while length > 0:
                got = await reader.read(min(length, 65536))
                if not got:
                    break
                length -= len(got)
        raise
    if not n:
        return b""
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise ConnectionResetError from None


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    out = bytearray()
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
        except (asyncio.LimitOverrunError, ValueError):
            raise _Refused(400, "malformed chunk size") from None
        except asyncio.IncompleteReadError:
            raise ConnectionResetError from None
        if size < 0 or len(out) + size > max_body:
            raise _Refused(413, f"request body is over the limit of {max_body} bytes")
        try:
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, ignored
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise _Refused(400, "malformed chunk")
        except asyncio.IncompleteReadError:
            raise ConnectionResetError from None
        except asyncio.LimitOverrunError:
            raise _Refused(400, "malformed chunk trailer") from None


def _decode(raw: bytes, encoding: str, max_body: int) -> bytes:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return raw
    if enc in ("gzip", "x-gzip"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        d = zlib.decompressobj()
    else:
        raise _Refused(415, f"content encoding {encoding!r} is not supported (use gzip, deflate or none)")
    try:
        out = d.decompress(raw, max_body + 1)
    except zlib.error as e:
        raise _Refused(400, f"body is not valid {enc}: {e}") from None
    if len(out) > max_body or d.unconsumed_tail:
        raise _Refused(413, f"decompressed request body is over the limit of {max_body} bytes")
    if not d.eof or d.unused_data:
        # Only a whole stream has had its checksum verified: a cut one would hand the route a prefix of the body.
        raise _Refused(400, f"body is not valid {enc}: truncated or followed by other bytes")
    return out


async def _send(writer: asyncio.StreamWriter, resp: Response, close: bool) -> None:
    head = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Status')}",
            f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}"]
    head += [f"{k}: {v}" for k, v in resp.headers.items()]
    if close:
        head.append("Connection: close")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)
    await writer.drain()
