"""Kernel events into spans: HTTP/1.x exchanges, MQTT publishes, TCP connects and slow file I/O.

Sans-I/O: `SpanBuilder.feed(events)` returns the spans those events completed and `flush(now)` the ones whose
wait timed out; the asyncio source around it only moves events in and spans out.

Timing model. The probes emit one DataEvent per *message* (a run of syscalls in one direction, cut by an idle
gap) at its first syscall, and that event closes the books on the previous message (`prev_end_ns`,
`prev_bytes`). While the message's snapshot is short of `payload_bytes`, DataMoreEvents follow with the bytes of
its later syscalls; the builder assembles them (see `_Snapshot`) and decodes when enough is there to decide:
an HTTP head is complete, MQTT packets are whole (each decoded as soon as it is), the snapshot is full, or the
next message, a close or the deadline came. So:
- a request written by a client starts at that write's sys_enter; a request read by a server starts at that
  read's sys_exit, because sys_enter of a blocking read on a keep-alive connection includes the idle wait for
  the next request (the bytes are only known to be there when the read returns);
- a response ends when its message ends: the next message's `prev_end_ns` or the close's `last_end_ns`. When the
  snapshot proves the response fitted in the first syscall (Content-Length or a chunk walk inside the
  snapshot), its end is that syscall's exit and the span is emitted at once;
- if nothing tells the end in time, the first syscall's exit is used and the span says `helix.end_estimated`;
- an MQTT receive starts when the read that returned the packet's first byte returned, and ends when the read
  with its last byte did; a publish runs from the write of its first byte to the write of its last.

State is bounded: connections and processes live in LRU maps with counted evictions, requests waiting for a
response are capped per connection, and closing a socket or ending a process frees its state.
"""
from __future__ import annotations

import bisect
import dataclasses
import errno
import logging
import os
import socket
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from ....errors import ConfigError
from ....model import Attributes, Event, Resource, Scope, Source, Span, SpanKind, StatusCode, new_span_id, new_trace_id
from ....propagation import SpanContext, extract, format_tracestate
from ....protocols import mqtt
from ....protocols.http1 import HttpRequest, HttpResponse, looks_like_http, parse_requests, parse_responses
from ....net.retry import RateLimitedLog
from ..events import (
    CloseEvent,
    ConnectEvent,
    DataEvent,
    DataMoreEvent,
    Direction,
    Endpoint,
    ExecEvent,
    ExitEvent,
    FaultKind,
    FileIoEvent,
    FileOp,
    KernelEvent,
    Role,
    TcpFaultEvent,
)

__all__ = [
    "SpanBuilderConfig",
    "SpanBuilderStats",
    "SpanBuilder",
    "Clock",
    "SystemClock",
    "FixedClock",
    "SCOPE",
    "split_host",
]

log = logging.getLogger(__name__)
_rl = RateLimitedLog(log)

SCOPE = Scope("helix.ebpf")
_NS = 1_000_000_000

_UNKNOWN, _HTTP, _MQTT, _OPAQUE = range(4)
_NO_MSG, _REQ_MSG, _RESP_MSG = range(3)
# Messages in a row that no parser recognised before a connection is written off as opaque (TLS, binary).
_OPAQUE_AFTER = 3
# Bytes of a non-HTTP-looking snapshot on an HTTP connection that tell body bytes from a head arriving in
# pieces: the longest method and its space ("OPTIONS ").
_HTTP_SNIFF = 8
_MAX_TOPIC_ALIASES = 64

_FAULT_NAMES = {
    FaultKind.RETRANSMIT: "tcp.retransmit",
    FaultKind.SEND_RESET: "tcp.reset.sent",
    FaultKind.RECEIVE_RESET: "tcp.reset.received",
}
_TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}
_FILE_SPAN_NAMES = {FileOp.READ: "file.read", FileOp.WRITE: "file.write", FileOp.FSYNC: "file.fsync"}
_MQTT_VERSIONS = {mqtt.MQTT_31: "3.1", mqtt.MQTT_311: "3.1.1", mqtt.MQTT_5: "5"}


class Clock(Protocol):
    """Where the builder reads the kernel monotonic clock and its offset to the wall clock."""

    def monotonic_ns(self) -> int:
        """CLOCK_MONOTONIC now, the clock `bpf_ktime_get_ns` reads."""
        ...

    def wall_offset_ns(self) -> int:
        """Wall clock minus CLOCK_MONOTONIC, measured now."""
        ...


@dataclass(slots=True)
class SystemClock:
    """The host's clocks."""

    def monotonic_ns(self) -> int:
        """CLOCK_MONOTONIC now."""
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def wall_offset_ns(self) -> int:
        """Wall minus monotonic, taken from the tightest of three bracketed readings."""
        best: tuple[int, int] | None = None
        for _ in range(3):
            m0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            wall = time.time_ns()
            m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            if best is None or m1 - m0 < best[0]:
                best = (m1 - m0, wall - (m0 + m1) // 2)
        assert best is not None
        return best[1]


@dataclass(slots=True)
class FixedClock:
    """A clock that says what it is told, for replaying recorded events deterministically."""

    offset_ns: int = 0
    now_ns: int = 0

    def monotonic_ns(self) -> int:
        """The `now_ns` set by the caller."""
        return self.now_ns

    def wall_offset_ns(self) -> int:
        """The `offset_ns` set by the caller."""
        return self.offset_ns


@dataclass(slots=True)
class SpanBuilderConfig:
    """Bounds and timeouts of the span builder."""

    max_connections: int = 16384
    max_processes: int = 4096
    max_pending_per_connection: int = 64  # requests waiting for a response on one connection
    response_timeout: float = 30.0  # s: a request with no response by then is emitted as incomplete
    message_end_timeout: float = 2.0  # s: a response whose message end is unknown by then gets an estimate
    clock_resync: float = 60.0  # s between re-measurements of the wall-clock offset
    max_events_per_span: int = 32
    max_pending_faults: int = 16  # faults held for the next span of a connection
    broker_ports: tuple[int, ...] = (1883, 8883)
    payload_bytes: int = 256  # what the probes send of each message: a shorter snapshot may be topped up
    host_name: str = field(default_factory=socket.gethostname)

    def __post_init__(self) -> None:
        for key in ("max_connections", "max_processes", "max_pending_per_connection", "max_events_per_span"):
            if getattr(self, key) < 1:
                raise ConfigError(f"sources.ebpf.{key}", f"must be at least 1, got {getattr(self, key)}")
        for key in ("response_timeout", "message_end_timeout", "clock_resync"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"sources.ebpf.{key}", f"must be a positive number of seconds, got {getattr(self, key)}")


@dataclass(slots=True)
class SpanBuilderStats:
    """Counters; every event that does not become (part of) a span is counted in one of them."""

    events: int = 0
    spans: int = 0
    http_spans: int = 0
    mqtt_spans: int = 0
    connect_spans: int = 0
    file_spans: int = 0
    unparsed: int = 0  # messages no parser recognised (TLS, binary, unknown protocols)
    continuation: int = 0  # body bytes of an HTTP message that began in an earlier snapshot
    unmatched_responses: int = 0  # a response with no request waiting for it
    unseen_responses: int = 0  # requests answered inside a response message whose head the snapshot missed
    incomplete: int = 0  # requests emitted without a response (timeout, close, exit)
    end_estimated: int = 0  # responses whose message end never came; end is the first syscall's exit
    ended_by_length: int = 0  # response messages ended when their bytes reached the length their head gave
    pending_dropped: int = 0  # requests dropped at the per-connection cap or with an evicted connection
    broker_side: int = 0  # MQTT packets on the broker's own connections, not spans
    topped_up: int = 0  # message snapshots completed from the bytes of later syscalls
    late_more: int = 0  # top-up bytes for a message already decoded (its head was complete without them)
    more_gaps: int = 0  # top-ups that did not follow on (a record lost, a copy failed): assembly stopped there
    split_messages: int = 0  # same-direction continuations of an HTTP message cut by an idle gap
    mqtt_other: int = 0  # MQTT control packets that make no span (CONNECT, PUBACK, PINGREQ, ...)
    evicted_connections: int = 0
    evicted_processes: int = 0
    faults_attached: int = 0
    faults_orphaned: int = 0
    span_events_dropped: int = 0
    internal_errors: int = 0


@dataclass(slots=True)
class _Proc:
    pid: int
    comm: str
    exe: str
    resource: Resource


@dataclass(slots=True)
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


@dataclass(slots=True)
class _Snapshot:
    """The first bytes of the message in flight, assembled from its DataEvent and the DataMoreEvents after it."""

    start: DataEvent
    data: bytearray
    offsets: list[int]  # where each syscall's bytes begin in `data`
    times: list[tuple[int, int]]  # (sys_enter, sys_exit) of each of those syscalls
    open: bool  # more bytes may still come: contiguous so far and short of payload_bytes
    deadline_ns: int
    decoded: int = -1  # bytes decoded so far (whole MQTT packets); -1 until the message is first decoded

    def times_of(self, first: int, last: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The syscalls that moved byte `first` and byte `last` of the snapshot."""
        i = max(0, bisect.bisect_right(self.offsets, first) - 1)
        j = max(0, bisect.bisect_right(self.offsets, last) - 1)
        return self.times[i], self.times[j]


@dataclass(slots=True)
class _Conn:
    sock: int
    pid: int
    comm: str
    role: Role
    local: Endpoint
    remote: Endpoint
    proto: int = _UNKNOWN
    seq: int = 0  # messages seen
    misses: int = 0  # consecutive unrecognised messages
    last_msg: int = _NO_MSG
    last_msg_seq: int = 0
    last_msg_exchange: _Exchange | None = None  # the sole request of the last request message
    pending: deque[_Exchange] = field(default_factory=deque)  # waiting for a response head, oldest first
    finishing: list[_Exchange] = field(default_factory=list)  # response head seen, waiting for its end
    mqtt_version: int | None = None
    mqtt_client_id: str = ""
    broker: bool = False
    topic_aliases: dict[tuple[int, int], str] = field(default_factory=dict)
    faults: list[Event] = field(default_factory=list)
    snap: _Snapshot | None = None  # the message in flight while its bytes are still being assembled
    last_direction: int = -1
    split_bytes: int = 0  # bytes of the message in flight before an idle gap cut it


class SpanBuilder:
    """Turns decoded kernel events into spans; pure state machine, no I/O.

    The caller feeds events in ring-buffer order and calls `flush` about once a second with the current kernel
    monotonic time, so that exchanges whose ending never shows up still leave as spans.
    """

    def __init__(self, config: SpanBuilderConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or SpanBuilderConfig()
        self.clock: Clock = clock or SystemClock()
        self.stats = SpanBuilderStats()
        self._conns: OrderedDict[int, _Conn] = OrderedDict()
        self._by_pid: dict[int, set[int]] = {}
        self._procs: OrderedDict[int, _Proc] = OrderedDict()
        self._waiting: set[int] = set()  # socks with requests or responses waiting
        self._partials: set[int] = set()  # socks whose message in flight is still being assembled
        self._offset_ns = 0
        self._synced_at: int | None = None
        self._resync()

    # -- public ------------------------------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """Connections with state."""
        return len(self._conns)

    @property
    def process_count(self) -> int:
        """Processes with cached names and resources."""
        return len(self._procs)

    @property
    def pending_count(self) -> int:
        """HTTP exchanges waiting for a response or for its end."""
        return sum(len(c.pending) + len(c.finishing) for c in self._conns.values())

    @property
    def wall_offset_ns(self) -> int:
        """The offset added to kernel monotonic times to get Unix-epoch times."""
        return self._offset_ns

    def service_name(self, pid: int, comm: str) -> str:
        """The `service.name` this builder gives spans of process `pid` seen running as `comm` now."""
        return self._proc(pid, comm).resource.service_name

    def feed(self, events: Iterable[KernelEvent]) -> list[Span]:
        """Consume events in ring-buffer order; return the spans they completed."""
        self._maybe_resync()
        out: list[Span] = []
        for ev in events:
            self.stats.events += 1
            try:
                self._dispatch(ev, out)
            except Exception as exc:  # one bad event must not take the source down; counted and logged
                self.stats.internal_errors += 1
                _rl.warning("span builder failed on %s: %r", type(ev).__name__, exc)
                log.debug("span builder failure", exc_info=True)
        self.stats.spans += len(out)
        return out

    def flush(self, now_mono_ns: int) -> list[Span]:
        """Emit what waited too long as of kernel monotonic time `now_mono_ns`."""
        self._maybe_resync()
        out: list[Span] = []
        for sock in list(self._partials):
            conn = self._conns.get(sock)
            if conn is None or conn.snap is None:
                self._partials.discard(sock)
            elif conn.snap.deadline_ns <= now_mono_ns:
                self._settle(conn, out)
        for sock in list(self._waiting):
            conn = self._conns.get(sock)
            if conn is None:
                self._waiting.discard(sock)
                continue
            if conn.finishing and any(x.deadline_ns <= now_mono_ns for x in conn.finishing):
                keep = []
                for x in conn.finishing:
                    if x.deadline_ns <= now_mono_ns:
                        self._finish_estimated(conn, x, out)
                    else:
                        keep.append(x)
                conn.finishing = keep
            while conn.pending and conn.pending[0].deadline_ns <= now_mono_ns:
                x = conn.pending.popleft()
                self._emit_incomplete(conn, x, x.deadline_ns, f"no response within {self.config.response_timeout:g}s", out)
            if not conn.pending and not conn.finishing:
                self._waiting.discard(sock)
        self.stats.spans += len(out)
        return out

    # -- dispatch ----------------------------------------------------------------------------------------------

    def _dispatch(self, ev: KernelEvent, out: list[Span]) -> None:
        if isinstance(ev, DataEvent):
            self._on_data(ev, out)
        elif isinstance(ev, DataMoreEvent):
            self._on_more(ev, out)
        elif isinstance(ev, CloseEvent):
            self._on_close(ev, out)
        elif isinstance(ev, ConnectEvent):
            self._on_connect(ev, out)
        elif isinstance(ev, TcpFaultEvent):
            self._on_fault(ev)
        elif isinstance(ev, FileIoEvent):
            self._on_file_io(ev, out)
        elif isinstance(ev, ExecEvent):
            self._on_exec(ev)
        elif isinstance(ev, ExitEvent):
            self._on_exit(ev, out)

    # -- clock -------------------------------------------------------------------------------------------------

    def _resync(self) -> None:
        self._offset_ns = self.clock.wall_offset_ns()
        self._synced_at = self.clock.monotonic_ns()

    def _maybe_resync(self) -> None:
        now = self.clock.monotonic_ns()
        if self._synced_at is None or now - self._synced_at >= int(self.config.clock_resync * _NS):
            self._resync()

    # -- processes ---------------------------------------------------------------------------------------------

    def _proc(self, pid: int, comm: str = "") -> _Proc:
        proc = self._procs.get(pid)
        if proc is not None:
            self._procs.move_to_end(pid)
            if comm and comm != proc.comm and not proc.exe:
                proc.comm = comm
                proc.resource = self._resource(pid, comm, "")
            return proc
        proc = _Proc(pid, comm, "", self._resource(pid, comm, ""))
        self._procs[pid] = proc
        if len(self._procs) > self.config.max_processes:
            self._procs.popitem(last=False)
            self.stats.evicted_processes += 1
        return proc

    def _resource(self, pid: int, comm: str, exe: str) -> Resource:
        name = comm
        base = os.path.basename(exe) if exe else ""
        # comm is cut at 15 characters by the kernel; the exec'd file name is the full one.
        if base and (not comm or (len(comm) >= 15 and base.startswith(comm))):
            name = base
        attrs: Attributes = {
            "service.name": name or "unknown_service",
            "process.pid": pid,
            "host.name": self.config.host_name,
        }
        if comm:
            attrs["process.executable.name"] = comm
        if exe:
            attrs["process.executable.path"] = exe
        return Resource.of(attrs)

    def _on_exec(self, ev: ExecEvent) -> None:
        proc = self._proc(ev.pid, ev.comm)
        proc.comm, proc.exe = ev.comm, ev.filename
        proc.resource = self._resource(ev.pid, ev.comm, ev.filename)

    def _on_exit(self, ev: ExitEvent, out: list[Span]) -> None:
        # Sockets closed by the exit itself produce no close(2): free them here.
        for sock in list(self._by_pid.get(ev.pid, ())):
            conn = self._conns.get(sock)
            if conn is None:
                continue
            if conn.snap is not None:
                self._settle(conn, out)
            for x in conn.finishing:
                self._finish_estimated(conn, x, out)
            conn.finishing.clear()
            while conn.pending:
                x = conn.pending.popleft()
                self._emit_incomplete(conn, x, ev.ts_ns, "process exited before a response", out)
            self._drop_conn(conn)
        self._by_pid.pop(ev.pid, None)
        self._procs.pop(ev.pid, None)

    # -- connections -------------------------------------------------------------------------------------------

    def _conn_for(self, ev: DataEvent) -> _Conn:
        conn = self._conns.get(ev.sock)
        if conn is None:
            conn = _Conn(ev.sock, ev.pid, ev.comm, ev.role, ev.local, ev.remote)
            self._conns[ev.sock] = conn
            self._by_pid.setdefault(ev.pid, set()).add(ev.sock)
            if len(self._conns) > self.config.max_connections:
                _, victim = next(iter(self._conns.items()))
                self._evict(victim)
            return conn
        self._conns.move_to_end(ev.sock)
        if conn.pid != ev.pid:  # the socket was inherited or passed on: index it under the new owner
            self._unindex(conn)
            conn.pid = ev.pid
            self._by_pid.setdefault(ev.pid, set()).add(ev.sock)
        conn.comm = ev.comm or conn.comm
        if ev.role != Role.UNKNOWN:
            conn.role = ev.role
        return conn

    def _unindex(self, conn: _Conn) -> None:
        socks = self._by_pid.get(conn.pid)
        if socks is not None:
            socks.discard(conn.sock)
            if not socks:
                del self._by_pid[conn.pid]

    def _drop_conn(self, conn: _Conn) -> None:
        if self._conns.get(conn.sock) is conn:
            del self._conns[conn.sock]
        self._unindex(conn)
        self._waiting.discard(conn.sock)
        self._partials.discard(conn.sock)
        self.stats.faults_orphaned += len(conn.faults)

    def _evict(self, conn: _Conn) -> None:
        self.stats.evicted_connections += 1
        self.stats.pending_dropped += len(conn.pending) + len(conn.finishing)
        self._drop_conn(conn)

    def _on_close(self, ev: CloseEvent, out: list[Span]) -> None:
        conn = self._conns.get(ev.sock)
        if conn is None:
            return
        if conn.snap is not None:
            self._settle(conn, out)
        self._end_message(conn, ev.last_end_ns or None, ev.last_bytes, out)
        for x in conn.finishing:
            self._finish_estimated(conn, x, out)
        conn.finishing.clear()
        while conn.pending:
            x = conn.pending.popleft()
            self._emit_incomplete(conn, x, ev.ts_ns, "connection closed before a response", out)
        self._drop_conn(conn)

    def _on_fault(self, ev: TcpFaultEvent) -> None:
        event = Event(
            _FAULT_NAMES.get(ev.kind, "tcp.fault"),
            ev.ts_ns + self._offset_ns,
            {"tcp.state": _TCP_STATES.get(ev.state, str(ev.state)), "network.peer.address": ev.remote.addr,
             "network.peer.port": ev.remote.port},
        )
        conn = self._conns.get(ev.sock)
        if conn is None:
            self.stats.faults_orphaned += 1
            return
        if conn.finishing:
            self._add_event(conn.finishing[-1].events, event)
        elif conn.pending:
            self._add_event(conn.pending[0].events, event)
        elif len(conn.faults) < self.config.max_pending_faults:
            conn.faults.append(event)
            return
        else:
            self.stats.faults_orphaned += 1
            return
        self.stats.faults_attached += 1

    def _add_event(self, events: list[Event], event: Event) -> None:
        if len(events) < self.config.max_events_per_span:
            events.append(event)
        else:
            self.stats.span_events_dropped += 1

    def _take_faults(self, conn: _Conn) -> list[Event]:
        if not conn.faults:
            return []
        faults, conn.faults = conn.faults, []
        self.stats.faults_attached += len(faults)
        return faults

    # -- data --------------------------------------------------------------------------------------------------

    def _on_data(self, ev: DataEvent, out: list[Span]) -> None:
        conn = self._conns.get(ev.sock)
        if conn is not None and conn.snap is not None:
            self._settle(conn, out)  # the message before this one is over: decode what is left of it
        conn = self._conn_for(ev)
        payload = ev.payload
        if conn.finishing and int(ev.direction) == conn.last_direction and not looks_like_http(payload):
            # More of the response message after a pause: its end is here when it completes the known length.
            self._response_progress(conn, conn.split_bytes + ev.prev_bytes + ev.size, ev.end_ns, out)
        n = len(payload)
        # The probes top a snapshot up only while it is contiguous and short of payload_bytes.
        more = n == ev.size and n < self.config.payload_bytes and conn.proto != _OPAQUE
        if not more or (b"\r\n\r\n" in payload and looks_like_http(payload)):
            self._on_message(conn, ev, None, out)  # decided by its first syscall, as most HTTP messages are
            return
        deadline = ev.end_ns + int(self.config.message_end_timeout * _NS)
        conn.snap = _Snapshot(ev, bytearray(ev.payload), [0], [(ev.ts_ns, ev.end_ns)], more, deadline)
        self._partials.add(ev.sock)
        self._advance(conn, out)

    def _on_more(self, ev: DataMoreEvent, out: list[Span]) -> None:
        conn = self._conns.get(ev.sock)
        snap = conn.snap if conn is not None else None
        if conn is not None and conn.finishing and int(ev.direction) == conn.last_direction:
            # Bytes of a response whose head was decoded: the message may be complete with them.
            if snap is None:
                self._response_progress(conn, conn.split_bytes + ev.offset + len(ev.payload), ev.end_ns, out)
            elif not looks_like_http(bytes(snap.data[:16])):
                base = conn.split_bytes + snap.start.prev_bytes
                self._response_progress(conn, base + ev.offset + len(ev.payload), ev.end_ns, out)
        if conn is None or snap is None or not snap.open or ev.direction != snap.start.direction:
            self.stats.late_more += 1
            return
        self._conns.move_to_end(ev.sock)
        if ev.offset != len(snap.data):
            # A record before this one was lost (ring buffer full) or its copy failed: the bytes after the hole
            # cannot be placed. Decode what is there.
            self.stats.more_gaps += 1
            snap.open = False
        elif ev.payload:
            if len(snap.offsets) == 1:
                self.stats.topped_up += 1
            snap.offsets.append(len(snap.data))
            snap.times.append((ev.ts_ns, ev.end_ns))
            room = self.config.payload_bytes - len(snap.data)
            snap.data += ev.payload[:room]
            snap.open = len(snap.data) < self.config.payload_bytes
            snap.deadline_ns = ev.end_ns + int(self.config.message_end_timeout * _NS)
        self._advance(conn, out)

    def _advance(self, conn: _Conn, out: list[Span]) -> None:
        """Decode what the snapshot allows now; keep it for more bytes when they could change the outcome."""
        snap = conn.snap
        assert snap is not None
        data = snap.data
        if not snap.open or conn.proto == _OPAQUE:
            self._settle(conn, out)
            return
        http_like = looks_like_http(bytes(data[:16]))  # a method and its space, or "HTTP/1."
        if http_like or conn.proto == _HTTP:
            # A head is decoded once whole; bytes on an HTTP connection that are no head are body bytes.
            if (http_like and b"\r\n\r\n" in data) or (not http_like and len(data) >= _HTTP_SNIFF):
                self._settle(conn, out)
            return
        # MQTT (or not known yet): decode whole packets as they complete, keep the snapshot open for the rest
        # (a broker pushes packet after packet with no reply in between).
        begin = max(snap.decoded, 0)
        end = _whole_mqtt_packets(data, begin)
        if end < 0:
            self._settle(conn, out)  # no MQTT framing: decode it for what it is
        elif end > begin:
            self._decode_part(conn, snap, begin, end, out)

    def _settle(self, conn: _Conn, out: list[Span]) -> None:
        """The message's snapshot is final: decode what was not decoded yet and forget it."""
        snap, conn.snap = conn.snap, None
        self._partials.discard(conn.sock)
        if snap is not None and snap.decoded < len(snap.data):
            self._decode_part(conn, snap, max(snap.decoded, 0), len(snap.data), out)

    def _decode_part(self, conn: _Conn, snap: _Snapshot, begin: int, end: int, out: list[Span]) -> None:
        ev = snap.start
        if begin or end != len(ev.payload):  # no copy for the usual message that came whole in its first syscall
            ev = dataclasses.replace(ev, payload=bytes(snap.data[begin:end]))
        first = snap.decoded < 0
        snap.decoded = end
        if first:
            self._on_message(conn, ev, snap, out)
            if conn.proto != _MQTT and conn.snap is snap:
                # Decoded for good (HTTP head, or nothing recognised): later top-ups have nothing to add.
                conn.snap = None
                self._partials.discard(conn.sock)
        elif conn.proto == _MQTT:
            if not self._on_mqtt(conn, ev, out, snap, begin):
                self.stats.unparsed += 1
        # other protocols are decoded once, at the first decode

    def _on_message(self, conn: _Conn, ev: DataEvent, snap: _Snapshot | None, out: list[Span]) -> None:
        self._proc(ev.pid, ev.comm)
        same_direction = conn.last_direction == int(ev.direction)
        conn.last_direction = int(ev.direction)
        if same_direction and conn.proto == _HTTP and not looks_like_http(ev.payload):
            # An idle gap cut an HTTP message (a slow body): it goes on; its end comes with the next message.
            conn.split_bytes += ev.prev_bytes
            self.stats.split_messages += 1
            return
        if ev.prev_end_ns or conn.finishing or conn.last_msg != _NO_MSG:
            self._end_message(conn, ev.prev_end_ns or None, ev.prev_bytes + conn.split_bytes, out)
        conn.split_bytes = 0
        conn.seq += 1
        if conn.proto == _OPAQUE:
            self.stats.unparsed += 1
            return
        handled = False
        if conn.proto in (_UNKNOWN, _HTTP):
            handled = self._on_http(conn, ev, out)
        if not handled and conn.proto in (_UNKNOWN, _MQTT):
            handled = self._on_mqtt(conn, ev, out, snap, 0)
        if handled:
            conn.misses = 0
            return
        if conn.proto == _HTTP:  # body bytes (after 100-continue, a streamed body) rather than a new head
            self.stats.continuation += 1
            return
        self.stats.unparsed += 1
        conn.misses += 1
        if conn.proto == _UNKNOWN and conn.misses >= _OPAQUE_AFTER:
            conn.proto = _OPAQUE

    def _end_message(self, conn: _Conn, end_ns: int | None, total: int, out: list[Span]) -> None:
        """The message before the current one ended at `end_ns` (None: unknown) after `total` bytes."""
        if end_ns is None:
            for x in conn.finishing:
                self._finish_estimated(conn, x, out)
            conn.finishing.clear()
        if conn.last_msg == _REQ_MSG and conn.last_msg_exchange is not None and end_ns is not None:
            conn.last_msg_exchange.req_bytes = total
        for x in conn.finishing:
            assert end_ns is not None
            x.end_ns = end_ns
            if x.resp_sole:
                x.resp_bytes = total
            self._emit_http(conn, x, out)
        conn.finishing.clear()
        if conn.last_msg == _RESP_MSG and conn.pending and end_ns is not None:
            # Requests still waiting that arrived before this response message were answered inside it, after a
            # first response whose body hid their heads from the snapshot (pipelining): HTTP/1 answers in order.
            resp_kind = conn.pending[0].kind
            while conn.pending and conn.pending[0].msg_seq < conn.last_msg_seq and conn.pending[0].kind == resp_kind:
                x = conn.pending.popleft()
                x.end_ns = end_ns
                self.stats.unseen_responses += 1
                self._emit_http(conn, x, out)
        conn.last_msg = _NO_MSG
        conn.last_msg_exchange = None
        if not conn.pending and not conn.finishing:
            self._waiting.discard(conn.sock)

    # -- HTTP --------------------------------------------------------------------------------------------------

    def _on_http(self, conn: _Conn, ev: DataEvent, out: list[Span]) -> bool:
        data = ev.payload
        if not looks_like_http(data):
            return False
        if data.startswith(b"HTTP/"):
            return self._on_http_responses(conn, ev, out)
        reqs = parse_requests(data)
        if not reqs:
            return False
        conn.proto = _HTTP
        ingress = ev.direction == Direction.INGRESS
        kind = SpanKind.SERVER if ingress else SpanKind.CLIENT
        start = ev.end_ns if ingress else ev.ts_ns
        deadline = start + int(self.config.response_timeout * _NS)
        faults = self._take_faults(conn)
        sole = len(reqs) == 1
        for req in reqs:
            if len(conn.pending) >= self.config.max_pending_per_connection:
                conn.pending.popleft()
                self.stats.pending_dropped += 1
            x = _Exchange(req, kind, start, ev.pid, ev.tid, ev.offcpu_ns, conn.seq, sole, deadline, events=faults,
                          rv=ev.rv)
            faults = []
            conn.pending.append(x)
        conn.last_msg = _REQ_MSG
        conn.last_msg_seq = conn.seq
        conn.last_msg_exchange = conn.pending[-1] if sole and conn.pending else None
        self._waiting.add(conn.sock)
        return True

    def _on_http_responses(self, conn: _Conn, ev: DataEvent, out: list[Span]) -> bool:
        # A response read answers a request we wrote (client), a response written answers one we read (server).
        kind = SpanKind.CLIENT if ev.direction == Direction.INGRESS else SpanKind.SERVER
        methods = [x.request.method for x in conn.pending if x.kind == kind]
        resps = parse_responses(ev.payload, methods)
        if not resps:
            return False
        conn.proto = _HTTP
        any_final = False
        sole = sum(1 for r in resps if not r.interim) == 1 and not resps[0].interim
        for resp in resps:
            if resp.interim:
                continue
            any_final = True
            if not conn.pending or conn.pending[0].kind != kind:
                self.stats.unmatched_responses += 1
                continue
            x = conn.pending.popleft()
            x.response = resp
            x.resp_tid = ev.tid
            x.resp_offcpu_ns = ev.offcpu_ns
            x.resp_first_end_ns = ev.end_ns
            if resp.length is not None and resp.offset + resp.length <= ev.size:
                # The whole response went in the first syscall: its end is known now.
                x.end_ns = ev.end_ns
                x.resp_bytes = resp.length
                self._emit_http(conn, x, out)
            else:
                x.resp_sole = sole and resp.offset == 0
                x.deadline_ns = ev.end_ns + int(self.config.message_end_timeout * _NS)
                x.events.extend(self._take_faults(conn))
                conn.finishing.append(x)
            if resp.status == 101:
                conn.proto = _OPAQUE  # protocol switch (WebSocket, h2c): no more HTTP/1 on this connection
        if any_final:
            conn.last_msg = _RESP_MSG
            conn.last_msg_seq = conn.seq
        if conn.pending or conn.finishing:
            self._waiting.add(conn.sock)
        else:
            self._waiting.discard(conn.sock)
        return True

    def _response_progress(self, conn: _Conn, position: int, end_ns: int, out: list[Span]) -> None:
        """`position` bytes of the response message have moved, the last at `end_ns`: emit the exchanges waiting
        for its end once every length is known and reached (the next message or a close would tell only later,
        and a keep-alive connection's last response would wait for the end timeout and get an estimated end)."""
        need = 0
        for x in conn.finishing:
            r = x.response
            if r is None or r.length is None:
                return  # chunked past the snapshot, or until close: only the message end can tell
            need = max(need, r.offset + r.length)
        if position < need:
            return
        for x in conn.finishing:
            x.end_ns = end_ns
            if x.resp_sole:
                x.resp_bytes = need
            self._emit_http(conn, x, out)
        conn.finishing.clear()
        self.stats.ended_by_length += 1
        if not conn.pending:
            self._waiting.discard(conn.sock)

    def _finish_estimated(self, conn: _Conn, x: _Exchange, out: list[Span]) -> None:
        x.end_ns = x.resp_first_end_ns
        self.stats.end_estimated += 1
        self._emit_http(conn, x, out, estimated=True)

    def _emit_incomplete(self, conn: _Conn, x: _Exchange, end_ns: int, why: str, out: list[Span]) -> None:
        x.end_ns = max(end_ns, x.start_ns)
        self.stats.incomplete += 1
        self._emit_http(conn, x, out, incomplete=why)

    def _emit_http(self, conn: _Conn, x: _Exchange, out: list[Span], *, estimated: bool = False, incomplete: str = "") -> None:
        req, resp = x.request, x.response
        server = x.kind == SpanKind.SERVER
        proc = self._proc(x.pid, conn.comm)
        attrs: Attributes = {"http.request.method": req.method}
        if req.path:
            attrs["url.path"] = req.path
        if req.query:
            attrs["url.query"] = req.query
        attrs["url.scheme"] = "http"
        host, port = split_host(req.host)
        if server:
            attrs["server.address"] = host or conn.local.addr
            attrs["server.port"] = port if port is not None else conn.local.port
            attrs["client.address"] = conn.remote.addr
            attrs["client.port"] = conn.remote.port
        else:
            attrs["server.address"] = host or conn.remote.addr
            attrs["server.port"] = port if port is not None else conn.remote.port
            authority = req.host or _join_host(conn.remote.addr, conn.remote.port)
            attrs["url.full"] = f"http://{authority}{req.target}" if req.target.startswith("/") else req.target
        attrs["network.peer.address"] = conn.remote.addr
        attrs["network.peer.port"] = conn.remote.port
        attrs["network.local.address"] = conn.local.addr
        attrs["network.local.port"] = conn.local.port
        attrs["network.transport"] = "tcp"
        attrs["network.protocol.name"] = "http"
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
        status = StatusCode.UNSET
        message = ""
        if resp is not None:
            attrs["http.response.status_code"] = resp.status
            resp_body = resp.body_size if resp.body_size is not None else resp.content_length
            if resp_body is None and x.resp_bytes is not None and resp.head_length is not None:
                resp_body = max(0, x.resp_bytes - resp.head_length)
            if resp_body is not None:
                attrs["http.response.body.size"] = resp_body
            if resp.status >= 500 or (not server and resp.status >= 400):
                status = StatusCode.ERROR
                attrs["error.type"] = str(resp.status)
        elif incomplete:
            status = StatusCode.ERROR
            message = incomplete
            attrs["helix.incomplete"] = True
            attrs["error.type"] = "incomplete"
        else:
            attrs["helix.http.response_seen"] = False
        if estimated:
            attrs["helix.end_estimated"] = True
        if resp is not None and x.resp_tid == x.tid and x.resp_offcpu_ns >= x.offcpu_ns:
            attrs["helix.offcpu_ns"] = x.resp_offcpu_ns - x.offcpu_ns
        _process_attrs(attrs, x.pid, x.tid, conn.comm)
        # Semconv HTTP span name: "{method} {http.route}", and just "{method}" when the route is unknown, as it is
        # from the wire (a raw path would make names high-cardinality); the path is in `url.path`.
        span = self._span(req.method, x.kind, x.start_ns, x.end_ns, proc, attrs, extract(req.headers), x.events, x.rv)
        span.status_code, span.status_message = status, message
        self.stats.http_spans += 1
        out.append(span)

    # -- MQTT --------------------------------------------------------------------------------------------------

    def _on_mqtt(self, conn: _Conn, ev: DataEvent, out: list[Span], snap: _Snapshot | None, base: int) -> bool:
        """MQTT packets in `ev.payload`, which begins `base` bytes into the snapshot `snap` (None: ev alone)."""
        packets = mqtt.parse_packets(ev.payload, conn.mqtt_version)
        if not packets:
            return False
        if conn.proto != _MQTT and not self._mqtt_evident(conn, packets):
            return False
        conn.proto = _MQTT
        if conn.role == Role.SERVER or (conn.role == Role.UNKNOWN and conn.local.port in self.config.broker_ports):
            conn.broker = True
        for pkt in packets:
            if isinstance(pkt, mqtt.Connect):
                if pkt.version in _MQTT_VERSIONS:
                    conn.mqtt_version = pkt.version
                conn.mqtt_client_id = pkt.client_id
                if ev.direction == Direction.INGRESS:
                    conn.broker = True  # it reads CONNECTs: this process is the broker
                self.stats.mqtt_other += 1
            elif isinstance(pkt, mqtt.Publish):
                if conn.broker:
                    self.stats.broker_side += 1
                    continue
                self._emit_publish(conn, ev, pkt, out, *self._packet_times(ev, pkt, snap, base))
            else:
                self.stats.mqtt_other += 1
        return True

    def _mqtt_evident(self, conn: _Conn, packets: list[mqtt.MqttPacket]) -> bool:
        """Whether a connection not yet known to speak MQTT does: a whole packet, a CONNECT/CONNACK, or a broker port.

        One byte of 0x30 reads as the start of a PUBLISH; paho's wakeup socket pair (loopback TCP) carries exactly
        that, and taking it for MQTT made an empty-topic receive span at every wakeup.
        """
        if any(not p.truncated or isinstance(p, (mqtt.Connect, mqtt.Connack)) for p in packets):
            return True
        ports = self.config.broker_ports
        return conn.local.port in ports or conn.remote.port in ports

    @staticmethod
    def _packet_times(ev: DataEvent, pkt: mqtt.MqttPacket, snap: _Snapshot | None, base: int) -> tuple[int, int]:
        """Start and end of a packet's span: a receive is the moment its reads returned (the time before was spent
        waiting for the broker); a publish runs from the write of its first byte to that of its last."""
        egress = ev.direction == Direction.EGRESS
        if snap is None:
            return (ev.ts_ns if egress else ev.end_ns), ev.end_ns
        first = base + pkt.offset
        last = min(first + pkt.length, len(snap.data)) - 1
        (ts0, end0), (_, end1) = snap.times_of(first, max(first, last))
        return (ts0 if egress else end0), end1

    def _emit_publish(self, conn: _Conn, ev: DataEvent, pkt: mqtt.Publish, out: list[Span], start: int, end: int) -> None:
        egress = ev.direction == Direction.EGRESS
        topic = pkt.topic
        alias = pkt.properties.get(mqtt.PropertyId.TOPIC_ALIAS)
        if isinstance(alias, int):
            key = (int(ev.direction), alias)
            if topic:
                if key in conn.topic_aliases or len(conn.topic_aliases) < _MAX_TOPIC_ALIASES:
                    conn.topic_aliases[key] = topic
            else:
                topic = conn.topic_aliases.get(key, "")
        attrs: Attributes = {
            "messaging.system": "mqtt",
            "messaging.operation.type": "send" if egress else "receive",
            "messaging.operation.name": "publish" if egress else "receive",
            "messaging.destination.name": topic,
            "messaging.mqtt.qos": pkt.qos,
        }
        if pkt.retain:
            attrs["messaging.mqtt.retain"] = True
        if pkt.dup:
            attrs["messaging.mqtt.dup"] = True
        if pkt.packet_id is not None:
            attrs["messaging.message.id"] = str(pkt.packet_id)
        if pkt.payload_length is not None:
            attrs["messaging.message.body.size"] = pkt.payload_length
        if conn.mqtt_client_id:
            attrs["messaging.client.id"] = conn.mqtt_client_id
        attrs["server.address"] = conn.remote.addr
        attrs["server.port"] = conn.remote.port
        attrs["network.peer.address"] = conn.remote.addr
        attrs["network.peer.port"] = conn.remote.port
        attrs["network.transport"] = "tcp"
        attrs["network.protocol.name"] = "mqtt"
        version = conn.mqtt_version or pkt.version
        if version in _MQTT_VERSIONS:
            attrs["network.protocol.version"] = _MQTT_VERSIONS[version]
        if pkt.truncated:
            attrs["helix.mqtt.truncated"] = True
        _process_attrs(attrs, ev.pid, ev.tid, ev.comm)
        headers: dict[str, str] = {}
        for k, v in pkt.user_properties:
            headers.setdefault(k.lower(), v)
        ctx = extract(headers) if headers else None
        name = f"publish {topic}" if egress else f"receive {topic}"
        kind = SpanKind.PRODUCER if egress else SpanKind.CONSUMER
        proc = self._proc(ev.pid, ev.comm)
        span = self._span(name, kind, start, end, proc, attrs, ctx, self._take_faults(conn))
        self.stats.mqtt_spans += 1
        out.append(span)

    # -- TCP connect, file I/O ---------------------------------------------------------------------------------

    def _on_connect(self, ev: ConnectEvent, out: list[Span]) -> None:
        proc = self._proc(ev.pid, ev.comm)
        attrs: Attributes = {
            "network.peer.address": ev.remote.addr,
            "network.peer.port": ev.remote.port,
            "network.local.address": ev.local.addr,
            "network.local.port": ev.local.port,
            "server.address": ev.remote.addr,
            "server.port": ev.remote.port,
            "network.transport": "tcp",
            "network.type": "ipv6" if ":" in ev.remote.addr else "ipv4",
        }
        _process_attrs(attrs, ev.pid, 0, ev.comm)
        span = self._span("tcp.connect", SpanKind.CLIENT, ev.ts_ns - max(0, ev.latency_ns), ev.ts_ns, proc, attrs, None, [])
        if ev.error:
            span.status_code = StatusCode.ERROR
            span.status_message = os.strerror(ev.error)
            span.attributes["error.type"] = errno.errorcode.get(ev.error, str(ev.error))
        self.stats.connect_spans += 1
        out.append(span)

    def _on_file_io(self, ev: FileIoEvent, out: list[Span]) -> None:
        proc = self._proc(ev.pid)
        attrs: Attributes = {"file.path": ev.path, "helix.io.bytes": ev.size}
        _process_attrs(attrs, ev.pid, ev.tid, proc.comm)
        name = _FILE_SPAN_NAMES.get(ev.op, "file.io")
        span = self._span(name, SpanKind.INTERNAL, ev.ts_ns, ev.end_ns, proc, attrs, None, [])
        self.stats.file_spans += 1
        out.append(span)

    # -- span assembly -----------------------------------------------------------------------------------------

    def _span(
        self,
        name: str,
        kind: SpanKind,
        start_mono: int,
        end_mono: int,
        proc: _Proc,
        attrs: Attributes,
        ctx: SpanContext | None,
        events: list[Event],
        rv: int | None = None,
    ) -> Span:
        start = start_mono + self._offset_ns
        end = max(start, end_mono + self._offset_ns)
        if ctx is not None:
            trace_id, parent, state, flags = ctx.trace_id, ctx.span_id, ctx.trace_state, ctx.flags
            attrs["helix.context_from"] = "wire"
            attrs["helix.wire.format"] = "b3" if ctx.format == "b3multi" else ctx.format
        elif rv is not None:
            # The kernel sampled this context-less request on randomness it chose: the trace carries it, as `rv` and
            # as the trace id's low 56 bits, so the agent's sampler (and any span that joins the trace) agrees.
            trace_id, parent, flags = new_trace_id()[:9] + rv.to_bytes(7, "big"), b"", 1
            state = format_tracestate([("ot", f"rv:{rv:014x}")])
            attrs["helix.context_from"] = "none"
        else:
            trace_id, parent, state, flags = new_trace_id(), b"", "", 1
            attrs["helix.context_from"] = "none"
        return Span(
            trace_id=trace_id,
            span_id=new_span_id(),
            name=name,
            start_ns=start,
            end_ns=end,
            parent_span_id=parent,
            kind=kind,
            attributes=attrs,
            events=events,
            resource=proc.resource,
            scope=SCOPE,
            source=Source.EBPF,
            trace_state=state,
            flags=flags,
        )


def _process_attrs(attrs: Attributes, pid: int, tid: int, comm: str) -> None:
    attrs["process.pid"] = pid
    if tid:
        attrs["thread.id"] = tid
    if comm:
        attrs["process.executable.name"] = comm


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


def _join_host(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _whole_mqtt_packets(data: bytes | bytearray, offset: int) -> int:
    """Where the run of whole MQTT packets framed from `offset` ends (`offset`: none whole yet); -1 for no framing.

    Framing only (type nibble, remaining length): the parsers decide what the packets are.
    """
    end = len(data)
    pos = offset
    while pos < end:
        if data[pos] >> 4 == 0:
            return -1 if pos == offset else pos  # packet type 0 is reserved: no MQTT here
        if end - pos < 2:
            break
        decoded = mqtt.decode_varint(data, pos + 1)
        if decoded is None:
            if end - pos >= 5:
                return -1 if pos == offset else pos  # a remaining length has at most 4 bytes
            break
        remaining, body = decoded
        if body + remaining > end:
            break
        pos = body + remaining
    return pos
