"""A small gRPC server (unary methods over cleartext HTTP/2) on asyncio, for the agent's OTLP/gRPC receiver.

grpcio's server cost the agent about 12 MiB of resident memory, a quarter of a device's budget, and it takes
every call whole into its C core before the application sees it, outside any bound the agent keeps. OTLP/gRPC
needs one unary method; this server (on the pure-Python `h2` protocol stack) serves unary methods and bounds what
a client controls with HTTP/2 flow control, which every gRPC client obeys:

- Request bytes count against a `RequestBudget` (edge/net/budget.py), shared with the OTLP/HTTP receiver and
  bounded by the memory governor's plan. A stream's window is reopened as its bytes arrive only while the budget
  has room; otherwise the client waits. The oldest request in the budget is always let through, so the server
  cannot deadlock on its own bound.
- Per connection, the client may have at most the protocol's initial connection window (65,535 bytes) in flight
  beyond what the budget took: the connection window is never widened. When the oldest request's connection ran
  out of window because its other streams wait, the connection window (not theirs) is handed back for it.
  Held bytes therefore stay under the budget + connections x 64 KiB + MAX_STREAMS x STREAM_WINDOW + one message.
- A header block may be at most MAX_HEADER_BLOCK bytes however many CONTINUATION frames carry it (h2 alone keeps
  up to 64 frames of 16 KiB per connection before it refuses).
- The declared length of a message is judged on its 5-byte prefix, before the body is buffered: over
  `max_message` is RESOURCE_EXHAUSTED.
- A compressed message is inflated only when its turn comes, in steps each taken from the budget first; until
  then it waits with its wire bytes. Inflated, it is bounded by `max_message` too (a compression bomb).
- A method may say it is not `ready` for a request (the agent's pipeline is full). The request then waits, in
  arrival order, with its bytes still counted (so other clients' windows close too) until the method is ready, or
  for `max_wait` seconds, after which it is refused UNAVAILABLE (clients retry with backoff). Waiting rather than
  refusing at once spares a burst of clients a retry storm.
- Connections are bounded; when all slots are taken the longest-idle connection (no call open) is closed with
  GOAWAY (clients reconnect) to make room, else the one whose unfinished calls have sent nothing for SLOW_CALL
  though free to send. A stream that stalls, and one that holds budget without progress while
  others wait, is reset; a connection that idles is closed.
Malformed frames, or anything else that fails while reading a connection, end that connection (GOAWAY), counted,
never the process.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame

from ..errors import HelixError
from .budget import RequestBudget
from .retry import RateLimitedLog

__all__ = ["GrpcServer", "GrpcStatus", "Method", "Call", "Code"]

log = logging.getLogger(__name__)

# Bytes a client may send on a stream before the server reopens its window: the HTTP/2 default, so that a typical
# export (tens of KiB) arrives in one go; smaller windows left more requests half-received at once, not fewer.
STREAM_WINDOW = 65535
# Concurrent calls per connection (SDK exporters keep one or a few): h2 enforces this value before the client
# acknowledges our settings too, so a client opening streams early never sees its connection torn down over a limit
# that changed under it.
MAX_STREAMS = 16
MAX_CONNECTIONS = 32  # loopback clients: a few SDK exporters; idle ones make room for new ones
MAX_HEADER_LIST = 16 * 1024  # decoded header list, as advertised (SETTINGS_MAX_HEADER_LIST_SIZE)
MAX_HEADER_BLOCK = 2 * MAX_HEADER_LIST  # encoded header block, across its CONTINUATION frames
# Closed streams a connection remembers, so frames still in flight after a close get a stream error, not a connection
# error. In-flight frames outlive a close by a round trip, so a few times the concurrent streams is plenty; h2's own
# bound (65,536) made a long-lived exporter's connection creep by megabytes (docs/benchmarks.md, memory budget).
CLOSED_STREAMS_REMEMBERED = 400
READ_SIZE = 64 * 1024  # bytes read from a socket at once: a connection window
STREAM_TIMEOUT = 30.0  # s a started request may go without a byte arriving
# s an unfinished call may send nothing, though its windows are open, before its connection is first to give its slot
# to a new one (a local exporter sends a request in milliseconds).
SLOW_CALL = 1.0
IDLE_TIMEOUT = 300.0  # s a connection may sit without calls; clients reconnect transparently after GOAWAY
_SWEEP = 1.0
_WAIT_POLL = 0.01  # s between looks at whether waiting requests fit now
_PREFIX = 5  # compressed flag and 4-byte big-endian length before every gRPC message
_INFLATE_STEP = 64 * 1024  # inflated bytes taken from the budget per step
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
    """A unary method: `handle(request, call)` returns the serialized response or raises GrpcStatus; or returns an
    awaitable of the response (the answer is sent when it is done, other calls going on meanwhile).

    `ready(length)`, if given, is asked before `handle` with the request's wire length; while it says no, the
    request waits (see the module docstring), then `refused()` is called and the client gets UNAVAILABLE.
    """

    handle: Callable[[bytes, Call], bytes | Awaitable[bytes]]
    ready: Callable[[int], bool] | None = None
    refused: Callable[[Call], None] | None = None


@dataclass(slots=True)
class GrpcServerStats:
    """Counters of the transport itself (methods keep their own)."""

    connections: int = 0
    calls: int = 0
    refused_connections: int = 0
    reclaimed_connections: int = 0  # idle or silent connections closed to make room for a new one
    protocol_errors: int = 0
    stalled_streams: int = 0
    deferred_windows: int = 0  # times a stream's window stayed closed because the server held too much
    buffered_peak: int = 0  # most bytes this server held in unfinished requests at once
    waited: int = 0  # requests that waited for their method to be ready (or for room to be inflated)
    refused_busy: int = 0  # requests refused UNAVAILABLE after waiting max_wait


class GrpcServer:
    """Routes `/package.Service/Method` paths to unary methods; `start()` binds, `port` is the bound port after.

    `budget`: the bytes all unfinished requests may hold (shared with the other receivers); a private one of
    `max_buffered` bytes when not given.
    """

    def __init__(self, host: str, port: int, methods: dict[str, Method], max_message: int,
                 max_buffered: int = 1 << 20, name: str = "gRPC", max_wait: float = 2.0,
                 budget: RequestBudget | None = None) -> None:
        self.host = host
        self.port = port
        self.methods = methods
        self.max_message = max_message
        self.budget = budget if budget is not None else RequestBudget(max_buffered)
        self.budget.on_freed(self._reopen)
        self.name = name
        self.max_wait = max_wait
        self._read_buffer = memoryview(bytearray(READ_SIZE))
        self.stats = GrpcServerStats()
        self._waiting: dict[tuple[_Connection, int], tuple[_Stream, float]] = {}  # complete, not yet handed over
        self._waker: asyncio.Handle | None = None
        self._streams: dict[tuple[_Connection, int], _Stream] = {}  # unfinished requests, oldest first
        self._connections: dict[_Connection, None] = {}
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._later: set[asyncio.Future[None]] = set()  # answers waiting for their method (held, or they vanish)
        self.warn = RateLimitedLog(log)

    @property
    def max_buffered(self) -> int:
        """The budget's bound (the memory governor's plan)."""
        return self.budget.limit

    @max_buffered.setter
    def max_buffered(self, n: int) -> None:
        self.budget.set_bound(n)

    @property
    def buffered(self) -> int:
        """Bytes this server holds in unfinished requests (wire, and inflated while they wait)."""
        return sum(self.budget.held(s) for s in self._streams.values())

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

    # ------------------------------------------------------------------------------------ connection slots

    def _admit(self, conn: _Connection) -> bool:
        """A slot for a new connection: free, or reclaimed from the longest-idle connection with no call open, else
        from the one whose calls have been silent longest (past SLOW_CALL) though free to send."""
        if len(self._connections) >= MAX_CONNECTIONS:
            idle = [c for c in self._connections if not c.streams]
            if idle:
                victim = min(idle, key=lambda c: c.last)
            else:
                now = time.monotonic()
                slow = [(since, c) for c in self._connections
                        if (since := c.silent_since()) is not None and now - since > SLOW_CALL]
                if not slow:
                    return False
                victim = min(slow, key=lambda x: x[0])[1]
            self.stats.reclaimed_connections += 1
            victim.close(h2.errors.ErrorCodes.NO_ERROR)
        self._connections[conn] = None
        self.stats.connections += 1
        return True

    # ------------------------------------------------------------------------------------ waiting for room

    def _run_or_wait(self, stream: _Stream) -> None:
        if not self._waiting and self._try(stream):
            return
        self.stats.waited += 1
        self._waiting[(stream.conn, stream.id)] = (stream, time.monotonic() + self.max_wait)
        self._wake()

    def _try(self, stream: _Stream) -> bool:
        """Inflate the request if it came compressed and there is room, then hand it over if its method is ready."""
        if stream.body is None:
            try:
                if not self._inflate(stream):
                    return False
            except GrpcStatus as e:
                stream.conn._finish(stream, e.code, e.message)
                return True
        body = stream.body
        assert body is not None
        ready = stream.method.ready
        if ready is not None and not ready(len(body)):
            return False
        self._run(stream, body)
        return True

    def _inflate(self, stream: _Stream) -> bool:
        """Undo the message's compression in steps taken from the budget; False (nothing kept) when room ran out."""
        buf, budget = stream.buf, self.budget
        wire = bytes(buf[_PREFIX:])
        if not buf[0]:
            stream.body = wire
            return True
        if stream.encoding == "identity":
            raise GrpcStatus(Code.INTERNAL, "compressed message without grpc-encoding")
        d = zlib.decompressobj(wbits=31 if stream.encoding == "gzip" else 15)
        limit = self.max_message
        pieces: list[bytes] = []
        size = 0
        tail = wire
        try:
            while True:
                step = min(_INFLATE_STEP, limit + 1 - size)
                if not budget.take(stream, step):
                    self._give_back(stream, size)
                    return False
                try:
                    piece = d.decompress(tail, step)
                except zlib.error as e:
                    raise GrpcStatus(Code.INTERNAL, f"cannot decompress the {stream.encoding} message: {e}") from None
                budget.give_back(stream, step - len(piece))
                size += len(piece)
                if size > limit:
                    raise GrpcStatus(Code.RESOURCE_EXHAUSTED, f"request decompresses to over the {limit}-byte limit")
                pieces.append(piece)
                tail = d.unconsumed_tail
                if d.eof or (not tail and not piece):
                    break
            if not d.eof or d.unused_data:
                # Only a whole stream has had its checksum verified: a cut one would hand the method a prefix.
                raise GrpcStatus(Code.INTERNAL, f"the {stream.encoding} message is truncated or has trailing bytes")
        except GrpcStatus:
            self._give_back(stream, size)
            raise
        # The joined message replaces the pieces; the wire bytes are no longer needed.
        budget.take(stream, size, force=True)
        stream.body = b"".join(pieces)
        pieces.clear()
        stream.buf = bytearray()
        budget.give_back(stream, size + len(buf))
        self._held(stream)
        return True

    def _give_back(self, stream: _Stream, n: int) -> None:
        self.budget.give_back(stream, n)

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
            key, (stream, deadline) = next(iter(self._waiting.items()))
            if self._try(stream):
                self._waiting.pop(key, None)
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
        stream.body = None
        stream.conn.hand_back(stream)
        self._release(stream)
        stream.conn._answer(stream, body)

    # ------------------------------------------------------------------------------------ buffer accounting

    def _held(self, stream: _Stream) -> None:
        n = self.budget.bytes
        if n > self.stats.buffered_peak:
            self.stats.buffered_peak = n

    def _may_reopen(self, stream: _Stream) -> bool:
        budget = self.budget
        return budget.bytes <= budget.limit or budget.oldest() is stream

    def _release(self, stream: _Stream) -> None:
        self._waiting.pop((stream.conn, stream.id), None)
        if self._streams.pop((stream.conn, stream.id), None) is None:
            return
        self.budget.release(stream)  # calls _reopen

    def _reopen(self) -> None:
        """Reopen the windows that were held back, oldest first, while the budget allows."""
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
        if self._waiting and self._waker is None:
            self._wake()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP)
            now = time.monotonic()
            for s in [s for s in self._streams.values() if now - s.last > STREAM_TIMEOUT]:
                self.stats.stalled_streams += 1
                s.conn.reset(s, h2.errors.ErrorCodes.CANCEL)
            # A stream holding budget without progress while others' windows stay closed is reclaimed early.
            if any(s.deferred for s in self._streams.values()):
                self.budget.reclaim(waiting=True)
            for c in [c for c in self._connections if not c.streams and now - c.last > IDLE_TIMEOUT]:
                c.close(h2.errors.ErrorCodes.NO_ERROR)


class _Stream:
    __slots__ = ("conn", "id", "method", "call", "encoding", "buf", "length", "deferred", "last", "body", "ended")

    def __init__(self, conn: _Connection, stream_id: int, method: Method, call: Call, encoding: str) -> None:
        self.conn = conn
        self.id = stream_id
        self.method = method
        self.call = call
        self.encoding = encoding
        self.buf = bytearray()
        self.length = -1  # declared message length, once the prefix is in
        self.deferred = 0  # flow-controlled bytes received but not yet handed back to the client
        self.last = time.monotonic()
        self.body: bytes | None = None  # the message, once complete and inflated
        self.ended = False  # the whole message has arrived


class _H2Connection(h2.connection.H2Connection):
    MAX_CLOSED_STREAMS = CLOSED_STREAMS_REMEMBERED


class _HeaderBlockBound(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer with the encoded size of one header block bounded, across its CONTINUATION frames."""

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        if isinstance(f, (HeadersFrame, ContinuationFrame)) and (self._headers_buffer or "END_HEADERS" not in f.flags):
            size = sum(len(x.data) for x in self._headers_buffer) + len(f.data)
            if size > MAX_HEADER_BLOCK:
                raise h2.exceptions.ProtocolError(f"header block over {MAX_HEADER_BLOCK} bytes")
        return super()._update_header_buffer(f)


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.h2 = _H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.h2.incoming_buffer = _HeaderBlockBound(server=True)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.peer = "unknown"
        self.last = time.monotonic()
        self._first = True

    def silent_since(self) -> float | None:
        """When the last byte of its open calls arrived, if each of them could send (no window held back by the
        server) and none has arrived whole (waiting for the pipeline is not the client's doing); None otherwise."""
        if not self.streams or any(s.ended or s.deferred for s in self.streams.values()):
            return None
        return max(s.last for s in self.streams.values())

    # ---------------------------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = transport  # type: ignore[assignment]  # a stream transport: create_server made it
        srv = self.server
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"ipv{6 if ':' in peer[0] else 4}:{peer[0]}:{peer[1]}"
        if not srv._admit(self):
            srv.stats.refused_connections += 1
            srv.warn.warning("%s: refused a connection from %s: %d connections open, each with a call", srv.name,
                             self.peer, MAX_CONNECTIONS)
            transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:  # noqa: D102
        # One buffer for every connection (the loop reads one socket at a time, and buffer_updated follows at once):
        # the loop's own reads are 256 KiB each, which 32 connections flooding frames that are not flow-controlled
        # (HEADERS, CONTINUATION) held at once outside any bound.
        return self.server._read_buffer

    def buffer_updated(self, nbytes: int) -> None:  # noqa: D102
        self.data_received(bytes(self.server._read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:  # noqa: D102
        if self not in self.server._connections:
            return  # closed to make room, or refused: what is still in flight is not read
        try:
            self._receive(data)
        except Exception as e:  # noqa: BLE001 - whatever a client sends ends its connection, never the server
            self.server.stats.protocol_errors += 1
            self.server.warn.warning("%s: closed a connection from %s: %s (%s)", self.server.name, self.peer,
                                     "not valid HTTP/2" if isinstance(e, (h2.exceptions.ProtocolError,
                                                                          UnicodeDecodeError)) else "failed",
                                     e if isinstance(e, h2.exceptions.ProtocolError) else type(e).__name__)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the connection is going anyway
                pass
            self._teardown()

    def _receive(self, data: bytes) -> None:
        if self._first:
            # The server preface waits for the client's first bytes, so that an HTTP/1 client (curl without
            # --http2-prior-knowledge, a browser) gets a readable answer instead of binary frames.
            self._first = False
            if not data.startswith(b"PRI ") and data[:8].split(b" ", 1)[0] in (b"GET", b"POST", b"PUT", b"HEAD"):
                self._not_http2()
                return
            self.h2.initiate_connection()
            # Applied by h2 once the client acknowledges them; until then the protocol defaults hold on both sides.
            # The connection window stays at the protocol's 65,535: with the budget it bounds what one connection
            # can have in flight.
            self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                                     h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                                     h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST})
        self.last = time.monotonic()
        try:
            events = self.h2.receive_data(data)
        except (h2.exceptions.ProtocolError, UnicodeDecodeError):  # h2 decodes header values as UTF-8
            self.flush()  # h2's GOAWAY
            raise
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
        self._unblock_oldest()
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
                       f"this port speaks OTLP/gRPC; {path[:200]} needs a gRPC POST\n".encode())
            return
        method = srv.methods.get(path)
        if method is None:
            self._trailers_only(stream_id, Code.UNIMPLEMENTED, f"unknown method {path[:200]}")
            return
        encoding = h.get("grpc-encoding", "identity")
        if encoding not in ("identity", "gzip", "deflate"):
            self._trailers_only(stream_id, Code.UNIMPLEMENTED, f"grpc-encoding {encoding[:64]} is not supported")
            return
        srv.stats.calls += 1
        metadata = {k: v for k, v in headers if not k.startswith(":")}
        stream = _Stream(self, stream_id, method, Call(path, metadata, self.peer), encoding)
        self.streams[stream_id] = stream
        srv._streams[(self, stream_id)] = stream
        srv.budget.join(stream, lambda: self._reclaimed(stream))

    def _reclaimed(self, stream: _Stream) -> None:
        self.server.stats.stalled_streams += 1
        self.reset(stream, h2.errors.ErrorCodes.CANCEL)

    def _data(self, stream_id: int, data: bytes, flow: int) -> None:
        stream, srv = self.streams.get(stream_id), self.server
        if stream is None:  # answered early (refused); its remaining bytes are not wanted
            self.h2.acknowledge_received_data(flow, stream_id)
            return
        stream.last = time.monotonic()
        stream.buf += data
        stream.deferred += flow  # handed back below, or by hand_back when the call ends first
        # The bytes are here already: they are counted whatever the budget says; it decides the window.
        srv.budget.take(stream, len(data), force=True)
        srv._held(stream)
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
            self.ack(stream, stream.deferred)
            stream.deferred = 0
        else:
            srv.stats.deferred_windows += 1

    def _unblock_oldest(self) -> None:
        """Hand back connection window for the budget's oldest request when its siblings' held bytes used it up."""
        oldest = self.server.budget.oldest()
        if not isinstance(oldest, _Stream) or oldest.conn is not self or oldest.ended:
            return
        window = self.h2.inbound_flow_control_window
        held = sum(s.deferred for s in self.streams.values() if s is not oldest)
        if held and window < STREAM_WINDOW // 2:
            self.h2.increment_flow_control_window(min(held, STREAM_WINDOW - window))

    def _ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if stream.length < 0 or len(stream.buf) != _PREFIX + stream.length:
            self._finish(stream, Code.INVALID_ARGUMENT, "the request message is incomplete")
            return
        stream.ended = True
        self.server.budget.settle(stream)
        self.server._run_or_wait(stream)

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
        if isinstance(response, bytes):
            self._respond(stream, response)
            return
        task = asyncio.ensure_future(self._answer_later(stream, response))
        srv._later.add(task)
        task.add_done_callback(srv._later.discard)

    async def _answer_later(self, stream: _Stream, pending: Awaitable[bytes]) -> None:
        try:
            response = await pending
        except GrpcStatus as e:
            if self.streams.get(stream.id) is stream:
                self._finish(stream, e.code, e.message)
                self.flush()
            return
        except Exception:  # noqa: BLE001 - as above
            log.exception("%s: method %s failed", self.server.name, stream.call.method)
            if self.streams.get(stream.id) is stream:
                self._finish(stream, Code.INTERNAL, "internal error")
                self.flush()
            return
        if self.streams.get(stream.id) is stream:
            self._respond(stream, response)
            self.flush()

    def _respond(self, stream: _Stream, response: bytes) -> None:
        srv, stream_id = self.server, stream.id
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
            stream.body = None
            self.hand_back(stream)
            self.server._release(stream)

    def hand_back(self, stream: _Stream) -> None:
        """Bytes held back from a call that leaves the server's account count against the connection window too:
        handed back now, or the connection would shrink for good (h2 sends only the connection's WINDOW_UPDATE
        for a stream closed on the client's side)."""
        if stream.deferred:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # the connection is closing anyway
                self.h2.acknowledge_received_data(stream.deferred, stream.id)
            stream.deferred = 0

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
        self.server._connections.pop(self, None)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _percent_encode(message: str) -> str:
    """grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2, 'Responses')."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode())
