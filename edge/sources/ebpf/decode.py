"""Ring-buffer records -> events.py dataclasses. Pure functions over bytes; no kernel needed to test them.

Each struct.Struct below mirrors one C struct of bpf/helix.h, bpf/io.h or bpf/proc.h (named next to it);
`_Static_assert`s in those headers pin the sizes used here. Byte order is the host's ('=').
A record that is too short, of an unknown type, or with an out-of-range enum value is a counted drop,
never an exception.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from ... import accel
from .events import (
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
    H2Event,
    KernelEvent,
    PyContextEvent,
    Role,
    TcpFaultEvent,
    TurnEvent,
    WakeupEvent,
)

__all__ = ["DecodeStats", "decode_event", "decode_batch", "use_c_records", "EVENT_TYPES", "RECORD_SIZES"]

# bpf/helix.h enum helix_event_type
EV_DATA, EV_CLOSE, EV_CONNECT, EV_TCP_FAULT, EV_EXEC, EV_EXIT, EV_FILE_IO, EV_DATA_MORE, EV_WAKEUP, EV_H2, EV_TURN, EV_PYCTX = range(1, 13)
EVENT_TYPES = {EV_DATA: "data", EV_CLOSE: "close", EV_CONNECT: "connect", EV_TCP_FAULT: "tcp_fault",
               EV_EXEC: "exec", EV_EXIT: "exit", EV_FILE_IO: "file_io", EV_DATA_MORE: "data_more",
               EV_WAKEUP: "wakeup", EV_H2: "h2", EV_TURN: "turn", EV_PYCTX: "pyctx"}
# bpf/helix.h record flags
F_TLS, F_H2_START, F_H2_GAP = 1 << 0, 1 << 1, 1 << 2

_TYPE = struct.Struct("=I")
_EP = "16s16sHHHBB"  # bpf/helix.h struct helix_endpoints (40 bytes)
# bpf/io.h struct data_event (144 bytes + payload)
_DATA = struct.Struct("=IIIi QQQQQQQQ" + _EP + " 16s IHH")
# The same, for decoding: the addresses are not unpacked, the endpoints come from their bytes (_endpoints2).
_DATA_READ = struct.Struct("=IIIi QQQQQQQQ 32x HHHBB 16s IHH")
# saddr, daddr, sport, dport, family of the record's helix_endpoints (integer bounds: compiled, a slice object fails)
_EP_AT, _EP_END = 80, 118
_RV_KERNEL = 1 << 63  # bpf/helix.h HELIX_RV_KERNEL
_RV_MASK = (1 << 56) - 1
# bpf/io.h struct data_more_event (48 bytes + payload)
_DATA_MORE = struct.Struct("=IIIHBB QQQQ")
# bpf/io.h struct h2_event (112 bytes + payload)
_H2 = struct.Struct("=IIIHH QQQQ" + _EP + " 16s II")
# bpf/io.h struct close_event (56 bytes)
_CLOSE = struct.Struct("=IIIi QQQQQ")
# bpf/io.h struct connect_event (96 bytes)
_CONNECT = struct.Struct("=IIiI QQQ" + _EP + " 16s")
# bpf/io.h struct tcp_fault_event (72 bytes)
_FAULT = struct.Struct("=IIiI QQ" + _EP)
# bpf/io.h struct file_io_event (336 bytes; HELIX_PATH_DEPTH=6 names of HELIX_NAME_LEN=48)
_FILE_IO = struct.Struct("=IIIi IHH QQQ" + " 48s" * 6)
# bpf/proc.h struct exec_event (296 bytes)
_EXEC = struct.Struct("=IIII Q 16s 256s")
# bpf/proc.h struct exit_event (40 bytes)
_EXIT = struct.Struct("=IIiI Q 16s")
# bpf/proc.h struct wakeup_event (32 bytes)
_WAKEUP = struct.Struct("=IIII QQ")
# bpf/proc.h struct turn_event (24 bytes)
_TURN = struct.Struct("=IIIi Q")
# bpf/io.h struct py_ctx_event (96 bytes; HELIX_PYCTX_DEPTH=8)
_PYCTX = struct.Struct("=IIII QQ 8Q")

RECORD_SIZES = {EV_DATA: _DATA.size, EV_DATA_MORE: _DATA_MORE.size, EV_H2: _H2.size, EV_CLOSE: _CLOSE.size,
                EV_CONNECT: _CONNECT.size, EV_TCP_FAULT: _FAULT.size, EV_FILE_IO: _FILE_IO.size, EV_EXEC: _EXEC.size,
                EV_EXIT: _EXIT.size, EV_WAKEUP: _WAKEUP.size, EV_TURN: _TURN.size,
                EV_PYCTX: _PYCTX.size}

_AF_INET, _AF_INET6 = 2, 10
_ROLES = tuple(Role)
_DIRECTIONS = tuple(Direction)
_FAULTS = tuple(FaultKind)
_FILE_OPS = tuple(FileOp)
_ENDPOINT_CACHE_MAX = 4096


@dataclass(slots=True)
class DecodeStats:
    """What came out of the ring buffer: decoded records and counted drops by cause."""

    decoded: int = 0
    short: int = 0  # shorter than its type's layout (or its payload_len)
    unknown_type: int = 0
    bad_value: int = 0  # an enum field out of range
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        """All drops together."""
        return self.short + self.unknown_type + self.bad_value


_default_stats = DecodeStats()
# Endpoints repeat (a handful of peers per node), and inet_ntop dominates decoding: remember them.
_endpoints: dict[tuple[int, bytes, int], Endpoint] = {}


def _endpoint(family: int, addr: bytes, port: int) -> Endpoint:
    key = (family, addr, port)
    ep = _endpoints.get(key)
    if ep is None:
        if family == _AF_INET:
            text = socket.inet_ntop(socket.AF_INET, addr[:4])
        elif family == _AF_INET6:
            text = socket.inet_ntop(socket.AF_INET6, addr)
        else:
            text = ""
        if len(_endpoints) >= _ENDPOINT_CACHE_MAX:
            _endpoints.clear()
        ep = _endpoints[key] = Endpoint(text, port)
    return ep


# Both endpoints of a data record at once, keyed by the record's address, port and family bytes: one slice and one
# lookup per record where two keys, two address objects and two lookups were made.
_endpoint_pairs: dict[bytes, tuple[Endpoint, Endpoint]] = {}


def _endpoints2(raw: bytes, family: int, sport: int, dport: int) -> tuple[Endpoint, Endpoint]:
    key = raw[_EP_AT:_EP_END]
    pair = _endpoint_pairs.get(key)
    if pair is None:
        if len(_endpoint_pairs) >= _ENDPOINT_CACHE_MAX:
            _endpoint_pairs.clear()
        pair = _endpoint_pairs[key] = (_endpoint(family, key[:16], sport), _endpoint(family, key[16:32], dport))
    return pair


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


# Process names repeat even more than endpoints: a record's 16-byte comm field, decoded once.
_comms: dict[bytes, str] = {}


def _comm(b: bytes) -> str:
    text = _comms.get(b)
    if text is None:
        if len(_comms) >= _ENDPOINT_CACHE_MAX:
            _comms.clear()
        text = _comms[b] = _cstr(b)
    return text


def _path(depth: int, complete: int, names: tuple[bytes, ...]) -> str:
    parts = [_cstr(names[i]) for i in range(min(depth, len(names)))]
    parts.reverse()
    joined = "/".join(parts)
    return "/" + joined if complete else ".../" + joined if joined else ""


def _exit_code(status: int) -> int:
    # wait(2) status: normal exit in bits 8-15, else the terminating signal (negative, like subprocess)
    return (status >> 8) & 0xFF if status & 0x7F == 0 else -(status & 0x7F)


def _decode(kind: int, raw: bytes) -> KernelEvent:
    if kind == EV_WAKEUP:  # the most frequent record on a node with thread pools
        _, pid, waker, wakee, ts, since = _WAKEUP.unpack_from(raw)
        return WakeupEvent(ts, pid, waker, wakee, since)
    if kind == EV_TURN:
        _, pid, tid, ready, ts = _TURN.unpack_from(raw)
        return TurnEvent(ts, pid, tid, ready)
    if kind == EV_PYCTX:
        _, pid, tid, depth, ts, sock, *ctx = _PYCTX.unpack_from(raw)
        if not 1 <= depth <= len(ctx):
            raise IndexError(depth)  # counted as a bad value
        return PyContextEvent(ts, pid, tid, sock, tuple(ctx[:depth]))
    if kind == EV_DATA:
        (_, pid, tid, fd, ts, end, sock, size, prev_bytes, prev_end, offcpu, rv,
         sport, dport, family, role, direction, comm, plen, flags, tlsv) = _DATA_READ.unpack_from(raw)
        payload = raw[_DATA.size:_DATA.size + plen]
        if len(payload) != plen:
            raise _Short
        local, remote = _endpoints2(raw, family, sport, dport)
        return DataEvent(ts, end, pid, tid, _comm(comm), fd, sock, _ROLES[role], _DIRECTIONS[direction],
                         local, remote, size, payload, prev_bytes, prev_end, offcpu,
                         rv & _RV_MASK if rv & _RV_KERNEL else None, bool(flags & F_TLS), tlsv)
    if kind == EV_DATA_MORE:
        _, pid, tid, plen, direction, flags, ts, end, sock, offset = _DATA_MORE.unpack_from(raw)
        payload = raw[_DATA_MORE.size:_DATA_MORE.size + plen]
        if len(payload) != plen:
            raise _Short
        return DataMoreEvent(ts, end, sock, pid, tid, _DIRECTIONS[direction], offset, payload, bool(flags & F_TLS))
    if kind == EV_H2:
        (_, pid, tid, flags, tlsv, ts, end, sock, size, saddr, daddr, sport, dport, family, role, direction, comm,
         plen, _pad) = _H2.unpack_from(raw)
        payload = raw[_H2.size:_H2.size + plen]
        if len(payload) != plen:
            raise _Short
        return H2Event(ts, end, pid, tid, _cstr(comm), sock, _ROLES[role], _DIRECTIONS[direction],
                       _endpoint(family, saddr, sport), _endpoint(family, daddr, dport), size, payload,
                       bool(flags & F_H2_START), bool(flags & F_H2_GAP), bool(flags & F_TLS), tlsv)
    if kind == EV_CLOSE:
        _, pid, tid, fd, ts, sock, last_bytes, last_end, offcpu = _CLOSE.unpack_from(raw)
        return CloseEvent(ts, pid, tid, fd, sock, last_bytes, last_end, offcpu)
    if kind == EV_CONNECT:
        (_, pid, error, _pad, ts, sock, latency, saddr, daddr, sport, dport, family, _role, _dir,
         comm) = _CONNECT.unpack_from(raw)
        return ConnectEvent(ts, pid, _cstr(comm), sock, _endpoint(family, saddr, sport),
                            _endpoint(family, daddr, dport), latency, error)
    if kind == EV_TCP_FAULT:
        (_, fault, state, _pad, ts, sock, saddr, daddr, sport, dport, family, _role,
         _dir) = _FAULT.unpack_from(raw)
        return TcpFaultEvent(ts, _FAULTS[fault], sock, _endpoint(family, saddr, sport),
                             _endpoint(family, daddr, dport), state)
    if kind == EV_FILE_IO:
        _, pid, tid, fd, op, depth, complete, ts, end, size, *names = _FILE_IO.unpack_from(raw)
        return FileIoEvent(ts, end, pid, tid, _FILE_OPS[op], fd, size, _path(depth, complete, tuple(names)))
    if kind == EV_EXEC:
        _, pid, ppid, _pad, ts, comm, filename = _EXEC.unpack_from(raw)
        return ExecEvent(ts, pid, ppid, _cstr(comm), _cstr(filename))
    # EV_EXIT (the caller checked the type)
    _, pid, status, _pad, ts, comm = _EXIT.unpack_from(raw)
    return ExitEvent(ts, pid, _cstr(comm), _exit_code(status))


class _Short(Exception):
    pass


# The C decoder of the records every traced message brings (edge/sources/ebpf/_records.c), where it was built: it
# answers the valid data, data_more and close records whose endpoints and process name the caches above hold, and
# leaves the rest (drops, first sightings, other types) to the Python code below. None: the Python code decodes all.
_C_RECORDS = "edge.sources.ebpf._records"
_records: Any = accel.c_module(_C_RECORDS)
_C_CLASSES = (DataEvent, DataMoreEvent, CloseEvent)
_C_TYPE_NAMES = {DataEvent: "data", DataMoreEvent: "data_more", CloseEvent: "close"}


def use_c_records(on: bool) -> bool:
    """Turn the C record decoder on (where it runs here) or off; True when it is on."""
    global _records
    _records = accel.c_module(_C_RECORDS) if on else None
    return _records is not None


def decode_event(raw: bytes, stats: DecodeStats | None = None) -> KernelEvent | None:
    """Decode one ring-buffer record; None (and a counted drop in `stats`) when it is not a valid record."""
    st = _default_stats if stats is None else stats
    if _records is not None:
        fast: KernelEvent | None = _records.record(raw, _C_CLASSES, _ROLES, _DIRECTIONS, _endpoint_pairs, _comms)
        if fast is not None:
            st.decoded += 1
            name = _C_TYPE_NAMES[type(fast)]
            st.by_type[name] = st.by_type.get(name, 0) + 1
            return fast
    if len(raw) < 4:
        st.short += 1
        return None
    kind = _TYPE.unpack_from(raw)[0]
    need = RECORD_SIZES.get(kind)
    if need is None:
        st.unknown_type += 1
        return None
    if len(raw) < need:
        st.short += 1
        return None
    try:
        ev = _decode(kind, raw)
    except _Short:
        st.short += 1
        return None
    except IndexError:  # an enum value (role, direction, fault kind, file op) out of range
        st.bad_value += 1
        return None
    st.decoded += 1
    name = EVENT_TYPES[kind]
    st.by_type[name] = st.by_type.get(name, 0) + 1
    return ev


def decode_batch(records: list[bytes], stats: DecodeStats | None = None) -> list[KernelEvent]:
    """Decode many records, keeping the valid ones in order."""
    out: list[KernelEvent] = []
    for raw in records:
        ev = decode_event(raw, stats)
        if ev is not None:
            out.append(ev)
    return out
