"""HTTP/2 and gRPC (cleartext h2c, and TLS plaintext): a span per stream, its request paired with its response by
stream id.

Frames come from the probes' frame mode (H2Event: every frame header and every non-DATA payload of the connection, in
order; bpf/h2.bpf.h) or, where the kernel cannot walk frames (before 5.17) and until it switches a connection it did
not see start, from message snapshots (the first `payload_bytes` of each message). Header blocks are decoded with one
HPACK table per direction (edge/protocols/http2.py): exact from the connection's start, and after any loss only as
far as the entries inserted since are known; a field that cannot be known is counted and the span says
`helix.http2.partial`, never a guessed value.

A stream's span starts with its request headers (a client's write, as it began; a server's read, as it returned) and
ends with the END_STREAM of the response (trailers or last DATA) or an RST_STREAM. gRPC streams (content-type
application/grpc) follow the RPC semantic conventions: `rpc.system` grpc, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code` from the trailers. The trace context comes from the request headers (W3C, B3, Jaeger).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote

from ....model import Attributes, Event, Span, SpanKind, StatusCode, new_span_id
from ....propagation import extract
from ....protocols import http2 as h2
from ..events import DataEvent, Direction, H2Event, Role
from .http import server_attrs
from .tables import WAIT, Conn, ConnState, Snapshot, connection_attrs, process_attrs
from .causes import Call
from .tcp import add_event, take_faults

if TYPE_CHECKING:
    from . import SpanBuilder

__all__ = ["HTTP2", "on_frames", "GRPC_STATUS"]

_NS = 1_000_000_000
_MAX_STREAMS = 1024  # open streams remembered per connection (the default SETTINGS_MAX_CONCURRENT_STREAMS is 100)
GRPC_STATUS = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
               "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
               "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
# Server-side errors by the RPC conventions; a client span errs on any status but OK.
_GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})


@dataclass(slots=True)
class _Stream:
    """One stream: its request and response as far as seen."""

    id: int
    kind: SpanKind  # CLIENT when this process sent the request, SERVER when it received it
    request_dir: int  # Direction of the request
    start_ns: int
    pid: int
    tid: int
    deadline_ns: int
    request: h2.HeaderBlock | None = None  # None: the request headers were not seen (joined mid-stream)
    response: h2.HeaderBlock | None = None
    trailers: h2.HeaderBlock | None = None
    req_bytes: int = 0  # DATA payload bytes (padding included)
    resp_bytes: int = 0
    # Chosen when a server reads the request, so that the calls its handler makes can name it (causes.py).
    span_id: bytes = field(default_factory=new_span_id)
    reset: int = -1  # RST_STREAM error code, -1 without one
    events: list[Event] = field(default_factory=list)
    lost: bool = False  # frames of its direction were lost while it was open
    call: Call | None = None  # a client's stream: the request it was made for (causes.py)


@dataclass(slots=True)
class _Dir:
    """One direction of a connection: its frames, its HPACK table, the header block being assembled."""

    reader: h2.FrameReader = field(default_factory=h2.FrameReader)
    hpack: h2.HeaderDecoder = field(default_factory=h2.HeaderDecoder)
    block: bytearray | None = None  # a header block awaiting its CONTINUATION frames
    block_stream: int = 0
    block_end: bool = False  # the HEADERS frame had END_STREAM
    block_whole: bool = True
    block_promise: bool = False  # a PUSH_PROMISE's block: decoded for the table, no stream of ours
    snap_whole: bool = False  # message mode: the last snapshot held its whole message


class _H2Conn(ConnState):
    """The streams of one HTTP/2 connection."""

    __slots__ = ("dirs", "streams", "hinted", "frame_mode")

    def __init__(self) -> None:
        self.dirs = (_Dir(), _Dir())  # by Direction
        self.streams: OrderedDict[int, _Stream] = OrderedDict()
        self.hinted = False  # the probes were told to walk its frames
        self.frame_mode = False  # H2Events arrive for it

    def waiting(self) -> int:
        return len(self.streams)

    def attach_fault(self, b: SpanBuilder, event: Event) -> bool:
        if not self.streams:
            return False
        add_event(b, next(reversed(self.streams.values())).events, event)
        return True

    def expire(self, b: SpanBuilder, conn: Conn, now_ns: int, out: list[Span]) -> bool:
        for sid in [s.id for s in self.streams.values() if s.deadline_ns <= now_ns]:
            s = self.streams.pop(sid)
            _emit(b, conn, s, s.deadline_ns, out, incomplete=f"no end of stream within {b.config.response_timeout:g}s")
        return bool(self.streams)

    def close(self, b: SpanBuilder, conn: Conn, at_ns: int, why: str, last_end_ns: int | None, last_bytes: int,
              out: list[Span]) -> None:
        while self.streams:
            _, s = self.streams.popitem(last=False)
            _emit(b, conn, s, at_ns, out, incomplete=why)

    # -- frames ----------------------------------------------------------------------------------------------------

    def frames(self, b: SpanBuilder, conn: Conn, ev: DataEvent | H2Event, direction: int, frames: list[h2.Frame],
               out: list[Span]) -> None:
        d = self.dirs[direction]
        for f in frames:
            if f.type in (h2.HEADERS, h2.PUSH_PROMISE):
                if d.block is not None:
                    self._block_lost(b, d)  # the block before never got its END_HEADERS
                frag, whole = h2.header_block_fragment(f) if f.type == h2.HEADERS else _promise_fragment(f)
                d.block = bytearray(frag)
                d.block_stream, d.block_end, d.block_whole = f.stream_id, bool(f.flags & h2.END_STREAM), whole
                d.block_promise = f.type == h2.PUSH_PROMISE
                if f.flags & h2.END_HEADERS or not whole:
                    self._block_done(b, conn, ev, direction, d, out)
            elif f.type == h2.CONTINUATION:
                if d.block is None or f.stream_id != d.block_stream:
                    self._block_lost(b, d)  # its HEADERS was not seen: what it inserts is unknown
                    continue
                frag, whole = h2.header_block_fragment(f)
                if len(d.block) + len(frag) > 1 << 16:
                    self._block_lost(b, d)
                    continue
                d.block += frag
                d.block_whole = d.block_whole and whole
                if f.flags & h2.END_HEADERS or not whole:
                    self._block_done(b, conn, ev, direction, d, out)
            elif f.type == h2.DATA:
                s = self.streams.get(f.stream_id)
                if s is not None:
                    if direction == s.request_dir:
                        s.req_bytes += f.length
                    else:
                        s.resp_bytes += f.length
                    s.deadline_ns = ev.end_ns + int(b.config.response_timeout * _NS)
                    if f.flags & h2.END_STREAM:
                        self._end_stream(b, conn, s, direction, ev, out)
                b.stats.h2_data_frames += 1
            elif f.type == h2.RST_STREAM:
                s = self.streams.pop(f.stream_id, None)
                if s is not None:
                    p = f.payload or b""
                    s.reset = int.from_bytes(p[:4], "big") if len(p) >= 4 else 1
                    _emit(b, conn, s, ev.end_ns, out)
            elif f.type == h2.GOAWAY:
                b.stats.h2_goaway += 1

    def _block_lost(self, b: SpanBuilder, d: _Dir) -> None:
        d.block = None
        d.hpack.forget()
        b.stats.h2_blocks_lost += 1

    def _block_done(self, b: SpanBuilder, conn: Conn, ev: DataEvent | H2Event, direction: int, d: _Dir,
                    out: list[Span]) -> None:
        assert d.block is not None
        block = d.hpack.decode(bytes(d.block), truncated=not d.block_whole)
        sid, end, promise = d.block_stream, d.block_end, d.block_promise
        d.block = None
        b.stats.h2_header_blocks += 1
        if block.partial:
            b.stats.h2_partial_blocks += 1
        if promise or sid % 2 == 0:
            return  # server push: its blocks keep the table right, its streams are not calls this process made
        s = self.streams.get(sid)
        if s is None:
            s = self._open(b, conn, ev, direction, sid, block, out)
        elif direction == s.request_dir:
            pass  # request trailers: nothing to keep but their END_STREAM
        elif s.response is None and (block.get(":status") is not None or block.partial or s.request is None):
            s.response = block
            if s.kind == SpanKind.SERVER:
                b.causes.request_done(s.pid, s.tid, s.span_id)
                b.causes.response_written(ev.pid, ev.tid, s.span_id, ev.ts_ns, conn.sock)
            elif s.call is not None:
                b.causes.response_read(s.call, ev.tid, ev.end_ns)
            if (block.get(":status") or "")[:1] == "1" and not end:
                s.response = None  # an interim response (100 Continue): the final one follows
        else:
            s.trailers = block
        s.deadline_ns = ev.end_ns + int(b.config.response_timeout * _NS)
        if end:
            self._end_stream(b, conn, s, direction, ev, out)

    def _open(self, b: SpanBuilder, conn: Conn, ev: DataEvent | H2Event, direction: int, sid: int,
              block: h2.HeaderBlock, out: list[Span]) -> _Stream:
        """A stream's first header block: its request, or (joined mid-stream) its response."""
        is_response = block.get(":status") is not None and block.get(":method") is None
        request_dir = (1 - direction) if is_response else direction
        kind = SpanKind.CLIENT if request_dir == Direction.EGRESS else SpanKind.SERVER
        if len(self.streams) >= _MAX_STREAMS:
            _, old = self.streams.popitem(last=False)
            b.stats.pending_dropped += 1
            _emit(b, conn, old, ev.end_ns, out, incomplete="too many open streams on the connection")
        # a client's call starts when its write began; a server's when the read that brought the request returned
        start = ev.ts_ns if kind == SpanKind.CLIENT and not is_response else ev.end_ns
        s = _Stream(sid, kind, request_dir, start, ev.pid, ev.tid, ev.end_ns + int(b.config.response_timeout * _NS))
        if is_response:
            s.response = block
        else:
            s.request = block
            if kind == SpanKind.SERVER:
                b.causes.request_read(ev.pid, ev.tid, s.span_id, start, stream=True)
            else:
                s.call = b.causes.call_made(ev.pid, ev.tid, start, conn.sock, out)
        s.events = take_faults(b, conn)
        self.streams[sid] = s
        b.conns.waiting.add(conn.sock)
        return s

    def _end_stream(self, b: SpanBuilder, conn: Conn, s: _Stream, direction: int, ev: DataEvent | H2Event,
                    out: list[Span]) -> None:
        if direction == s.request_dir:
            return  # the request is whole; the response decides the end
        self.streams.pop(s.id, None)
        _emit(b, conn, s, ev.end_ns, out)

    def lost(self, b: SpanBuilder, direction: int) -> None:
        """Bytes of a direction were lost: its partial frame and header block go, its table is known no more."""
        d = self.dirs[direction]
        d.reader.reset()
        if d.block is not None:
            d.block = None
        d.hpack.forget()
        for s in self.streams.values():
            s.lost = True


def _promise_fragment(f: h2.Frame) -> tuple[bytes, bool]:
    p = f.payload or b""
    whole = not f.truncated and f.payload is not None
    start, pad = 4, 0
    if f.flags & h2.PADDED:
        if not p:
            return b"", False
        pad, start = p[0], 5
    if not whole:
        return p[start:], False
    if start + pad > len(p):
        return b"", False
    return p[start:len(p) - pad], True


class _Http2:
    """HTTP/2 in message snapshots: recognised by the preface or by frames that look like HTTP/2 (a connection
    older than the probes); the probes are then told to walk its frames (frame mode, H2Event)."""

    name = "http2"
    streams = False
    body_continues = False

    def assemble(self, conn: Conn, data: bytes | bytearray, decoded: int) -> int | None:
        if conn.proto is not self and not _recognised(conn, bytes(data[:64])):
            return None
        return WAIT  # the snapshot settles when full, when the next message starts, or at its deadline

    def on_message(self, b: SpanBuilder, conn: Conn, ev: DataEvent, snap: Snapshot | None, base: int,
                   out: list[Span]) -> bool:
        data = ev.payload
        preface = data.startswith(h2.PREFACE)
        if conn.proto is not self and not _recognised(conn, data):
            return False
        st = _claim(b, conn, preface)
        if not st.hinted and b.on_h2 is not None:
            st.hinted = True  # frame mode from the next message on (kernels with bpf_loop)
            try:
                b.on_h2(conn.sock)
            except Exception:  # a map update failing leaves the connection in message mode, nothing worse
                b.stats.internal_errors += 1
        direction = int(ev.direction)
        d = st.dirs[direction]
        if preface:
            for x in st.dirs:
                x.reader.reset()
                x.hpack = h2.HeaderDecoder(complete=True)
                x.snap_whole = True
        elif not d.snap_whole:
            st.lost(b, direction)  # what came between this snapshot and the last one is unknown
            _requests_unseen(b, conn)
        whole = len(data) < b.config.payload_bytes and (snap is None or not snap.open or len(snap.data) == len(data))
        if snap is None and len(data) < ev.size:
            whole = False
        d.snap_whole = whole
        frames = d.reader.read_snapshot(data, len(h2.PREFACE) if preface else 0)
        st.frames(b, conn, ev, direction, frames, out)
        if d.block is not None:
            d.block_whole = False
            st._block_done(b, conn, ev, direction, d, out)  # cut by the end of the snapshot
        b.stats.h2_snapshots += 1
        return True


HTTP2 = _Http2()


def _recognised(conn: Conn, data: bytes) -> bool:
    """HTTP/2 on a connection no protocol has claimed: its preface, or frames that look like HTTP/2 on a connection
    whose start the probes did not see."""
    if data.startswith(h2.PREFACE) or (len(data) < len(h2.PREFACE) and h2.PREFACE.startswith(data) and data):
        return True
    return conn.proto is None and conn.role == Role.UNKNOWN and h2.plausible_frames(data) >= 1


def _claim(b: SpanBuilder, conn: Conn, started: bool) -> _H2Conn:
    conn.proto = HTTP2
    conn.opaque = False
    if not isinstance(conn.state, _H2Conn):
        conn.state = _H2Conn()
        if not started:
            _requests_unseen(b, conn)
    return conn.state


def _requests_unseen(b: SpanBuilder, conn: Conn) -> None:
    # A connection joined after its start, or whose bytes were lost, may carry requests never seen: the process's
    # open requests are no longer all known (causes.py, `elimination`).
    if conn.role != Role.CLIENT:
        b.causes.requests_unseen(conn.pid)


def on_frames(b: SpanBuilder, ev: H2Event, out: list[Span]) -> None:
    """Frame mode: the frames one call moved (bpf/h2.bpf.h)."""
    conn = b.conn_for(ev, out)
    if conn.snap is not None:
        b.settle(conn, out)  # a message snapshot from before the switch
    b.procs.get(ev.pid, ev.comm)
    st = _claim(b, conn, ev.start)
    st.frame_mode = True
    direction = int(ev.direction)
    d = st.dirs[direction]
    if ev.start:
        d.reader.reset()
        d.hpack = h2.HeaderDecoder(complete=True)
    elif ev.gap:
        st.lost(b, direction)
        _requests_unseen(b, conn)
        b.stats.h2_gaps += 1
    conn.last_direction = direction
    st.frames(b, conn, ev, direction, d.reader.feed_kept(ev.payload), out)


def _grpc_path(path: str) -> tuple[str, str] | None:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    parts = path.split("/")
    if len(parts) == 3 and not parts[0] and parts[1] and parts[2]:
        return parts[1], parts[2]
    return None


def _emit(b: SpanBuilder, conn: Conn, s: _Stream, end_ns: int, out: list[Span], *, incomplete: str = "") -> None:
    req = s.request or h2.HeaderBlock()
    resp = s.response
    headers: dict[str, str] = {}
    for k, v in req.fields:
        headers.setdefault(k, v)
    method = headers.get(":method", "")
    path = headers.get(":path", "")
    ctype = headers.get("content-type") or (resp.get("content-type") if resp else None) or ""
    grpc = ctype.startswith("application/grpc")
    attrs: Attributes = {}
    target, _, query = path.partition("?")
    server_attrs(attrs, conn, headers.get(":authority") or headers.get("host") or "", s.kind == SpanKind.SERVER)
    status = StatusCode.UNSET
    message = ""
    rpc = _grpc_path(target) if grpc else None
    if grpc:
        attrs["rpc.system"] = "grpc"
        if rpc is not None:
            attrs["rpc.service"], attrs["rpc.method"] = rpc
        trailers = s.trailers or resp
        code_s = trailers.get("grpc-status") if trailers is not None else None
        if code_s is not None and code_s.isdigit():
            code = int(code_s)
            attrs["rpc.grpc.status_code"] = code
            if code and (s.kind == SpanKind.CLIENT or code in _GRPC_SERVER_ERRORS):
                status = StatusCode.ERROR
                error_type = GRPC_STATUS[code] if code < len(GRPC_STATUS) else str(code)
                attrs["error.type"] = error_type
                msg = trailers.get("grpc-message") if trailers is not None else None
                message = unquote(msg) if msg else error_type
    if method:
        attrs["http.request.method"] = method
    if target and not grpc:
        attrs["url.path"] = target
        if query:
            attrs["url.query"] = query
    attrs["url.scheme"] = headers.get(":scheme") or ("https" if conn.tls else "http")
    connection_attrs(attrs, conn, "http", local=True)
    attrs["network.protocol.version"] = "2"
    attrs["helix.http2.stream_id"] = s.id
    ua = headers.get("user-agent")
    if ua:
        attrs["user_agent.original"] = ua
    if s.req_bytes:
        attrs["http.request.body.size"] = s.req_bytes
    if s.resp_bytes:
        attrs["http.response.body.size"] = s.resp_bytes
    code_http = resp.get(":status") if resp is not None else None
    if code_http is not None and code_http.isdigit():
        attrs["http.response.status_code"] = int(code_http)
        if not grpc and (int(code_http) >= 500 or (s.kind == SpanKind.CLIENT and int(code_http) >= 400)):
            status = StatusCode.ERROR
            attrs["error.type"] = code_http
    for key in b.config.capture_headers:
        value = headers.get(key)
        if value is not None:
            attrs[f"rpc.grpc.request.metadata.{key}" if grpc else f"http.request.header.{key}"] = [value]
    unknown = req.unknown + (resp.unknown if resp else 0) + (s.trailers.unknown if s.trailers else 0)
    if s.request is None or unknown or req.truncated or s.lost:
        attrs["helix.http2.partial"] = True
        if unknown:
            attrs["helix.http2.unknown_fields"] = unknown
    if s.reset >= 0 and status == StatusCode.UNSET and not (grpc and "rpc.grpc.status_code" in attrs):
        name = h2.ERROR_CODES[s.reset] if s.reset < len(h2.ERROR_CODES) else str(s.reset)
        status, message = StatusCode.ERROR, f"stream reset: {name}"
        attrs["error.type"] = name
        attrs["helix.http2.reset"] = name
    if incomplete:
        status, message = StatusCode.ERROR, incomplete
        attrs["helix.incomplete"] = True
        attrs["error.type"] = "incomplete"
    process_attrs(attrs, s.pid, s.tid, conn.comm)
    if rpc is not None:
        name = f"{rpc[0]}/{rpc[1]}"
    else:
        name = method or "HTTP"
    proc = b.procs.get(s.pid, conn.comm)
    span = b.span(name, s.kind, s.start_ns, max(end_ns, s.start_ns), proc, attrs, extract(headers), s.events,
                  span_id=s.span_id)
    if s.kind == SpanKind.SERVER:
        b.causes.request_done(s.pid, s.tid, s.span_id)
        b.causes.request_ended(s.pid, s.span_id, max(end_ns, s.start_ns))
    span.status_code, span.status_message = status, message
    b.stats.http2_spans += 1
    if s.call is not None:
        b.causes.finish(s.call, span, max(end_ns, s.start_ns), out)  # a worker's call may wait for its request
        return
    out.append(span)
