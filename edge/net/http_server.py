"""A small HTTP/1.1 server on asyncio streams, for the agent's loopback endpoints (OTLP/HTTP, /metrics).

The agent serves two routes to local clients; a general web framework cost about 9 MiB of resident memory on
a node whose whole budget may be 40. This server does what those endpoints need and bounds everything a
client controls: head size, body size (before and after Content-Encoding), the bytes held, connections, time.

- bodies with Content-Length or chunked transfer coding; `Expect: 100-continue` is answered;
- body bytes are taken from a `RequestBudget` (edge/net/budget.py, bounded by the memory governor) before they
  are read, a chunk at a time, and inflated bytes before they are inflated: what all connections hold together
  stays under the budget plus one request; a request that waits too long for room is answered 503 (retryable);
- `Content-Encoding: gzip | deflate | identity`, inflated in steps into a bounded buffer; the decoded size is
  bounded too (a compression bomb is a 413);
- keep-alive per HTTP/1.1 (HTTP/1.0 closes unless asked); pipelined requests are answered in order;
- connection slots are reclaimed from idle and slow peers before a new one is refused: when all are taken, the
  longest-idle keep-alive connection is closed first, then the oldest head still arriving after SLOW_HEAD, then
  the oldest body still arriving after SLOW_BODY; only when every connection is busy with a live request is the
  new one answered 503;
- anything malformed (a head that breaks RFC 9112's grammar: control characters, a Content-Length or chunk size
  that is not plain digits) gets a 4xx and the connection is closed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .budget import RequestBudget

__all__ = ["HttpServer", "Request", "Response", "HttpServerStats"]

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # request line and headers
HEAD_TIMEOUT = 10.0  # s to send a whole head once started (slow-loris bound)
IDLE_TIMEOUT = 75.0  # s a keep-alive connection may sit idle between requests
BODY_TIMEOUT = 30.0  # s to send a whole body (waiting for room in the budget included)
MAX_CONNECTIONS = 32  # loopback clients: SDK exporters and a scraper; idle and slow ones make room (see above)
SLOW_HEAD = 1.0  # s: a head still arriving after this is no local client's, and first to go when slots are short
SLOW_BODY = 5.0  # s: the same for a body
_READ_SIZE = 32 * 1024  # bytes asyncio reads from a socket at once
_CHUNK = 16 * 1024  # body bytes taken from the budget per read: what a stalled client holds at most
_INFLATE_STEP = 64 * 1024  # inflated bytes taken from the budget per step
_DRAIN_MAX = 16 * 1024 * 1024  # an oversized body up to this is read and discarded before the 413
_DRAIN_TIME = 2.0  # s spent discarding at most

_REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
            429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable"}
# RFC 9110 5.6.2: a field name is a token; a value has no control characters but horizontal tab.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


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


@dataclass(slots=True)
class HttpServerStats:
    """Connections refused, and slots reclaimed from idle and slow peers, by kind."""

    refused_connections: int = 0
    reclaimed: dict[str, int] = field(default_factory=lambda: {"idle": 0, "slow_head": 0, "slow_body": 0,
                                                               "stalled": 0})
    busy: int = 0  # requests answered 503 because no room came in the budget in time


Handler = Callable[[Request], Awaitable[Response]]


class _Refused(Exception):
    """A request answered with an error status, after which the connection closes."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _busy() -> _Refused:
    return _Refused(503, "the agent holds as many requests as its memory budget allows; retry later",
                    {"Retry-After": "1"})


class _Conn:
    """One connection's slot: what it is doing since when, and how to close it to make room."""

    __slots__ = ("writer", "phase", "since")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.phase = "idle"  # idle (before a request) | head | body | busy (handled, answering)
        self.since = time.monotonic()

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.since = time.monotonic()

    def close(self) -> None:
        """Close the connection from outside its task (its reads end, the task unwinds)."""
        transport = self.writer.transport
        if self.phase == "idle":
            transport.close()  # a clean FIN: a keep-alive client sees it before its next request
        else:
            transport.abort()


class HttpServer:
    """Routes (method, path) to handlers; `start()` binds, `port` is the bound port afterwards.

    `budget`: the bytes all requests may hold (shared with the other receivers); a private one of `max_body` bytes
    when not given.
    """

    def __init__(self, host: str, port: int, routes: dict[tuple[str, str], Handler], max_body: int,
                 name: str = "http", on_refused: Callable[[int], None] | None = None,
                 budget: RequestBudget | None = None) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self.max_body = max_body
        self.name = name
        self.on_refused = on_refused  # told the status of every request refused before reaching a handler
        self.budget = budget if budget is not None else RequestBudget(max(max_body, 64 * 1024))
        self.stats = HttpServerStats()
        self._conns: dict[_Conn, None] = {}  # connections holding a slot, oldest first
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        """Connections holding a slot now."""
        return len(self._conns)

    @property
    def refused_connections(self) -> int:
        """Connections answered 503 because every slot was busy with a live request."""
        return self.stats.refused_connections

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
        conn = _Conn(writer)
        # asyncio reads up to 256 KiB from a socket at once into the reader, before any budget is asked: 32
        # connections sending bodies would hold 8 MiB outside it. Its selector transport reads `max_size` at most.
        if hasattr(writer.transport, "max_size"):
            writer.transport.max_size = _READ_SIZE  # type: ignore[attr-defined]
        try:
            if len(self._conns) >= MAX_CONNECTIONS and not self._reclaim_slot():
                self.stats.refused_connections += 1
                # Take the head first: closing on unread bytes would reset the connection before the answer is read.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(MAX_HEAD), 1.0)
                await _send(writer, Response(503, b"too many connections\n", headers={"Retry-After": "1"}), close=True)
                return
            self._conns[conn] = None
            try:
                await self._connection(conn, reader, writer)
            finally:
                self._conns.pop(conn, None)
                self.budget.release(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop() closes connections by cancelling them; asyncio would log a cancelled callback task
        except Exception:  # noqa: BLE001 - whatever a client sends ends its connection, never the server
            log.exception("%s: a connection failed", self.name)
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _reclaim_slot(self) -> bool:
        """Close the connection that least deserves its slot (see the module docstring); False if none may go."""
        now = time.monotonic()
        victim: _Conn | None = None
        for phase, after in (("idle", 0.0), ("head", SLOW_HEAD), ("body", SLOW_BODY)):
            candidates = [c for c in self._conns if c.phase == phase and now - c.since >= after]
            if candidates:
                victim = min(candidates, key=lambda c: c.since)
                self.stats.reclaimed["slow_" + phase if phase != "idle" else "idle"] += 1
                break
        if victim is None:
            return False
        del self._conns[victim]
        self.budget.release(victim)
        victim.close()
        return True

    def _evicted(self, conn: _Conn) -> Callable[[], None]:
        def evict() -> None:  # the budget reclaims a request that stalled half-way while others wait for room
            self.stats.reclaimed["stalled"] += 1
            self._conns.pop(conn, None)
            conn.close()
        return evict

    async def _connection(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        budget = self.budget
        while True:
            conn.enter("idle")
            try:
                first = await asyncio.wait_for(reader.read(1), IDLE_TIMEOUT)
            except asyncio.TimeoutError:
                return
            if not first:
                return
            conn.enter("head")
            try:
                method, target, version, headers = await asyncio.wait_for(_read_head(first, reader), HEAD_TIMEOUT)
                keep_alive = _keep_alive(version, headers)
                handler = self.routes.get((method, target.split("?", 1)[0]))
                if handler is None:
                    allowed = any(path == target.split("?", 1)[0] for _, path in self.routes)
                    raise _Refused(405 if allowed else 404, f"no {method} {target.split('?', 1)[0]} here")
                conn.enter("body")
                budget.join(conn, self._evicted(conn))
                if headers.get("expect", "").lower() == "100-continue":
                    _check_length(headers, self.max_body)
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                deadline = time.monotonic() + BODY_TIMEOUT
                raw = await _read_body(reader, headers, self.max_body, budget, conn, deadline)
                body = await _decode(raw, headers.get("content-encoding", ""), self.max_body, budget, conn, deadline)
                budget.settle(conn)
            except _Refused as e:
                if e.status == 503:
                    self.stats.busy += 1
                self._refused(e.status)
                await _send(writer, Response(e.status, f"{e}\n".encode(), headers=e.headers), close=True)
                return
            except asyncio.TimeoutError:
                self._refused(408)
                await _send(writer, Response(408, b"request not received in time\n"), close=True)
                return
            conn.enter("busy")
            path, _, query = target.partition("?")
            req = Request(method, path, query, headers, body, remote, len(raw))
            del raw, body
            try:
                resp = await handler(req)
            except Exception:  # noqa: BLE001 - a handler bug answers 500; the server goes on
                log.exception("%s: handler for %s %s failed", self.name, method, path)
                resp = Response(500, b"internal error\n")
            del req
            budget.release(conn)  # the request's bytes were the handler's; they are gone with it
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
    text = raw.decode("latin-1")  # every byte decodes; the grammar below refuses what RFC 9112 does not allow
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/") \
            or not _TOKEN.fullmatch(parts[0]) or _BAD_VALUE.search(parts[1]) or len(parts[2]) != 8:
        raise _Refused(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _Refused(400, "malformed header line")
        if _BAD_VALUE.search(value):
            raise _Refused(400, f"control character in the {name[:64]} header")
        key = name.lower()
        value = value.strip(" \t")
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
    if not _DIGITS.fullmatch(length):  # str.isdigit() would take '²', which int() then refuses
        raise _Refused(400, "malformed Content-Length")
    n = int(length)
    if n > max_body:
        raise _Refused(413, f"request body of {n} bytes is over the limit of {max_body} bytes")
    return n


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], max_body: int, budget: RequestBudget,
                     holder: object, deadline: float) -> bytes:
    te = headers.get("transfer-encoding", "").lower()
    if te:
        if te != "chunked":
            raise _Refused(501, f"transfer coding {te[:64]!r} is not supported")
        if "content-length" in headers:
            raise _Refused(400, "both Content-Length and Transfer-Encoding")
        return await _read_chunked(reader, max_body, budget, holder, deadline)
    try:
        n = _check_length(headers, max_body)
    except _Refused as e:
        if e.status == 413 and int(headers["content-length"]) <= _DRAIN_MAX:
            # Read what the client is sending anyway, so that it sees the 413 instead of a reset connection.
            await _discard(reader, int(headers["content-length"]))
        raise
    if not n:
        return b""
    out = bytearray()
    await _read_into(out, reader, n, budget, holder, deadline)
    return await _as_bytes(out, budget, holder, deadline)


async def _read_into(out: bytearray, reader: asyncio.StreamReader, n: int, budget: RequestBudget, holder: object,
                     deadline: float) -> None:
    """Append exactly `n` body bytes to `out`, each chunk taken from the budget before it is read."""
    while n > 0:
        want = min(_CHUNK, n)
        if not await budget.wait_take(holder, want, deadline - time.monotonic()):
            if n <= _DRAIN_MAX:
                await _discard(reader, n)  # read and dropped, so that the client sees the 503 and not a reset
            raise _busy()
        try:
            got = await asyncio.wait_for(reader.read(want), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise asyncio.TimeoutError from None
        if not got:
            raise ConnectionResetError
        budget.give_back(holder, want - len(got))
        out += got
        n -= len(got)


async def _as_bytes(out: bytearray, budget: RequestBudget, holder: object, deadline: float) -> bytes:
    """`out` as bytes: the copy is taken from the budget too, and the bytearray's share given back after."""
    if not await budget.wait_take(holder, len(out), deadline - time.monotonic()):
        raise _busy()
    data = bytes(out)
    n = len(out)
    del out[:]
    budget.give_back(holder, n)
    return data


async def _discard(reader: asyncio.StreamReader, n: int) -> None:
    deadline = time.monotonic() + _DRAIN_TIME
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
        while n > 0 and time.monotonic() < deadline:
            got = await asyncio.wait_for(reader.read(min(n, 65536)), max(0.0, deadline - time.monotonic()))
            if not got:
                break
            n -= len(got)


def _chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (RFC 9112 7.1: hex digits, then optional extensions); strictly hex."""
    size, _, _ext = line[:-2].partition(b";")
    size = size.rstrip(b" \t")
    if not _HEX.fullmatch(size):
        raise _Refused(400, "malformed chunk size")
    return int(size, 16)


async def _read_chunked(reader: asyncio.StreamReader, max_body: int, budget: RequestBudget, holder: object,
                        deadline: float) -> bytes:
    out = bytearray()
    while True:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), max(0.0, deadline - time.monotonic()))
        except asyncio.LimitOverrunError:
            raise _Refused(400, "malformed chunk size") from None
        except asyncio.IncompleteReadError:
            raise ConnectionResetError from None
        size = _chunk_size(line)
        if len(out) + size > max_body:
            raise _Refused(413, f"request body is over the limit of {max_body} bytes")
        try:
            if size == 0:
                while (await asyncio.wait_for(reader.readuntil(b"\r\n"),
                                              max(0.0, deadline - time.monotonic()))) != b"\r\n":
                    pass  # trailers, ignored
                return await _as_bytes(out, budget, holder, deadline)
            await _read_into(out, reader, size, budget, holder, deadline)
            if await asyncio.wait_for(reader.readexactly(2), max(0.0, deadline - time.monotonic())) != b"\r\n":
                raise _Refused(400, "malformed chunk")
        except asyncio.IncompleteReadError:
            raise ConnectionResetError from None
        except asyncio.LimitOverrunError:
            raise _Refused(400, "malformed chunk trailer") from None


async def _decode(raw: bytes, encoding: str, max_body: int, budget: RequestBudget, holder: object,
                  deadline: float) -> bytes:
    """Undo the Content-Encoding in steps, each taken from the budget before it is inflated."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return raw
    if enc in ("gzip", "x-gzip"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        d = zlib.decompressobj()
    else:
        raise _Refused(415, f"content encoding {encoding[:64]!r} is not supported (use gzip, deflate or none)")
    pieces: list[bytes] = []
    size = 0
    tail = raw
    while True:
        step = min(_INFLATE_STEP, max_body + 1 - size)
        if not await budget.wait_take(holder, step, deadline - time.monotonic()):
            raise _busy()
        try:
            piece = d.decompress(tail, step)
        except zlib.error as e:
            raise _Refused(400, f"body is not valid {enc}: {e}") from None
        budget.give_back(holder, step - len(piece))
        size += len(piece)
        if size > max_body:
            raise _Refused(413, f"decompressed request body is over the limit of {max_body} bytes")
        if piece:
            pieces.append(piece)
        tail = d.unconsumed_tail
        if d.eof or (not tail and not piece):
            break
    if not d.eof or d.unused_data:
        # Only a whole stream has had its checksum verified: a cut one would hand the route a prefix of the body.
        raise _Refused(400, f"body is not valid {enc}: truncated or followed by other bytes")
    # The joined body is taken too; the pieces' share and the wire bytes are given back once it exists.
    if not await budget.wait_take(holder, size, deadline - time.monotonic()):
        raise _busy()
    body = b"".join(pieces)
    pieces.clear()
    budget.give_back(holder, size + len(raw))
    return body


async def _send(writer: asyncio.StreamWriter, resp: Response, close: bool) -> None:
    head = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Status')}",
            f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}"]
    head += [f"{k}: {v}" for k, v in resp.headers.items()]
    if close:
        head.append("Connection: close")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)
    await writer.drain()
