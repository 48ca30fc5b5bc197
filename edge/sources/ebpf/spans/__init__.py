"""Kernel events into spans: HTTP/1.x exchanges, MQTT publishes, TCP connects and slow file I/O.

Sans-I/O: `SpanBuilder.feed(events)` returns the spans those events completed and `flush(now)` the ones whose
wait timed out; the asyncio source around it only moves events in and spans out.

Timing model. The probes emit one DataEvent per *message* (a run of syscalls in one direction, cut by an idle
gap) at its first syscall, and that event closes the books on the previous message (`prev_end_ns`,
`prev_bytes`). While the message's snapshot is short of `payload_bytes`, DataMoreEvents follow with the bytes of
its later syscalls; the builder assembles them (see `Snapshot`) and decodes when enough is there to decide:
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

State is bounded: connections and processes live in LRU maps with counted evictions (tables.py), requests waiting
for a response are capped per connection, and closing a socket or ending a process frees its state.

Layout: this module assembles messages and dispatches events by type; each application protocol is one module
(http.py, mqtt.py) with one entry in PROTOCOLS, asked in that order to recognise a connection's messages (a
`WireProtocol`, tables.py); tcp.py and file_io.py make the spans of connects, faults and slow file I/O.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Iterable, Protocol

from ....errors import ConfigError
from ....model import INVALID_SPAN_ID, INVALID_TRACE_ID, Attributes, Event, Scope, Source, Span, SpanKind, StatusCode
from ....net.retry import RateLimitedLog
from ....propagation import SpanContext, format_tracestate
from ..events import (
    CloseEvent,
    ConnectEvent,
    DataEvent,
    DataMoreEvent,
    ExecEvent,
    ExitEvent,
    FileIoEvent,
    H2Event,
    KernelEvent,
    PyContextEvent,
    TcpFaultEvent,
    TurnEvent,
    WakeupEvent,
)
from . import file_io, http2, tcp
from .causes import Causes
from .http import HTTP, split_host
from .http2 import HTTP2
from .mqtt import MQTT
from .tables import SETTLE, WAIT, Conn, Connections, Proc, Processes, Snapshot, WireProtocol, looks_like_tls

__all__ = [
    "SpanBuilderConfig",
    "SpanBuilderStats",
    "SpanBuilder",
    "Clock",
    "SystemClock",
    "FixedClock",
    "SCOPE",
    "PROTOCOLS",
    "WireProtocol",
    "split_host",
]

log = logging.getLogger(__name__)
_rl = RateLimitedLog(log)

SCOPE = Scope("helix.ebpf")
_EBPF: Final = Source.EBPF  # read once: see http.py's _SERVER
_UNSET: Final = StatusCode.UNSET
# Bytes of the kernel's randomness read at a time for span and trace ids: one getrandom(2) per 512 span ids.
_RANDOM_BATCH = 4096
_NS = 1_000_000_000
# Messages in a row that no protocol recognised before a connection is written off as opaque (TLS, binary).
_OPAQUE_AFTER = 3

# The application protocols, asked in this order to recognise a connection's messages. A new protocol is one module
# implementing WireProtocol (tables.py) and one entry here.
PROTOCOLS: tuple[WireProtocol, ...] = (HTTP, HTTP2, MQTT)


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
    max_threads: int = 16384  # threads whose request context is followed (causes.py)
    max_pending_per_connection: int = 64  # requests waiting for a response on one connection
    response_timeout: float = 30.0  # s: a request with no response by then is emitted as incomplete
    message_end_timeout: float = 2.0  # s: a response whose message end is unknown by then gets an estimate
    clock_resync: float = 60.0  # s between re-measurements of the wall-clock offset
    max_events_per_span: int = 32
    max_pending_faults: int = 16  # faults held for the next span of a connection
    broker_ports: tuple[int, ...] = (1883, 8883)
    payload_bytes: int = 512  # what the probes send of each message: a shorter snapshot may be topped up
    host_name: str = field(default_factory=socket.gethostname)
    capture_headers: tuple[str, ...] = ()  # request headers (HTTP/2) or gRPC metadata kept as span attributes

    def __post_init__(self) -> None:
        for key in ("max_connections", "max_processes", "max_threads", "max_pending_per_connection",
                    "max_events_per_span"):
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
    http2_spans: int = 0
    mqtt_spans: int = 0
    connect_spans: int = 0
    file_spans: int = 0
    unparsed: int = 0  # messages no parser recognised (binary, unknown protocols)
    tls_records: int = 0  # messages of TLS records: handshakes, and ciphertext of TLS the probes cannot read
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
    resumed_packets: int = 0  # the rest of an MQTT packet that the kernel began a new message with after an idle gap
    mqtt_other: int = 0  # MQTT control packets that make no span (CONNECT, PUBACK, PINGREQ, ...)
    evicted_connections: int = 0
    reused_sockets: int = 0  # a connection's socket seen again with other ports: closed unseen, its kernel object reused
    evicted_processes: int = 0
    faults_attached: int = 0
    faults_orphaned: int = 0
    span_events_dropped: int = 0
    internal_errors: int = 0
    h2_header_blocks: int = 0  # HPACK blocks decoded
    h2_partial_blocks: int = 0  # ... with fields that could not be known (dynamic entries from before a loss, a cut)
    h2_blocks_lost: int = 0  # header blocks whose start was not seen (their insertions are unknown)
    h2_data_frames: int = 0
    h2_gaps: int = 0  # frame-mode records after a loss (ring buffer full)
    h2_goaway: int = 0
    h2_snapshots: int = 0  # HTTP/2 read from message snapshots (before frame mode, or kernels without it)


class SpanBuilder:
    """Turns decoded kernel events into spans; pure state machine, no I/O.

    The caller feeds events in ring-buffer order and calls `flush` about once a second with the current kernel
    monotonic time, so that exchanges whose ending never shows up still leave as spans.
    """

    def __init__(self, config: SpanBuilderConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or SpanBuilderConfig()
        self.clock: Clock = clock or SystemClock()
        self.stats = SpanBuilderStats()
        self.conns = Connections(self.config.max_connections, self.stats)
        self.procs = Processes(self.config.max_processes, self.config.host_name, self.stats)
        self.causes = Causes(self.config.max_threads)
        self._offset_ns = 0
        self._synced_at: int | None = None
        self._random = b""
        self._random_at = 0
        # Told the sockets found speaking HTTP/2 in message snapshots, so that the probes walk their frames from then
        # on (ProbeSet.hint_h2); None where no probes listen (replays, tests).
        self.on_h2: Callable[[int], None] | None = None
        self._resync()
        # Events by type: a kind of record the probes gain is one more entry.
        self._on_event: dict[type[Any], Callable[[Any, list[Span]], None]] = {
            DataEvent: self._on_data,
            DataMoreEvent: self._on_more,
            H2Event: lambda ev, out: http2.on_frames(self, ev, out),
            CloseEvent: self._on_close,
            ConnectEvent: lambda ev, out: tcp.on_connect(self, ev, out),
            TcpFaultEvent: lambda ev, out: tcp.on_fault(self, ev, out),
            FileIoEvent: lambda ev, out: file_io.on_file_io(self, ev, out),
            ExecEvent: lambda ev, out: self.procs.exec(ev),
            ExitEvent: self._on_exit,
            WakeupEvent: self.causes.wakeup,
            TurnEvent: self.causes.turn,
            PyContextEvent: lambda ev, out: self.causes.tasks.seen(ev),
        }

    # -- public ------------------------------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """Connections with state."""
        return len(self.conns)

    @property
    def process_count(self) -> int:
        """Processes with cached names and resources."""
        return len(self.procs)

    @property
    def pending_count(self) -> int:
        """Requests waiting for a response or for its end."""
        return sum(c.state.waiting() for c in self.conns if c.state is not None) + self.causes.waiting_count

    @property
    def wall_offset_ns(self) -> int:
        """The offset added to kernel monotonic times to get Unix-epoch times."""
        return self._offset_ns

    def service_name(self, pid: int, comm: str) -> str:
        """The `service.name` this builder gives spans of process `pid` seen running as `comm` now."""
        return self.procs.get(pid, comm).resource.service_name

    def feed(self, events: Iterable[KernelEvent]) -> list[Span]:
        """Consume events in ring-buffer order; return the spans they completed."""
        self._maybe_resync()
        out: list[Span] = []
        on_event = self._on_event
        for ev in events:
            self.stats.events += 1
            try:
                if type(ev) is DataEvent:
                    self._on_data(ev, out)  # most records: a compiled call, not one through the table's bound method
                    continue
                handler = on_event.get(type(ev))
                if handler is None:
                    continue
                handler(ev, out)
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
        conns = self.conns
        for sock in list(conns.partials):
            conn = conns.get(sock)
            if conn is None or conn.snap is None:
                conns.partials.discard(sock)
            elif conn.snap.deadline_ns <= now_mono_ns:
                self.settle(conn, out)
        for sock in list(conns.waiting):
            conn = conns.get(sock)
            if conn is None or conn.state is None or not conn.state.expire(self, conn, now_mono_ns, out):
                conns.waiting.discard(sock)
        self.causes.flush(now_mono_ns, out, 2 * int(self.config.response_timeout * _NS))
        self.stats.spans += len(out)
        return out

    def new_span_id(self) -> bytes:
        """A random, valid span id (model.new_span_id's, read from the kernel in batches)."""
        return self._random_id(8, INVALID_SPAN_ID)

    def new_trace_id(self) -> bytes:
        """A random, valid trace id (model.new_trace_id's, read from the kernel in batches)."""
        return self._random_id(16, INVALID_TRACE_ID)

    def _random_id(self, size: int, invalid: bytes) -> bytes:
        # A getrandom(2) per span was ~3 % of the builder's time. The builder is one thread's (and never forked), so
        # no two callers take the same bytes.
        while True:
            at = self._random_at
            if at + size > len(self._random):
                self._random = os.urandom(_RANDOM_BATCH)
                at = 0
            self._random_at = at + size
            value = self._random[at:at + size]
            if value != invalid:
                return value

    # -- clock -------------------------------------------------------------------------------------------------

    def _resync(self) -> None:
        self._offset_ns = self.clock.wall_offset_ns()
        self._synced_at = self.clock.monotonic_ns()

    def _maybe_resync(self) -> None:
        now = self.clock.monotonic_ns()
        if self._synced_at is None or now - self._synced_at >= int(self.config.clock_resync * _NS):
            self._resync()

    # -- connections and processes ending ----------------------------------------------------------------------

    def _on_close(self, ev: CloseEvent, out: list[Span]) -> None:
        conn = self.conns.get(ev.sock)
        if conn is not None:
            self._end(conn, ev.ts_ns, "connection closed before a response", ev.last_end_ns or None, ev.last_bytes,
                      out)

    def _on_exit(self, ev: ExitEvent, out: list[Span]) -> None:
        # Sockets closed by the exit itself produce no close(2): end them here. When their last message ended is
        # not known.
        for conn in self.conns.of_process(ev.pid):
            self._end(conn, ev.ts_ns, "process exited before a response", None, 0, out)
        self.conns.forget_process(ev.pid)
        self.procs.forget(ev.pid)
        self.causes.forget_process(ev.pid, out)

    def _end(self, conn: Conn, at_ns: int, why: str, last_end_ns: int | None, last_bytes: int,
             out: list[Span]) -> None:
        if conn.snap is not None:
            self.settle(conn, out)
        if conn.state is not None:
            conn.state.close(self, conn, at_ns, why, last_end_ns, last_bytes, out)
        self.conns.drop(conn)

    # -- messages ----------------------------------------------------------------------------------------------

    def conn_for(self, ev: DataEvent | H2Event, out: list[Span]) -> Conn:
        """The connection a data (or HTTP/2 frames) event belongs to. A TCP socket keeps its ports for life: one seen
        with other ports is a new connection whose socket reuses the kernel object of one closed unseen (its close
        lost or made before the probes), which ends here; else its spans would name the old ports."""
        conn = self.conns.get(ev.sock)
        if (conn is not None and ev.local.port and ev.remote.port and conn.local.port and conn.remote.port
                and (ev.local.port != conn.local.port or ev.remote.port != conn.remote.port)):
            self.stats.reused_sockets += 1
            self._end(conn, ev.ts_ns, "connection closed before a response", None, 0, out)
        return self.conns.for_data(ev)

    def _on_data(self, ev: DataEvent, out: list[Span]) -> None:
        conn = self.conns.get(ev.sock)
        if conn is not None and conn.snap is not None:
            if self._resumes(conn, conn.snap, ev):
                self._resume(conn, conn.snap, ev, out)
                return
            self.settle(conn, out)  # the message before this one is over: decode what is left of it
        conn = self.conn_for(ev, out)
        if conn.state is not None:
            conn.state.data_arrives(self, conn, ev, out)
        payload = ev.payload
        n = len(payload)
        # The probes top a snapshot up only while it is contiguous and short of payload_bytes.
        more = n == ev.size and n < self.config.payload_bytes and not conn.opaque
        if not more or self._assemble(conn, payload, -1) == SETTLE:
            self._on_message(conn, ev, None, out)  # decided by its first syscall, as most HTTP messages are
            return
        deadline = ev.end_ns + int(self.config.message_end_timeout * _NS)
        conn.snap = Snapshot(ev, bytearray(ev.payload), [0], [(ev.ts_ns, ev.end_ns)], more, deadline)
        self.conns.partials.add(ev.sock)
        self._advance(conn, out)

    def _on_more(self, ev: DataMoreEvent, out: list[Span]) -> None:
        conn = self.conns.get(ev.sock)
        snap = conn.snap if conn is not None else None
        if conn is not None and conn.state is not None:
            conn.state.more_arrives(self, conn, ev, snap, out)
        if conn is None or snap is None or not snap.open or ev.direction != snap.start.direction:
            self.stats.late_more += 1
            return
        self.conns.touch(ev.sock)
        if snap.base + ev.offset != len(snap.data):
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

    def _resumes(self, conn: Conn, snap: Snapshot, ev: DataEvent) -> bool:
        """Whether a new message is the rest of a packet the snapshot ends in: the kernel ends a message when its
        reader pauses longer than the message gap, which a subscriber taken off the CPU between the reads of one
        packet does (its fixed header, then the rest). Only right after the snapshot's bytes, nothing lost between."""
        if _streaming(conn) is None or not snap.open or ev.direction != snap.start.direction:
            return False
        if ev.prev_bytes != len(snap.data) - snap.base or max(snap.decoded, 0) >= len(snap.data):
            return False
        return self._assemble(conn, snap.data, snap.decoded) == WAIT

    def _resume(self, conn: Conn, snap: Snapshot, ev: DataEvent, out: list[Span]) -> None:
        self.stats.resumed_packets += 1
        self.conns.touch(ev.sock)
        snap.base = len(snap.data)
        snap.offsets.append(snap.base)
        snap.times.append((ev.ts_ns, ev.end_ns))
        room = self.config.payload_bytes - snap.base
        snap.data += ev.payload[:room]
        snap.open = len(snap.data) < self.config.payload_bytes and len(ev.payload) == ev.size
        snap.deadline_ns = ev.end_ns + int(self.config.message_end_timeout * _NS)
        self._advance(conn, out)

    def _assemble(self, conn: Conn, data: bytes | bytearray, decoded: int) -> int:
        """What the protocols say about a message still arriving (SETTLE when none recognises it)."""
        for proto in PROTOCOLS:
            step = proto.assemble(conn, data, decoded)
            if step is not None:
                return step
        return SETTLE

    def _advance(self, conn: Conn, out: list[Span]) -> None:
        """Decode what the snapshot allows now; keep it for more bytes when they could change the outcome."""
        snap = conn.snap
        assert snap is not None
        if not snap.open or conn.opaque:
            self.settle(conn, out)
            return
        step = self._assemble(conn, snap.data, snap.decoded)
        if step == SETTLE:
            self.settle(conn, out)
        elif step > max(snap.decoded, 0):
            self._decode_part(conn, snap, max(snap.decoded, 0), step, out)

    def settle(self, conn: Conn, out: list[Span]) -> None:
        """The message's snapshot is final: decode what was not decoded yet and forget it."""
        snap, conn.snap = conn.snap, None
        self.conns.partials.discard(conn.sock)
        if snap is not None and snap.decoded < len(snap.data):
            self._decode_part(conn, snap, max(snap.decoded, 0), len(snap.data), out)

    def _decode_part(self, conn: Conn, snap: Snapshot, begin: int, end: int, out: list[Span]) -> None:
        ev = snap.start
        if begin or end != len(ev.payload):  # no copy for the usual message that came whole in its first syscall
            ev = dataclasses.replace(ev, payload=bytes(snap.data[begin:end]))
        first = snap.decoded < 0
        snap.decoded = end
        if first:
            self._on_message(conn, ev, snap, out)
            if _streaming(conn) is None and conn.snap is snap:
                # Decoded for good (an HTTP head, or nothing recognised): later top-ups have nothing to add.
                conn.snap = None
                self.conns.partials.discard(conn.sock)
            return
        proto = _streaming(conn)  # other protocols are decoded once, at the first decode
        if proto is not None and not proto.on_message(self, conn, ev, snap, begin, out):
            self.stats.unparsed += 1

    def _on_message(self, conn: Conn, ev: DataEvent, snap: Snapshot | None, out: list[Span]) -> None:
        self.procs.get(ev.pid, ev.comm)
        same_direction = conn.last_direction == int(ev.direction)
        conn.last_direction = int(ev.direction)
        if conn.state is not None and conn.state.message_begins(self, conn, ev, same_direction, out):
            return
        conn.seq += 1
        if not ev.tls and looks_like_tls(ev.payload):
            # TLS on the wire: a handshake before the library's plaintext takes over, or a stack the probes cannot
            # read; not an unknown protocol.
            self.stats.tls_records += 1
            conn.opaque = True
            return
        if conn.opaque:
            self.stats.unparsed += 1
            return
        for proto in PROTOCOLS:
            if (conn.proto is None or conn.proto is proto) and proto.on_message(self, conn, ev, snap, 0, out):
                conn.misses = 0
                return
        if conn.proto is not None and conn.proto.body_continues:
            self.stats.continuation += 1  # body bytes (after 100-continue, a streamed body) rather than a new head
            return
        self.stats.unparsed += 1
        conn.misses += 1
        if conn.proto is None and conn.misses >= _OPAQUE_AFTER:
            conn.opaque = True

    # -- span assembly -----------------------------------------------------------------------------------------

    def span(
        self,
        name: str,
        kind: SpanKind,
        start_mono: int,
        end_mono: int,
        proc: Proc,
        attrs: Attributes,
        ctx: SpanContext | None,
        events: list[Event],
        rv: int | None = None,
        span_id: bytes | None = None,
    ) -> Span:
        """A kernel span of process `proc`: times from kernel monotonic to wall clock, trace context from the wire
        (`ctx`), else from the kernel's sampling randomness (`rv`), else new."""
        start = start_mono + self._offset_ns
        end = max(start, end_mono + self._offset_ns)
        if ctx is not None:
            trace_id, parent, state, flags = ctx.trace_id, ctx.span_id, ctx.trace_state, ctx.flags
            attrs["helix.context_from"] = "wire"
            attrs["helix.wire.format"] = "b3" if ctx.format == "b3multi" else ctx.format
        elif rv is not None:
            # The kernel sampled this context-less request on randomness it chose: the trace carries it, as `rv` and
            # as the trace id's low 56 bits, so the agent's sampler (and any span that joins the trace) agrees.
            trace_id, parent, flags = self.new_trace_id()[:9] + rv.to_bytes(7, "big"), b"", 1
            state = format_tracestate([("ot", f"rv:{rv:014x}")])
            attrs["helix.context_from"] = "none"
        else:
            trace_id, parent, state, flags = self.new_trace_id(), b"", "", 1
            attrs["helix.context_from"] = "none"
        # Positional, in model.Span's field order (tests/edge/sources/ebpf/spans/test_builder.py holds it to that):
        # Span's __init__ is interpreted, and matching fifteen keywords by name cost as much as the rest of the call.
        return Span(trace_id, span_id or self.new_span_id(), name, start, end, parent, kind, _UNSET, "", attrs,
                    tuple(events) if events else (), (), proc.resource, SCOPE, _EBPF, state, flags)


def _streaming(conn: Conn) -> WireProtocol | None:
    """The connection's protocol if it decodes a message unit by unit as they complete (MQTT packets)."""
    return conn.proto if conn.proto is not None and conn.proto.streams and not conn.opaque else None
