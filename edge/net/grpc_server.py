"""A small gRPC server (unary methods over cleartext HTTP/2) on asyncio, for the agent's OTLP/gRPC receiver.

grpcio's server cost the agent about 12 MiB of resident memory, a quarter of a device's budget, and it takes
every call whole into its C core before the application sees it, outside any bound the agent keeps. OTLP/gRPC
needs one unary method; this server (on the pure-Python `h2` protocol stack) serves unary methods and bounds what
a client controls with HTTP/2 flow control, which every gRPC client obeys:

- A stream may have at most `STREAM_WINDOW` bytes in flight. Its window is reopened as its bytes arrive only while
  the bytes held in unfinished requests stay under `max_buffered`; otherwise the client waits. The oldest
  unfinished request is always let through, so the server cannot deadlock on its own bound. Held bytes stay under
  `max_buffered` + streams x `STREAM_WINDOW` + one message.
- The declared length of a message is judged on its 5-byte prefix, before the body is buffered: over
  `max_message` is RESOURCE_EXHAUSTED.
- A method may say it is not `ready` for a request (the agent's pipeline is full). The request then waits, in
  arrival order, with its bytes still counted (so other clients' windows close too) until the method is ready, or
  for `max_wait` seconds, after which it is refused UNAVAILABLE (clients retry with backoff). Waiting rather than
  refusing at once spares a burst of clients a retry storm.
- `grpc-encoding: gzip | deflate | identity`; the decoded size is bounded too.
- Connections are bounded; a stream that stalls and a connection that idles are closed.
Malformed frames end the connection (GOAWAY), counted, never the process.
"""
from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ..errors import HelixError
from .retry import RateLimitedLog

__all__ = ["GrpcServer", "GrpcStatus", "Method", "Call", "Code"]

log = logging.getLogger(__name__)

# Bytes a client may send on a stream before the server reopens its window: the HTTP/2 default, so that a typical
# export (tens of KiB) arrives in one go; smaller windows left more requests half-received at once, not fewer.
STREAM_WINDOW = 65535
# Concurrent calls per connection: h2 enforces this value before the client acknowledges our settings too, so a
# client opening streams early never sees its connection torn down over a limit that changed under it.
MAX_STREAMS = 100
MAX_CONNECTIONS = 32  # loopback clients: a few SDK exporters
# Closed streams a connection remembers, so frames still in flight after a close get a stream error, not a connection
# error. In-flight frames outlive a close by a round trip, so a few times the concurrent streams is plenty; h2's own
# bound (65,536) made a long-lived exporter's connection creep by megabytes (docs/benchmarks.md, memory budget).
CLOSED_STREAMS_REMEMBERED = 4 * MAX_STREAMS
STREAM_TIMEOUT = 30.0  # s a started request may go without a byte arriving
IDLE_TIMEOUT = 300.0  # s a connection may sit without calls; clients reconnect transparently after GOAWAY
_CONNECTION_WINDOW = 2**31 - 1  # streams are the bound; the shared window must never stall the oldest stream
_SWEEP = 5.0
_WAIT_POLL = 0.01  # s between looks at whether waiting requests fit now
_PREFIX = 5  # compressed flag and 4-byte big-endian length before every gRPC message
_ACCEPT_ENCODING = "identity,deflate,gzip"


class Code:
    """The gRPC status codes the server sends."""

    OK = 0
    INVALID_ARGUMENT = 3
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class GrpcStatus(Exception):
    """Raised by a method to end its call with a non-OK status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Call:
    """What a method knows about its call besides the request bytes."""

    method: str
    metadata: dict[str, str]
    peer: str


@dataclass(slots=True)
class Method:
    """A unary method: `handle(request, call)` returns the serialized response or raises GrpcStatus.

    `ready(length)`, if given, is asked before `handle` with the request's wire length; while it says no, the
    request waits (see the module docstring), then `refused()` is called and the client gets UNAVAILABLE.
    """

    handle: Callable[[bytes, Call], bytes]
    ready: Callable[[int], bool] | None = None
    refused: Callable[[Call], None] | None = None


@dataclass(slots=True)
class GrpcServerStats:
    """Counters of the transport itself (methods keep their own)."""

    connections: int = 0
    calls: int = 0
    refused_connections: int = 0
    protocol_errors: int = 0
    stalled_streams: int = 0
    deferred_windows: int = 0  # times a stream's window stayed closed because the server held too much
    buffered_peak: int = 0  # most bytes held in unfinished requests at once
    waited: int = 0  # requests that waited for their method to be ready
    refused_busy: int = 0  # requests refused UNAVAILABLE after waiting max_wait


class GrpcServer:
    """Routes `/package.Service/Method` paths to unary methods; `start()` binds, `port` is the bound port after."""

    def __init__(self, host: str, port: int, methods: dict[str, Method], max_message: int,
                 max_buffered: int = 1 << 20, name: str = "gRPC", max_wait: float = 2.0) -> None:
        self.host = host
        self.port = port
        self.methods = methods
        self.max_message = max_message
        self.max_buffered = max_buffered
        self.name = name
        self.max_wait = max_wait
        self.stats = GrpcServerStats()
        self._waiting: dict[tuple[_Connection, int], tuple[_Stream, bytes, float]] = {}  # complete, not yet ready
        self._waker: asyncio.Handle | None = None
        self.buffered = 0  # bytes held in unfinished requests, across connections
        self._streams: dict[tuple[_Connection, int], _Stream] = {}  # unfinished requests, oldest first
        self._connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.warn = RateLimitedLog(log)

    async def start(self) -> None:
        """Bind and serve."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port)
        except OSError as e:
            where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
            raise HelixError(f"cannot listen for {self.name} on {where}: {e.strerror or e}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        """Stop listening and close every connection with GOAWAY."""
        if self._waker is not None:
            self._waker.cancel()
            self._waker = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for c in list(self._connections):
            c.close(h2.errors.ErrorCodes.NO_ERROR)

    # ------------------------------------------------------------------------------------ waiting for room

    def _run_or_wait(self, stream: _Stream, body: bytes) -> None:
        ready = stream.method.ready
        if not self._waiting and (ready is None or ready(len(body))):
            self._run(stream, body)
            return
        self.stats.waited += 1
        # While it waits it holds the decoded message, larger than its wire bytes when it came compressed.
        extra = max(0, len(body) - stream.held)
        stream.held += extra
        self.buffered += extra
        self._waiting[(stream.conn, stream.id)] = (stream, body, time.monotonic() + self.max_wait)
        self._wake()

    def _wake(self) -> None:
        if self._waker is None and self._waiting:
            self._waker = asyncio.get_running_loop().call_later(_WAIT_POLL, self._retry)

    def poke(self) -> None:
        """Room may have appeared (the consumer took data): look at the waiting requests now, not at the next poll.

        Without this a consumer that emptied its queue sat idle until the poll, a third of the time in a burst.
        """
        if self._waiting:
            if self._waker is not None:
                self._waker.cancel()
            self._waker = asyncio.get_running_loop().call_soon(self._retry)

    def _retry(self) -> None:
        self._waker = None
        now = time.monotonic()
        touched: set[_Connection] = set()
        # Oldest first; a request that still does not fit keeps the ones behind it waiting (no overtaking).
        while self._waiting:
            key, (stream, body, deadline) = next(iter(self._waiting.items()))
            ready = stream.method.ready
            if ready is None or ready(len(body)):
                del self._waiting[key]
                self._run(stream, body)
            elif now >= deadline:
                del self._waiting[key]
                self.stats.refused_busy += 1
                if stream.method.refused is not None:
                    stream.method.refused(stream.call)
                stream.conn._finish(stream, Code.UNAVAILABLE, "agent is busy; retry later")
            else:
                break
            touched.add(stream.conn)
        for c in touched:
            c.flush()
        self._wake()

    def _run(self, stream: _Stream, body: bytes) -> None:
        # The request's bytes leave the server's account before the method runs: from here they are the method's.
        self._release(stream)
        stream.conn._answer(stream, body)

    # ------------------------------------------------------------------------------------ buffer accounting

    def _may_reopen(self, stream: _Stream) -> bool:
        return self.buffered <= self.max_buffered or next(iter(self._streams.values()), None) is stream

    def _release(self, stream: _Stream) -> None:
        self._waiting.pop((stream.conn, stream.id), None)
        if self._streams.pop((stream.conn, stream.id), None) is None:
            return
        self.buffered -= stream.held
        stream.held = 0
        # Reopen the windows that were held back, oldest first, while the bound allows.
        touched: set[_Connection] = set()
        for s in self._streams.values():
            if s.deferred and self._may_reopen(s):
                s.conn.ack(s, s.deferred)
                s.deferred = 0
                touched.add(s.conn)
            elif s.deferred:
                break
        for c in touched:
            c.flush()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP)
            now = time.monotonic()
            for s in [s for s in self._streams.values() if now - s.last > STREAM_TIMEOUT]:
                self.stats.stalled_streams += 1
                s.conn.reset(s, h2.errors.ErrorCodes.CANCEL)
            for c in [c for c in self._connections if not c.streams and now - c.last > IDLE_TIMEOUT]:
                c.close(h2.errors.ErrorCodes.NO_ERROR)


class _Stream:
    __slots__ = ("conn", "id", "method", "call", "encoding", "buf", "length", "held", "deferred", "last")

    def __init__(self, conn: _Connection, stream_id: int, method: Method, call: Call, encoding: str) -> None:
        self.conn = conn
        self.id = stream_id
        self.method = method
        self.call = call
        self.encoding = encoding
        self.buf = bytearray()
        self.length = -1  # declared message length, once the prefix is in
        self.held = 0  # bytes counted in the server's `buffered`
        self.deferred = 0  # flow-controlled bytes received but not yet handed back to the client
        self.last = time.monotonic()


class _H2Connection(h2.connection.H2Connection):
    MAX_CLOSED_STREAMS = CLOSED_STREAMS_REMEMBERED


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.h2 = _H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.peer = "unknown"
        self.last = time.monotonic()
        self._first = True

    # ---------------------------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = transport  # type: ignore[assignment]  # a stream transport: create_server made it
        srv = self.server
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"ipv{6 if ':' in peer[0] else 4}:{peer[0]}:{peer[1]}"
        if len(srv._connections) >= MAX_CONNECTIONS:
            srv.stats.refused_connections += 1
            srv.warn.warning("%s: refused a connection from %s: %d connections open", srv.name, self.peer,
                             MAX_CONNECTIONS)
            transport.abort()
            return
        srv._connections.add(self)
        srv.stats.connections += 1

    def data_received(self, data: bytes) -> None:  # noqa: D102
        if self._first:
            # The server preface waits for the client's first bytes, so that an HTTP/1 client (curl without
            # --http2-prior-knowledge, a browser) gets a readable answer instead of binary frames.
            self._first = False
            if not data.startswith(b"PRI ") and data[:8].split(b" ", 1)[0] in (b"GET", b"POST", b"PUT", b"HEAD"):
                self._not_http2()
                return
            self.h2.initiate_connection()
            # Applied by h2 once the client acknowledges them; until then the protocol defaults hold on both sides.
            self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                                     h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                                     h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16 * 1024})
            self.h2.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        self.last = time.monotonic()
        try:
            events = self.h2.receive_data(data)
        except (h2.exceptions.ProtocolError, UnicodeDecodeError) as e:  # h2 decodes header values as UTF-8
            self.server.stats.protocol_errors += 1
            self.server.warn.warning("%s: closed a connection from %s: not valid HTTP/2 (%s)", self.server.name,
                                     self.peer, e)
            self.flush()
            self._teardown()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev.stream_id, ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                self._data(ev.stream_id, ev.data, ev.flow_controlled_length)
            elif isinstance(ev, h2.events.StreamEnded):
                self._ended(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self._forget(ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.flush()
                self._teardown()
                return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self._teardown()

    # ---------------------------------------------------------------------------------- HTTP/2 events

    def _request(self, stream_id: int, headers: list[tuple[str, str]]) -> None:
        h = dict(headers)
        path, srv = h.get(":path", ""), self.server
        if h.get(":method") != "POST" or not h.get("content-type", "").startswith("application/grpc"):
            # Not a gRPC call at all: a plain HTTP answer says so to curl and browsers.
            status = "405" if h.get(":method") != "POST" else "415"
            self._send(stream_id, [(":status", status), ("content-type", "text/plain")],
                       f"this port speaks OTLP/gRPC; {path} needs a gRPC POST\n".encode())
            return
        method = srv.methods.get(path)
        if method is None:
            self._trailers_only(stream_id, Code.UNIMPLEMENTED, f"unknown method {path}")
            return
        encoding = h.get("grpc-encoding", "identity")
        if encoding not in ("identity", "gzip", "deflate"):
            self._trailers_only(stream_id, Code.UNIMPLEMENTED, f"grpc-encoding {encoding} is not supported")
            return
        srv.stats.calls += 1
        metadata = {k: v for k, v in headers if not k.startswith(":")}
        stream = _Stream(self, stream_id, method, Call(path, metadata, self.peer), encoding)
        self.streams[stream_id] = stream
        srv._streams[(self, stream_id)] = stream

    def _data(self, stream_id: int, data: bytes, flow: int) -> None:
        stream, srv = self.streams.get(stream_id), self.server
        if stream is None:  # answered early (refused); its remaining bytes are not wanted
            self.h2.acknowledge_received_data(flow, stream_id)
            return
        stream.last = time.monotonic()
        stream.buf += data
        stream.held += len(data)
        srv.buffered += len(data)
        if srv.buffered > srv.stats.buffered_peak:
            srv.stats.buffered_peak = srv.buffered
        if stream.length < 0 and len(stream.buf) >= _PREFIX:
            stream.length = int.from_bytes(stream.buf[1:5], "big")
            if stream.length > srv.max_message:
                self._finish(stream, Code.RESOURCE_EXHAUSTED,
                             f"request of {stream.length} bytes is over the {srv.max_message}-byte limit")
                return
        if stream.length >= 0 and len(stream.buf) > _PREFIX + stream.length:
            self._finish(stream, Code.INVALID_ARGUMENT, "more than one request message in a unary call")
            return
        if srv._may_reopen(stream):
            self.ack(stream, flow + stream.deferred)
            stream.deferred = 0
        else:
            stream.deferred += flow
            srv.stats.deferred_windows += 1

    def _ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        buf, srv = stream.buf, self.server
        if stream.length < 0 or len(buf) != _PREFIX + stream.length:
            self._finish(stream, Code.INVALID_ARGUMENT, "the request message is incomplete")
            return
        try:
            body = _decode(bytes(buf[_PREFIX:]), buf[0], stream.encoding, srv.max_message)
        except GrpcStatus as e:
            self._finish(stream, e.code, e.message)
            return
        stream.buf = bytearray()
        srv._run_or_wait(stream, body)

    def _answer(self, stream: _Stream, body: bytes) -> None:
        """Run the method and send its response (or status)."""
        srv, stream_id = self.server, stream.id
        if self.streams.get(stream_id) is not stream:  # reset or the connection went while it waited
            return
        try:
            response = stream.method.handle(body, stream.call)
        except GrpcStatus as e:
            self._finish(stream, e.code, e.message)
            return
        except Exception:  # noqa: BLE001 - one failing call must not take the connection down
            log.exception("%s: method %s failed", srv.name, stream.call.method)
            self._finish(stream, Code.INTERNAL, "internal error")
            return
        self.streams.pop(stream_id, None)
        headers = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-accept-encoding", _ACCEPT_ENCODING)]
        try:
            self.h2.send_headers(stream_id, headers)
            self.h2.send_data(stream_id, b"\x00" + len(response).to_bytes(4, "big") + response)
            self.h2.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
        except (h2.exceptions.FlowControlError, h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as e:
            # A client that gives no window for a few bytes of response (or went away) loses only its own call.
            srv.warn.warning("%s: could not answer %s: %s", srv.name, self.peer, e)
            self.reset(stream, h2.errors.ErrorCodes.INTERNAL_ERROR)

    def _forget(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self.server._release(stream)

    # ---------------------------------------------------------------------------------- answering

    def _finish(self, stream: _Stream, code: int, message: str) -> None:
        """End a call with a status; a request still arriving is cut off (RST_STREAM NO_ERROR, RFC 9113 8.1)."""
        self._trailers_only(stream.id, code, message)
        h2_stream = self.h2.streams.get(stream.id)
        if h2_stream is not None and h2_stream.open:
            self._rst(stream.id, h2.errors.ErrorCodes.NO_ERROR)
        self._forget(stream.id)

    def _trailers_only(self, stream_id: int, code: int, message: str) -> None:
        try:
            self.h2.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc"),
                                             ("grpc-accept-encoding", _ACCEPT_ENCODING), ("grpc-status", str(code)),
                                             ("grpc-message", _percent_encode(message))], end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def _send(self, stream_id: int, headers: list[tuple[str, str]], body: bytes) -> None:
        try:
            self.h2.send_headers(stream_id, headers)
            self.h2.send_data(stream_id, body, end_stream=True)
        except (h2.exceptions.FlowControlError, h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._rst(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)

    def _not_http2(self) -> None:
        self.server.stats.protocol_errors += 1
        assert self.transport is not None
        body = b"This port speaks OTLP/gRPC (HTTP/2). Send OTLP/HTTP to the agent's OTLP/HTTP port.\n"
        self.transport.write(b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self._teardown()

    # ---------------------------------------------------------------------------------- plumbing

    def ack(self, stream: _Stream, flow: int) -> None:
        """Hand `flow` bytes of window back to the client for `stream` (and the connection)."""
        if flow:
            self.h2.acknowledge_received_data(flow, stream.id)

    def reset(self, stream: _Stream, code: int) -> None:
        """Abort one call."""
        self._rst(stream.id, code)
        self._forget(stream.id)
        self.flush()

    def _rst(self, stream_id: int, code: int) -> None:
        try:
            self.h2.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass  # already closed on one side or the other: nothing left to abort

    def flush(self) -> None:
        """Write what the HTTP/2 state machine has queued."""
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def close(self, code: int) -> None:
        """GOAWAY, then close."""
        try:
            self.h2.close_connection(code)
        except h2.exceptions.ProtocolError:
            pass
        self.flush()
        self._teardown()

    def _teardown(self) -> None:
        for sid in list(self.streams):
            self._forget(sid)
        self.server._connections.discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _decode(data: bytes, flag: int, encoding: str, limit: int) -> bytes:
    """Undo the message's compression, refusing output over `limit` bytes (a compression bomb)."""
    if not flag:
        return data
    if encoding == "identity":
        raise GrpcStatus(Code.INTERNAL, "compressed message without grpc-encoding")
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise GrpcStatus(Code.INTERNAL, f"cannot decompress the {encoding} message: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise GrpcStatus(Code.RESOURCE_EXHAUSTED, f"request decompresses to over the {limit}-byte limit")
    if not d.eof or d.unused_data:
        # Only a whole stream has had its checksum verified: a cut one would hand the method a prefix of the data.
        raise GrpcStatus(Code.INTERNAL, f"the {encoding} message is truncated or has trailing bytes")
    return out


def _percent_encode(message: str) -> str:
    """grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2, 'Responses')."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode())
