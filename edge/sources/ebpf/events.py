"""Kernel events as the agent sees them after decoding the ring-buffer records (layouts: bpf/*.h).

Timestamps here are kernel monotonic nanoseconds (`bpf_ktime_get_ns`); the span builder converts them to wall
clock. A connection is identified by `sock` (the kernel's `struct sock` address), which is also what the tcp:*
tracepoints report, so faults join the connection they happened on.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Direction",
    "Role",
    "Endpoint",
    "DataEvent",
    "DataMoreEvent",
    "H2Event",
    "CloseEvent",
    "ConnectEvent",
    "TcpFaultEvent",
    "FaultKind",
    "ExecEvent",
    "ExitEvent",
    "FileIoEvent",
    "FileOp",
    "WakeupEvent",
    "TurnEvent",
    "KernelEvent",
    "PyContextEvent",
]


class Direction(enum.IntEnum):
    """Which way bytes moved, from the traced process's point of view."""

    EGRESS = 0  # write, writev, sendto, sendmsg
    INGRESS = 1  # read, readv, recvfrom, recvmsg


class Role(enum.IntEnum):
    """How the process got the socket: connect() makes it a client, accept4() a server."""

    UNKNOWN = 0
    CLIENT = 1
    SERVER = 2


@dataclass(slots=True, frozen=True)
class Endpoint:
    """An address and port; IPv4 addresses as dotted quads, IPv6 in RFC 5952 form."""

    addr: str
    port: int


@dataclass(slots=True, init=False)
class DataEvent:
    """The start of a message on a socket: the direction of traffic changed, or the connection was idle.

    It also closes the books on the previous message (`prev_*`), so one event per message is enough to know
    where each message began and ended. DataMoreEvents may follow with more of the message's first bytes.
    """

    ts_ns: int  # sys_enter of the first syscall of this message
    end_ns: int  # sys_exit of that syscall
    pid: int
    tid: int
    comm: str
    fd: int
    sock: int
    role: Role
    direction: Direction
    local: Endpoint
    remote: Endpoint
    size: int  # bytes moved by this first syscall
    payload: bytes  # the first min(size, payload_bytes) bytes
    prev_bytes: int  # total bytes of the previous message on this connection (0 if none)
    prev_end_ns: int  # sys_exit of the last syscall of the previous message (0 if none)
    offcpu_ns: int  # cumulative off-CPU time of this thread, for differences between two events
    # The 56-bit randomness the kernel chose for this context-less request when it sampled it (None: it did not);
    # the span builder makes it the trace's randomness so that the agent's sampler decides as the kernel did.
    rv: int | None = None
    tls: bool = False  # the bytes are TLS plaintext, read at the TLS library: the connection is encrypted on the wire
    tls_version: int = 0  # the negotiated version as OpenSSL numbers it (0x0304: TLS 1.3); 0 when unknown

    # Written out rather than generated: the compiled build runs a dataclass's generated __init__ as Python code, 5x
    # slower than a written one, and one of these is made per kernel message. tests/edge/test_accel.py checks it
    # against the fields.
    def __init__(self, ts_ns: int, end_ns: int, pid: int, tid: int, comm: str, fd: int, sock: int, role: Role,
                 direction: Direction, local: Endpoint, remote: Endpoint, size: int, payload: bytes, prev_bytes: int,
                 prev_end_ns: int, offcpu_ns: int, rv: int | None = None, tls: bool = False,
                 tls_version: int = 0) -> None:
        self.ts_ns = ts_ns
        self.end_ns = end_ns
        self.pid = pid
        self.tid = tid
        self.comm = comm
        self.fd = fd
        self.sock = sock
        self.role = role
        self.direction = direction
        self.local = local
        self.remote = remote
        self.size = size
        self.payload = payload
        self.prev_bytes = prev_bytes
        self.prev_end_ns = prev_end_ns
        self.offcpu_ns = offcpu_ns
        self.rv = rv
        self.tls = tls
        self.tls_version = tls_version


@dataclass(slots=True)
class DataMoreEvent:
    """A later syscall of the message in flight on `sock`: its bytes, while the message's snapshot is short.

    The probes send these until `payload_bytes` of the message are out, so that a message moved in small
    syscalls (MQTT read a byte or two at a time, HTTP heads written in pieces) still reaches the parsers whole.
    """

    ts_ns: int  # sys_enter of this syscall
    end_ns: int  # sys_exit of this syscall
    sock: int
    pid: int
    tid: int
    direction: Direction
    offset: int  # bytes of the message moved before this syscall: where `payload` goes in the snapshot
    payload: bytes
    tls: bool = False


@dataclass(slots=True)
class H2Event:
    """The HTTP/2 frames one call moved on a connection in frame mode (bpf/h2.bpf.h).

    `payload` is the connection's byte stream in that direction with every DATA payload left out (and the payload of
    frames longer than H2_KEEP_MAX or of unknown type): frame headers and control-frame payloads, in order. A frame
    that straddles calls continues in the next event of the same direction. `gap`: bytes before this event were lost
    and it begins at a frame header; `start`: the connection's first frames, its HPACK tables still empty.
    """

    ts_ns: int  # entry of the syscall (or TLS library call)
    end_ns: int  # its return
    pid: int
    tid: int
    comm: str
    sock: int
    role: Role
    direction: Direction
    local: Endpoint
    remote: Endpoint
    size: int  # bytes the call moved
    payload: bytes
    start: bool = False
    gap: bool = False
    tls: bool = False
    tls_version: int = 0


@dataclass(slots=True)
class CloseEvent:
    """A socket closed by the process (close(2) on a tracked socket fd)."""

    ts_ns: int
    pid: int
    tid: int
    fd: int
    sock: int
    last_bytes: int  # total bytes of the message in flight when it closed
    last_end_ns: int
    offcpu_ns: int


@dataclass(slots=True)
class ConnectEvent:
    """A TCP connection that reached ESTABLISHED from SYN_SENT (client side)."""

    ts_ns: int  # when it became ESTABLISHED
    pid: int  # the task that called connect()
    comm: str
    sock: int
    local: Endpoint
    remote: Endpoint
    latency_ns: int  # SYN_SENT -> ESTABLISHED
    error: int = 0  # non-zero errno when the connect failed (SYN_SENT -> CLOSE)


class FaultKind(enum.IntEnum):
    """TCP faults from the tcp:* tracepoints."""

    RETRANSMIT = 0
    SEND_RESET = 1
    RECEIVE_RESET = 2


@dataclass(slots=True)
class TcpFaultEvent:
    """A retransmitted segment or a reset on a connection."""

    ts_ns: int
    kind: FaultKind
    sock: int
    local: Endpoint
    remote: Endpoint
    state: int  # TCP state number at the time


@dataclass(slots=True)
class ExecEvent:
    """A process image replaced by exec."""

    ts_ns: int
    pid: int
    ppid: int
    comm: str
    filename: str


@dataclass(slots=True)
class ExitEvent:
    """A process (thread-group leader) exited."""

    ts_ns: int
    pid: int
    comm: str
    exit_code: int


class FileOp(enum.IntEnum):
    """File operations worth a span when slow."""

    READ = 0
    WRITE = 1
    FSYNC = 2


@dataclass(slots=True)
class FileIoEvent:
    """A file read/write/fsync on a regular file slower than the configured threshold."""

    ts_ns: int  # sys_enter
    end_ns: int  # sys_exit
    pid: int
    tid: int
    op: FileOp
    fd: int
    size: int  # bytes moved (return value), 0 for fsync
    path: str  # best effort: up to a few trailing path components


@dataclass(slots=True)
class WakeupEvent:
    """One thread of a traced process woke another of the same process (sched_waking, in the waker's context)."""

    ts_ns: int
    pid: int
    waker_tid: int
    wakee_tid: int
    wakee_since_ns: int  # when the wakee was switched out (its sleep began); 0 when not known


@dataclass(slots=True)
class TurnEvent:
    """An event loop's thread returned from its wait (epoll): a turn of the loop begins."""

    ts_ns: int
    pid: int
    tid: int
    ready: int  # descriptors the wait reported ready (0 on timeout, -errno on error)


@dataclass(slots=True)
class PyContextEvent:
    """The contexts a Python thread wrote a message's first bytes in (its task's, then each one's parent): sent just
    before that message's DataEvent, with its ts_ns and sock."""

    ts_ns: int
    pid: int
    tid: int
    sock: int
    contexts: tuple[int, ...]  # nearest first


KernelEvent = (DataEvent | DataMoreEvent | H2Event | CloseEvent | ConnectEvent | TcpFaultEvent | ExecEvent | ExitEvent
               | FileIoEvent | WakeupEvent | TurnEvent | PyContextEvent)
