"""HTTP/1.x in message snapshots: requests paired with responses per connection, in order (keep-alive, pipelining).

A request opens an exchange; the response head pairs with the oldest waiting request of the same side; the
exchange ends when the response message ends (the next message's `prev_end_ns`, a close, or its bytes reaching
the length its head gave). A request with no response by `response_timeout` leaves as incomplete; a response whose
end never shows up leaves with its first syscall's exit and `helix.end_estimated`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ....model import Attributes, Event, Span, SpanKind, StatusCode, new_span_id
from ....propagation import extract
from ....protocols.http1 import HttpRequest, HttpResponse, looks_like_http, parse_requests, parse_responses
from ..events import DataEvent, DataMoreEvent, Direction
from .causes import Call
from .tables import SETTLE, WAIT, Conn, ConnState, Snapshot, connection_attrs, process_attrs
from .tcp import add_event, take_faults

if TYPE_CHECKING:
    from . import SpanBuilder

__all__ = ["HTTP", "split_host", "server_attrs"]

_NS = 1_000_000_000
_NO_MSG, _REQ_MSG, _RESP_MSG = range(3)
# Bytes of a non-HTTP-looking snapshot on an HTTP connection that tell body bytes from a head arriving in
# pieces: the longest method and its space ("OPTIONS ").
_HTTP_SNIFF = 8
# Enum members read once: each `SpanKind.SERVER` in compiled code is a lookup through the enum metaclass's __getattr__
# (~0.3 us, an allocation each), several per exchange.
_SERVER: Final = SpanKind.SERVER
_CLIENT: Final = SpanKind.CLIENT
_INGRESS: Final = Direction.INGRESS
_UNSET: Final = StatusCode.UNSET
_ERROR: Final = StatusCode.ERROR


@dataclass(slots=True, init=False)
class _Exchange:
    """One HTTP request and, once seen, its response."""

    request: HttpRequest
    kind: SpanKind
    start_ns: int  # monotonic
    pid: int
    tid: int
    offcpu_ns: int
    msg_seq: int
    sole: bool  # only request of its message, so the message size is this request's size
    deadline_ns: int
    events: list[Event] = field(default_factory=list)
    req_bytes: int | None = None
    response: HttpResponse | None = None
    resp_tid: int = 0
    resp_offcpu_ns: int = 0
    resp_first_end_ns: int = 0
    resp_sole: bool = False
    resp_bytes: int | None = None
    end_ns: int = 0
    rv: int | None = None  # randomness the kernel chose for this context-less request (DataEvent.rv)
    # Chosen when the request is read, so that the calls it causes can name their parent before its span exists.
    span_id: bytes = field(default_factory=new_span_id)
    call: Call | None = None  # a client's call: the request it was made for (causes.py)

    # Written out: see DataEvent.__init__ (edge/sources/ebpf/events.py); one of these is made per request.
    def __init__(self, request: HttpRequest, kind: SpanKind, start_ns: int, pid: int, tid: int, offcpu_ns: int,
                 msg_seq: int, sole: bool, deadline_ns: int, events: list[Event] | None = None,
                 req_bytes: int | None = None, response: HttpResponse | None = None, resp_tid: int = 0,
                 resp_offcpu_ns: int = 0, resp_first_end_ns: int = 0, resp_sole: bool = False,
                 resp_bytes: int | None = None, end_ns: int = 0, rv: int | None = None, span_id: bytes | None = None,
                 call: Call | None = None) -> None:
        self.request = request
        self.kind = kind
        self.start_ns = start_ns
        self.pid = pid
        self.tid = tid
        self.offcpu_ns = offcpu_ns
        self.msg_seq = msg_seq
        self.sole = sole
        self.deadline_ns = deadline_ns
        self.events = [] if events is None else events
        self.req_bytes = req_bytes
        self.response = response
        self.resp_tid = resp_tid
        self.resp_offcpu_ns = resp_offcpu_ns
        self.resp_first_end_ns = resp_first_end_ns
        self.resp_sole = resp_sole
        self.resp_bytes = resp_bytes
        self.end_ns = end_ns
        self.rv = rv
        self.span_id = new_span_id() if span_id is None else span_id
        self.call = call


class _HttpConn(ConnState):
    """Requests waiting for a response and responses waiting for their end, on one connection."""

    __slots__ = ("pending", "finishing", "last_msg", "last_msg_seq", "last_msg_exchange", "split_bytes")

    def __init__(self) -> None:
        self.pending: deque[_Exchange] = deque()  # waiting for a response head, oldest first
        self.finishing: list[_Exchange] = []  # response head seen, waiting for its end
        self.last_msg = _NO_MSG
        self.last_msg_seq = 0
        self.last_msg_exchange: _Exchange | None = None  # the sole request of the last request message
        self.split_bytes = 0  # bytes of the message in flight before an idle gap cut it

    def waiting(self) -> int:
        return len(self.pending) + len(self.finishing)

    def data_arrives(self, b: SpanBuilder, conn: Conn, ev: DataEvent, out: list[Span]) -> None:
        if self.finishing and int(ev.direction) == conn.last_direction and not looks_like_http(ev.payload):
            # More of the response message after a pause: its end is here when it completes the known length.
            self._progress(b, conn, self.split_bytes + ev.prev_bytes + ev.size, ev.end_ns, out)

    def more_arrives(self, b: SpanBuilder, conn: Conn, ev: DataMoreEvent, snap: Snapshot | None,
                     out: list[Span]) -> None:
        if not self.finishing or int(ev.direction) != conn.last_direction:
            return
        # Bytes of a response whose head was decoded: the message may be complete with them.
        if snap is None:
            self._progress(b, conn, self.split_bytes + ev.offset + len(ev.payload), ev.end_ns, out)
        elif not looks_like_http(bytes(snap.data[:16])):
            base = self.split_bytes + snap.start.prev_bytes
            self._progress(b, conn, base + ev.offset + len(ev.payload), ev.end_ns, out)

    def message_begins(self, b: SpanBuilder, conn: Conn, ev: DataEvent, same_direction: bool,
                       out: list[Span]) -> bool:
        if same_direction and not conn.opaque and not looks_like_http(ev.payload):
            # An idle gap cut an HTTP message (a slow body): it goes on; its end comes with the next message.
            self.split_bytes += ev.prev_bytes
            b.stats.split_messages += 1
            return True
        if ev.prev_end_ns or self.finishing or self.last_msg != _NO_MSG:
            self.end_message(b, conn, ev.prev_end_ns or None, ev.prev_bytes + self.split_bytes, out)
        self.split_bytes = 0
        return False

    def attach_fault(self, b: SpanBuilder, event: Event) -> bool:
        if self.finishing:
            add_event(b, self.finishing[-1].events, event)
        elif self.pending:
            add_event(b, self.pending[0].events, event)
        else:
            return False
        return True

    def expire(self, b: SpanBuilder, conn: Conn, now_ns: int, out: list[Span]) -> bool:
        if self.finishing and any(x.deadline_ns <= now_ns for x in self.finishing):
            keep = []
            for x in self.finishing:
                if x.deadline_ns <= now_ns:
                    _finish_estimated(b, conn, x, out)
                else:
                    keep.append(x)
            self.finishing = keep
        while self.pending and self.pending[0].deadline_ns <= now_ns:
            x = self.pending.popleft()
            _emit_incomplete(b, conn, x, x.deadline_ns, f"no response within {b.config.response_timeout:g}s", out)
        return bool(self.pending or self.finishing)

    def close(self, b: SpanBuilder, conn: Conn, at_ns: int, why: str, last_end_ns: int | None, last_bytes: int,
              out: list[Span]) -> None:
        self.end_message(b, conn, last_end_ns, last_bytes, out)
        for x in self.finishing:
            _finish_estimated(b, conn, x, out)
        self.finishing.clear()
        while self.pending:
            x = self.pending.popleft()
            _emit_incomplete(b, conn, x, at_ns, why, out)

    def end_message(self, b: SpanBuilder, conn: Conn, end_ns: int | None, total: int, out: list[Span]) -> None:
        """The message before the current one ended at `end_ns` (None: unknown) after `total` bytes."""
        if end_ns is None:
            for x in self.finishing:
                _finish_estimated(b, conn, x, out)
            self.finishing.clear()
        if self.last_msg == _REQ_MSG and self.last_msg_exchange is not None and end_ns is not None:
            self.last_msg_exchange.req_bytes = total
        for x in self.finishing:
            assert end_ns is not None
            x.end_ns = end_ns
            if x.resp_sole:
                x.resp_bytes = total
            _emit_http(b, conn, x, out)
        self.finishing.clear()
        if self.last_msg == _RESP_MSG and self.pending and end_ns is not None:
            # Requests still waiting that arrived before this response message were answered inside it, after a
            # first response whose body hid their heads from the snapshot (pipelining): HTTP/1 answers in order.
            resp_kind = self.pending[0].kind
            while self.pending and self.pending[0].msg_seq < self.last_msg_seq and self.pending[0].kind == resp_kind:
                x = self.pending.popleft()
                x.end_ns = end_ns
                b.stats.unseen_responses += 1
                _emit_http(b, conn, x, out)
        self.last_msg = _NO_MSG
        self.last_msg_exchange = None
        if not self.pending and not self.finishing:
            b.conns.waiting.discard(conn.sock)

    def _progress(self, b: SpanBuilder, conn: Conn, position: int, end_ns: int, out: list[Span]) -> None:
        """`position` bytes of the response message have moved, the last at `end_ns`: emit the exchanges waiting
        for its end once every length is known and reached (the next message or a close would tell only later,
        and a keep-alive connection's last response would wait for the end timeout and get an estimated end)."""
        need = 0
        for x in self.finishing:
            r = x.response
            if r is None or r.length is None:
                return  # chunked past the snapshot, or until close: only the message end can tell
            need = max(need, r.offset + r.length)
        if position < need:
            return
        for x in self.finishing:
            x.end_ns = end_ns
            if x.resp_sole:
                x.resp_bytes = need
            _emit_http(b, conn, x, out)
        self.finishing.clear()
        b.stats.ended_by_length += 1
        if not self.pending:
            b.conns.waiting.discard(conn.sock)


class _Http:
    """HTTP/1.x: the WireProtocol of request and response heads."""

    name = "http"
    streams = False
    body_continues = True  # bytes that are no head, on an HTTP connection, are body bytes (a 100-continue, a stream)

    def assemble(self, conn: Conn, data: bytes | bytearray, decoded: int) -> int | None:
        # A method and its space, or "HTTP/1." (the test reads no further than 16 bytes: a bytearray is sliced, bytes
        # are not copied).
        http_like = looks_like_http(data if isinstance(data, bytes) else bytes(data[:16]))
        if not http_like and conn.proto is not self:
            return None
        # A head is decoded once whole; bytes on an HTTP connection that are no head are body bytes.
        # find(), not `in`: a bytes `in` first tries the operand as an integer, raising and clearing a TypeError.
        if (http_like and data.find(b"\r\n\r\n") >= 0) or (not http_like and len(data) >= _HTTP_SNIFF):
            return SETTLE
        return WAIT

    def on_message(self, b: SpanBuilder, conn: Conn, ev: DataEvent, snap: Snapshot | None, base: int,
                   out: list[Span]) -> bool:
        data = ev.payload
        if not looks_like_http(data):
            return False
        if data.startswith(b"HTTP/"):
            return self._on_responses(b, conn, ev, out)
        reqs = parse_requests(data)
        if not reqs:
            return False
        st = self._claim(conn)
        ingress = ev.direction == _INGRESS
        kind = _SERVER if ingress else _CLIENT
        start = ev.end_ns if ingress else ev.ts_ns
        deadline = start + int(b.config.response_timeout * _NS)
        faults = take_faults(b, conn)
        sole = len(reqs) == 1
        contexts = () if ingress else b.causes.tasks.chain(ev.pid, ev.tid, ev.ts_ns)
        for req in reqs:
            if len(st.pending) >= b.config.max_pending_per_connection:
                st.pending.popleft()
                b.stats.pending_dropped += 1
            x = _Exchange(req, kind, start, ev.pid, ev.tid, ev.offcpu_ns, conn.seq, sole, deadline, events=faults,
                          rv=ev.rv, span_id=b.new_span_id())
            if ingress:
                b.causes.request_read(ev.pid, ev.tid, x.span_id, start)
            else:
                x.call = b.causes.call_made(ev.pid, ev.tid, start, conn.sock, out, contexts)
            faults = []
            st.pending.append(x)
        st.last_msg = _REQ_MSG
        st.last_msg_seq = conn.seq
        st.last_msg_exchange = st.pending[-1] if sole and st.pending else None
        b.conns.waiting.add(conn.sock)
        return True

    def _claim(self, conn: Conn) -> _HttpConn:
        conn.proto = self
        if not isinstance(conn.state, _HttpConn):
            conn.state = _HttpConn()
        return conn.state

    def _on_responses(self, b: SpanBuilder, conn: Conn, ev: DataEvent, out: list[Span]) -> bool:
        # A response read answers a request we wrote (client), a response written answers one we read (server).
        kind = _CLIENT if ev.direction == _INGRESS else _SERVER
        pending = conn.state.pending if isinstance(conn.state, _HttpConn) else ()
        resps = parse_responses(ev.payload, [x.request.method for x in pending if x.kind == kind])
        if not resps:
            return False
        st = self._claim(conn)
        any_final = False
        contexts = b.causes.tasks.chain(ev.pid, ev.tid, ev.ts_ns) if kind == _SERVER else ()
        sole = not resps[0].interim and (len(resps) == 1 or sum(1 for r in resps if not r.interim) == 1)
        for resp in resps:
            if resp.interim:
                continue
            any_final = True
            if not st.pending or st.pending[0].kind != kind:
                b.stats.unmatched_responses += 1
                continue
            x = st.pending.popleft()
            x.response = resp
            if x.call is not None:
                b.causes.response_read(x.call, ev.tid, ev.end_ns)
            else:
                if contexts:
                    b.causes.handled(ev.pid, x.span_id, contexts, ev.ts_ns, out)
                b.causes.request_done(x.pid, x.tid, x.span_id, ev.ts_ns, out)
            x.resp_tid = ev.tid
            x.resp_offcpu_ns = ev.offcpu_ns
            x.resp_first_end_ns = ev.end_ns
            if resp.length is not None and resp.offset + resp.length <= ev.size:
                # The whole response went in the first syscall: its end is known now.
                x.end_ns = ev.end_ns
                x.resp_bytes = resp.length
                _emit_http(b, conn, x, out)
            else:
                x.resp_sole = sole and resp.offset == 0
                x.deadline_ns = ev.end_ns + int(b.config.message_end_timeout * _NS)
                x.events.extend(take_faults(b, conn))
                st.finishing.append(x)
            if resp.status == 101:
                conn.opaque = True  # protocol switch (WebSocket, h2c): no more HTTP/1 on this connection
        if any_final:
            st.last_msg = _RESP_MSG
            st.last_msg_seq = conn.seq
        if st.pending or st.finishing:
            b.conns.waiting.add(conn.sock)
        else:
            b.conns.waiting.discard(conn.sock)
        return True


HTTP = _Http()


def _finish_estimated(b: SpanBuilder, conn: Conn, x: _Exchange, out: list[Span]) -> None:
    x.end_ns = x.resp_first_end_ns
    b.stats.end_estimated += 1
    _emit_http(b, conn, x, out, estimated=True)


def _emit_incomplete(b: SpanBuilder, conn: Conn, x: _Exchange, end_ns: int, why: str, out: list[Span]) -> None:
    x.end_ns = max(end_ns, x.start_ns)
    b.stats.incomplete += 1
    _emit_http(b, conn, x, out, incomplete=why)


def _emit_http(b: SpanBuilder, conn: Conn, x: _Exchange, out: list[Span], *, estimated: bool = False,
               incomplete: str = "") -> None:
    req, resp = x.request, x.response
    server = x.kind == _SERVER
    proc = b.procs.get(x.pid, conn.comm)
    attrs: Attributes = {"http.request.method": req.method}
    if req.path:
        attrs["url.path"] = req.path
    if req.query:
        attrs["url.query"] = req.query
    scheme = "https" if conn.tls else "http"
    attrs["url.scheme"] = scheme
    server_attrs(attrs, conn, req.host, server)
    if not server:
        authority = req.host or _join_host(conn.remote.addr, conn.remote.port)
        attrs["url.full"] = f"{scheme}://{authority}{req.target}" if req.target.startswith("/") else req.target
    connection_attrs(attrs, conn, "http", local=True)
    version = req.version or (resp.version if resp else "")
    if version:
        attrs["network.protocol.version"] = version
    ua = req.headers.get("user-agent")
    if ua:
        attrs["user_agent.original"] = ua
    req_body = req.content_length if req.content_length is not None else req.body_size
    if req_body is None and x.sole and x.req_bytes is not None and req.head_length is not None:
        req_body = max(0, x.req_bytes - req.head_length)
    if req_body is not None:
        attrs["http.request.body.size"] = req_body
    if req.truncated:
        attrs["helix.http.request_truncated"] = True
    status = _UNSET
    message = ""
    if resp is not None:
        attrs["http.response.status_code"] = resp.status
        resp_body = resp.body_size if resp.body_size is not None else resp.content_length
        if resp_body is None and x.resp_bytes is not None and resp.head_length is not None:
            resp_body = max(0, x.resp_bytes - resp.head_length)
        if resp_body is not None:
            attrs["http.response.body.size"] = resp_body
        if resp.status >= 500 or (not server and resp.status >= 400):
            status = _ERROR
            attrs["error.type"] = str(resp.status)
    elif incomplete:
        status = _ERROR
        message = incomplete
        attrs["helix.incomplete"] = True
        attrs["error.type"] = "incomplete"
    else:
        attrs["helix.http.response_seen"] = False
    if estimated:
        attrs["helix.end_estimated"] = True
    if resp is not None and x.resp_tid == x.tid and x.resp_offcpu_ns >= x.offcpu_ns:
        attrs["helix.offcpu_ns"] = x.resp_offcpu_ns - x.offcpu_ns
    process_attrs(attrs, x.pid, x.tid, conn.comm)
    # Semconv HTTP span name: "{method} {http.route}", and just "{method}" when the route is unknown, as it is
    # from the wire (a raw path would make names high-cardinality); the path is in `url.path`.
    span = b.span(req.method, x.kind, x.start_ns, x.end_ns, proc, attrs, extract(req.headers), x.events, x.rv,
                  span_id=x.span_id)
    span.status_code, span.status_message = status, message
    b.stats.http_spans += 1
    if x.kind == _SERVER:
        b.causes.request_ended(x.pid, x.span_id, x.end_ns)
    if x.call is not None:
        b.causes.finish(x.call, span, x.end_ns, out)  # a worker's call may wait for the request it was made for
        return
    if resp is None:
        b.causes.request_done(x.pid, x.tid, x.span_id, x.end_ns, out)
    out.append(span)


def split_host(host: str) -> tuple[str, int | None]:
    """A Host header value as (host, port); IPv6 literals lose their brackets."""
    host = host.strip()
    if not host:
        return "", None
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, None
        name, rest = host[1:end], host[end + 1 :]
        port_s = rest[1:] if rest.startswith(":") else ""
    else:
        name, sep, port_s = host.rpartition(":")
        if not sep or ":" in name:
            return host, None
    if port_s.isdigit() and port_s.isascii() and int(port_s) < 65536:
        return name, int(port_s)
    return name, None


# A node's requests name a handful of hosts: each Host value is split once (bounded like decode.py's endpoints).
_hosts: dict[str, tuple[str, int | None]] = {}
_HOSTS_MAX = 4096


def server_attrs(attrs: Attributes, conn: Conn, authority: str, server: bool) -> None:
    """server.* (from the Host or :authority, else the socket) and, on the server's side, client.*."""
    split = _hosts.get(authority)
    if split is None:
        if len(_hosts) >= _HOSTS_MAX:
            _hosts.clear()
        split = _hosts[authority] = split_host(authority)
    host, port = split
    if server:
        attrs["server.address"] = host or conn.local.addr
        attrs["server.port"] = port if port is not None else conn.local.port
        attrs["client.address"] = conn.remote.addr
        attrs["client.port"] = conn.remote.port
    else:
        attrs["server.address"] = host or conn.remote.addr
        attrs["server.port"] = port if port is not None else conn.remote.port


def _join_host(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
