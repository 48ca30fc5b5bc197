"""The span builder's state: processes and connections in bounded LRU tables, and the message in flight.

A connection learns its protocol from the first message a protocol module recognises (`Conn.proto`); that module
keeps its per-connection state in `Conn.state`, a `ConnState` whose hooks the builder calls at the moments every
protocol shares (bytes arrive, a message begins, a fault, the timeout sweep, the connection's end).
"""
from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from ....model import Attributes, Event, Resource, Span
from ..events import DataEvent, DataMoreEvent, Endpoint, ExecEvent, H2Event, Role

# Read once: an enum member named in compiled code is a lookup through the enum metaclass per use (http.py's _SERVER).
_UNKNOWN_ROLE: Final = Role.UNKNOWN

if TYPE_CHECKING:
    from . import SpanBuilder, SpanBuilderStats

__all__ = ["Proc", "Processes", "Snapshot", "Conn", "ConnState", "Connections", "WireProtocol", "SETTLE", "WAIT",
           "process_attrs", "connection_attrs", "looks_like_tls"]

# What a protocol's `assemble` says about a message still arriving (any other value: decode up to that offset).
SETTLE = -1  # decode all of it now
WAIT = -2  # keep it open for more bytes


@dataclass(slots=True)
class Proc:
    """A process as spans name it."""

    pid: int
    comm: str
    exe: str
    resource: Resource
    tick: int = 0  # the state bound's clock when last seen (builder_state.py)


class Processes:
    """Names and resources of the processes seen, least recently used evicted first."""

    def __init__(self, max_processes: int, host_name: str, stats: SpanBuilderStats) -> None:
        self.max_processes = max_processes
        self.host_name = host_name
        self.stats = stats
        self._procs: OrderedDict[int, Proc] = OrderedDict()
        self.tick = 0  # the state bound's clock, stamped on what is used (builder_state.py)

    def __len__(self) -> int:
        return len(self._procs)

    def get(self, pid: int, comm: str = "") -> Proc:
        """The process `pid`, seen now running as `comm` ("" if not known here)."""
        proc = self._procs.get(pid)
        if proc is not None:
            self._procs.move_to_end(pid)
            proc.tick = self.tick
            if comm and comm != proc.comm and not proc.exe:
                proc.comm = comm
                proc.resource = self._resource(pid, comm, "")
            return proc
        proc = Proc(pid, comm, "", self._resource(pid, comm, ""), self.tick)
        self._procs[pid] = proc
        if len(self._procs) > self.max_processes:
            self._procs.popitem(last=False)
            self.stats.evicted_processes += 1
        return proc

    def __iter__(self) -> Iterator[Proc]:
        """Least recently seen first."""
        return iter(self._procs.values())

    def evict(self, pid: int) -> None:
        """Forget process `pid` (counted); seen again, it is named anew."""
        if self._procs.pop(pid, None) is not None:
            self.stats.evicted_processes += 1

    def exec(self, ev: ExecEvent) -> None:
        """The process ran a new program."""
        proc = self.get(ev.pid, ev.comm)
        proc.comm, proc.exe = ev.comm, ev.filename
        proc.resource = self._resource(ev.pid, ev.comm, ev.filename)

    def forget(self, pid: int) -> None:
        """The process ended."""
        self._procs.pop(pid, None)

    def _resource(self, pid: int, comm: str, exe: str) -> Resource:
        name = comm
        base = os.path.basename(exe) if exe else ""
        # comm is cut at 15 characters by the kernel; the exec'd file name is the full one.
        if base and (not comm or (len(comm) >= 15 and base.startswith(comm))):
            name = base
        attrs: Attributes = {
            "service.name": name or "unknown_service",
            "process.pid": pid,
            "host.name": self.host_name,
        }
        if comm:
            attrs["process.executable.name"] = comm
        if exe:
            attrs["process.executable.path"] = exe
        return Resource.of(attrs)


def process_attrs(attrs: Attributes, pid: int, tid: int, comm: str) -> None:
    """The process and thread attributes every kernel span carries."""
    attrs["process.pid"] = pid
    if tid:
        attrs["thread.id"] = tid
    if comm:
        attrs["process.executable.name"] = comm


_TLS_VERSIONS = {0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}


def connection_attrs(attrs: Attributes, conn: Conn, protocol: str, local: bool) -> None:
    """The peer (and with `local`, this side) of the connection a span's message went over, its protocol, and
    whether it was encrypted (read at the TLS library: `helix.tls`, and the version where the library told it)."""
    attrs["network.peer.address"] = conn.remote.addr
    attrs["network.peer.port"] = conn.remote.port
    if local:
        attrs["network.local.address"] = conn.local.addr
        attrs["network.local.port"] = conn.local.port
    attrs["network.transport"] = "tcp"
    attrs["network.protocol.name"] = protocol
    if conn.tls:
        attrs["helix.tls"] = True
        attrs["tls.protocol.name"] = "tls"
        version = _TLS_VERSIONS.get(conn.tls_version)
        if version:
            attrs["tls.protocol.version"] = version


def looks_like_tls(payload: bytes) -> bool:
    """Whether bytes begin with a TLS record header (content type 20..23, version 3.0 to 3.4): a handshake, or the
    ciphertext of a connection whose plaintext the probes read (or cannot read)."""
    return len(payload) >= 5 and 20 <= payload[0] <= 23 and payload[1] == 3 and payload[2] <= 4


@dataclass(slots=True)
class Snapshot:
    """The first bytes of the message in flight, assembled from its DataEvent and the DataMoreEvents after it."""

    start: DataEvent
    data: bytearray
    offsets: list[int]  # where each syscall's bytes begin in `data`
    times: list[tuple[int, int]]  # (sys_enter, sys_exit) of each of those syscalls
    open: bool  # more bytes may still come: contiguous so far and short of payload_bytes
    deadline_ns: int
    decoded: int = -1  # bytes decoded so far (whole MQTT packets); -1 until the message is first decoded
    base: int = 0  # where the bytes of the kernel's message in flight begin in `data` (> 0: it resumed a packet)

    def times_of(self, first: int, last: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The syscalls that moved byte `first` and byte `last` of the snapshot."""
        i = max(0, bisect.bisect_right(self.offsets, first) - 1)
        j = max(0, bisect.bisect_right(self.offsets, last) - 1)
        return self.times[i], self.times[j]


class ConnState:
    """A protocol's state on one connection. The hooks are the moments every protocol shares; by default they do
    nothing, so a protocol overrides only what it needs."""

    __slots__ = ()

    def data_arrives(self, b: SpanBuilder, conn: Conn, ev: DataEvent, out: list[Span]) -> None:
        """A new message's first syscall, before the message before it is settled."""

    def more_arrives(self, b: SpanBuilder, conn: Conn, ev: DataMoreEvent, snap: Snapshot | None,
                     out: list[Span]) -> None:
        """Bytes of a later syscall of the message in flight."""

    def message_begins(self, b: SpanBuilder, conn: Conn, ev: DataEvent, same_direction: bool,
                       out: list[Span]) -> bool:
        """A message is about to be decoded; True when it only continues the previous one (nothing to decode)."""
        return False

    def attach_fault(self, b: SpanBuilder, event: Event) -> bool:
        """Attach a TCP fault to a span still open on the connection; False if there is none."""
        return False

    def expire(self, b: SpanBuilder, conn: Conn, now_ns: int, out: list[Span]) -> bool:
        """Emit what waited past its deadline; True while something still waits."""
        return False

    def close(self, b: SpanBuilder, conn: Conn, at_ns: int, why: str, last_end_ns: int | None, last_bytes: int,
              out: list[Span]) -> None:
        """The connection is over (closed, or its process exited): emit what waits on it."""

    def waiting(self) -> int:
        """Requests or responses waiting on this connection."""
        return 0


class WireProtocol(Protocol):
    """An application protocol the span builder recognises in message snapshots: one module per protocol, one
    entry in `PROTOCOLS` (spans/__init__.py). Asked in table order; the first to claim a connection keeps it."""

    name: str
    # Decoded unit by unit as they complete within one message (MQTT packets), not once per message (HTTP heads).
    streams: bool
    # An unrecognised message on a connection of this protocol is more of a body, not noise.
    body_continues: bool

    def assemble(self, conn: Conn, data: bytes | bytearray, decoded: int) -> int | None:
        """While a message's bytes arrive: None if they are not this protocol's, else SETTLE, WAIT, or the offset
        up to which whole units can be decoded now (`decoded`: what was decoded of them so far, -1 for nothing)."""
        ...

    def on_message(self, b: SpanBuilder, conn: Conn, ev: DataEvent, snap: Snapshot | None, base: int,
                   out: list[Span]) -> bool:
        """Decode `ev.payload` (which begins `base` bytes into `snap`; None: the event alone); True if recognised."""
        ...


@dataclass(slots=True)
class Conn:
    """A socket the probes reported, and what is known about the protocol on it."""

    sock: int
    pid: int
    comm: str
    role: Role
    local: Endpoint
    remote: Endpoint
    proto: WireProtocol | None = None  # the protocol that recognised it; None while unknown
    state: ConnState | None = None  # that protocol's state; stays when the connection turns opaque
    opaque: bool = False  # nothing recognised, or switched to a protocol not decoded (WebSocket, unreadable TLS)
    seq: int = 0  # messages seen
    misses: int = 0  # consecutive unrecognised messages
    faults: list[Event] = field(default_factory=list)
    snap: Snapshot | None = None  # the message in flight while its bytes are still being assembled
    last_direction: int = -1
    tls: bool = False  # its messages are TLS plaintext, read at the TLS library
    tls_version: int = 0  # as OpenSSL numbers it; 0 when unknown
    tick: int = 0  # the state bound's clock when last used (builder_state.py)


class Connections:
    """Connections by socket, least recently used evicted first, indexed by process."""

    def __init__(self, max_connections: int, stats: SpanBuilderStats) -> None:
        self.max_connections = max_connections
        self.stats = stats
        self._conns: OrderedDict[int, Conn] = OrderedDict()
        self.by_pid: dict[int, set[int]] = {}
        self.waiting: set[int] = set()  # socks with requests or responses waiting
        self.partials: set[int] = set()  # socks whose message in flight is still being assembled
        self.tick = 0  # the state bound's clock, stamped on what is used (builder_state.py)

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[Conn]:
        return iter(self._conns.values())

    def get(self, sock: int) -> Conn | None:
        """The connection of `sock`, if known."""
        return self._conns.get(sock)

    def touch(self, sock: int) -> None:
        """Mark `sock` as just used."""
        self._conns.move_to_end(sock)
        self._conns[sock].tick = self.tick

    def for_data(self, ev: DataEvent | H2Event) -> Conn:
        """The connection a data (or HTTP/2 frames) event belongs to, made if new; its owner and role follow the
        event, and so does TLS: plaintext from the TLS library makes it an encrypted connection whose messages parse
        again (its ciphertext may have made it opaque)."""
        conn = self._conns.get(ev.sock)
        if conn is None:
            conn = Conn(ev.sock, ev.pid, ev.comm, ev.role, ev.local, ev.remote)
            conn.tick = self.tick
            self._tls(conn, ev)
            self._conns[ev.sock] = conn
            self.by_pid.setdefault(ev.pid, set()).add(ev.sock)
            if len(self._conns) > self.max_connections:
                _, victim = next(iter(self._conns.items()))
                self._evict(victim)
            return conn
        self._conns.move_to_end(ev.sock)
        conn.tick = self.tick
        if conn.pid != ev.pid:  # the socket was inherited or passed on: index it under the new owner
            self._unindex(conn)
            conn.pid = ev.pid
            self.by_pid.setdefault(ev.pid, set()).add(ev.sock)
        conn.comm = ev.comm or conn.comm
        if ev.role != _UNKNOWN_ROLE:
            conn.role = ev.role
        self._tls(conn, ev)
        return conn

    @staticmethod
    def _tls(conn: Conn, ev: DataEvent | H2Event) -> None:
        if ev.tls:
            if not conn.tls:
                conn.tls = True
                conn.opaque = False
                conn.misses = 0
            conn.tls_version = ev.tls_version or conn.tls_version

    def of_process(self, pid: int) -> Iterator[Conn]:
        """The connections of process `pid` (the caller may drop each as it goes)."""
        for sock in list(self.by_pid.get(pid, ())):
            conn = self._conns.get(sock)
            if conn is not None:
                yield conn

    def forget_process(self, pid: int) -> None:
        """Drop the index of an ended process."""
        self.by_pid.pop(pid, None)

    def drop(self, conn: Conn) -> None:
        """Forget a connection (closed, or of an ended process); faults still held on it are orphaned."""
        if self._conns.get(conn.sock) is conn:
            del self._conns[conn.sock]
        self._unindex(conn)
        self.waiting.discard(conn.sock)
        self.partials.discard(conn.sock)
        self.stats.faults_orphaned += len(conn.faults)

    def busy(self, conn: Conn) -> bool:
        """An exchange is open on `conn`: a message still arriving, or requests or responses waiting."""
        return (conn.sock in self.partials or conn.sock in self.waiting
                or (conn.state is not None and conn.state.waiting() > 0))

    def evict(self, conn: Conn) -> int:
        """Forget `conn` (counted); returns the requests that waited on it."""
        before = self.stats.pending_dropped
        self._evict(conn)
        return self.stats.pending_dropped - before

    def _evict(self, conn: Conn) -> None:
        self.stats.evicted_connections += 1
        self.stats.pending_dropped += conn.state.waiting() if conn.state is not None else 0
        self.drop(conn)

    def _unindex(self, conn: Conn) -> None:
        socks = self.by_pid.get(conn.pid)
        if socks is not None:
            socks.discard(conn.sock)
            if not socks:
                del self.by_pid[conn.pid]
