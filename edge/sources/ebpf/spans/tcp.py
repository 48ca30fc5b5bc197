"""TCP as the kernel sees it: a span per connect (with its latency and error), and retransmits and resets as events
on the span open on their connection when they happened (held for the next one otherwise)."""
from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from ....model import Attributes, Event, Span, SpanKind, StatusCode
from ..events import ConnectEvent, FaultKind, TcpFaultEvent
from .tables import Conn, process_attrs

if TYPE_CHECKING:
    from . import SpanBuilder

__all__ = ["on_connect", "on_fault", "take_faults", "add_event"]

_FAULT_NAMES = {
    FaultKind.RETRANSMIT: "tcp.retransmit",
    FaultKind.SEND_RESET: "tcp.reset.sent",
    FaultKind.RECEIVE_RESET: "tcp.reset.received",
}
_TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}


def on_connect(b: SpanBuilder, ev: ConnectEvent, out: list[Span]) -> None:
    """A `tcp.connect` client span, from the SYN to the established (or failed) state."""
    proc = b.procs.get(ev.pid, ev.comm)
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
    process_attrs(attrs, ev.pid, 0, ev.comm)
    span = b.span("tcp.connect", SpanKind.CLIENT, ev.ts_ns - max(0, ev.latency_ns), ev.ts_ns, proc, attrs, None, [])
    if ev.error:
        span.status_code = StatusCode.ERROR
        span.status_message = os.strerror(ev.error)
        span.attributes["error.type"] = errno.errorcode.get(ev.error, str(ev.error))
    b.stats.connect_spans += 1
    if not ev.error:
        b.causes.connected(ev.pid, ev.sock, ev.ts_ns - max(0, ev.latency_ns))
    out.append(span)


def on_fault(b: SpanBuilder, ev: TcpFaultEvent, out: list[Span]) -> None:
    """A retransmit or reset, as an event of the span open on its connection (or of the next one)."""
    event = Event(
        _FAULT_NAMES.get(ev.kind, "tcp.fault"),
        ev.ts_ns + b.wall_offset_ns,
        {"tcp.state": _TCP_STATES.get(ev.state, str(ev.state)), "network.peer.address": ev.remote.addr,
         "network.peer.port": ev.remote.port},
    )
    conn = b.conns.get(ev.sock)
    if conn is None:
        b.stats.faults_orphaned += 1
        return
    if conn.state is None or not conn.state.attach_fault(b, event):
        if len(conn.faults) < b.config.max_pending_faults:
            conn.faults.append(event)
        else:
            b.stats.faults_orphaned += 1
        return
    b.stats.faults_attached += 1


def add_event(b: SpanBuilder, events: list[Event], event: Event) -> None:
    """Add a span event, up to `max_events_per_span` (the rest are counted)."""
    if len(events) < b.config.max_events_per_span:
        events.append(event)
    else:
        b.stats.span_events_dropped += 1


def take_faults(b: SpanBuilder, conn: Conn) -> list[Event]:
    """The faults held on a connection, for the span starting on it now."""
    if not conn.faults:
        return []
    faults, conn.faults = conn.faults, []
    b.stats.faults_attached += len(faults)
    return faults
