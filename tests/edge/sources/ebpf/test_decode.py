"""The ring-buffer record decoder, on records packed the way bpf/io.h and bpf/proc.h lay them out."""
from __future__ import annotations

import socket
import struct

from hypothesis import given, settings, strategies as st

from edge.sources.ebpf.decode import RECORD_SIZES, DecodeStats, decode_batch, decode_event
from edge.sources.ebpf.events import (
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
    PyContextEvent,
    Role,
    TcpFaultEvent,
    TurnEvent,
    WakeupEvent,
)

EP = struct.Struct("=16s16sHHHBB")


def ep4(src: str, sport: int, dst: str, dport: int, role: int = 0, direction: int = 0) -> bytes:
    return EP.pack(socket.inet_aton(src), socket.inet_aton(dst), sport, dport, 2, role, direction)


def data_record(payload: bytes, *, role: int = 2, direction: int = 1, claimed: int | None = None, rv: int = 0) -> bytes:
    head = struct.pack("=IIIiQQQQQQQQ", 1, 100, 101, 7, 1000, 1500, 0xFFFF888812345678, 83, 10, 900, 42, rv)
    tail = struct.pack("=16sII", b"python3", len(payload) if claimed is None else claimed, 0)
    return head + ep4("127.0.0.1", 8080, "127.0.0.1", 40000, role, direction) + tail + payload


def test_data_record() -> None:
    ev = decode_event(data_record(b"GET / HTTP/1.1\r\n"))
    assert ev == DataEvent(1000, 1500, 100, 101, "python3", 7, 0xFFFF888812345678, Role.SERVER, Direction.INGRESS,
                           Endpoint("127.0.0.1", 8080), Endpoint("127.0.0.1", 40000), 83, b"GET / HTTP/1.1\r\n",
                           10, 900, 42)


def test_data_records_name_their_own_endpoints() -> None:
    # Endpoints are remembered by the record's address bytes: records differing in one address, one port or the
    # family each get theirs.
    head = data_record(b"GET / HTTP/1.1\r\n")[:80]
    tail = struct.pack("=16sII", b"python3", 2, 0) + b"ok"
    seen = set()
    for src, sport, dst, dport in [("10.0.0.1", 80, "10.0.0.2", 5000), ("10.0.0.1", 80, "10.0.0.3", 5000),
                                   ("10.0.0.1", 81, "10.0.0.2", 5000), ("10.0.0.1", 80, "10.0.0.2", 5001),
                                   ("10.0.0.1", 80, "10.0.0.2", 5000)]:
        ev = decode_event(head + ep4(src, sport, dst, dport, 2, 1) + tail)
        assert isinstance(ev, DataEvent)
        assert (ev.local, ev.remote) == (Endpoint(src, sport), Endpoint(dst, dport))
        seen.add((ev.local, ev.remote))
    assert len(seen) == 4
    v6 = EP.pack(socket.inet_pton(socket.AF_INET6, "fe80::1"), socket.inet_pton(socket.AF_INET6, "::1"), 80, 5000,
                 10, 2, 1)
    ev = decode_event(head + v6 + tail)
    assert (ev.local, ev.remote) == (Endpoint("fe80::1", 80), Endpoint("::1", 5000))  # type: ignore[union-attr]
    same_bytes_v4 = EP.pack(socket.inet_pton(socket.AF_INET6, "fe80::1"), socket.inet_pton(socket.AF_INET6, "::1"),
                            80, 5000, 2, 2, 1)
    ev = decode_event(head + same_bytes_v4 + tail)
    assert (ev.local, ev.remote) == (Endpoint("254.128.0.0", 80), Endpoint("0.0.0.0", 5000))  # type: ignore[union-attr]


def test_data_record_layout_and_kernel_randomness() -> None:
    assert RECORD_SIZES[1] == 144  # bpf/io.h: _Static_assert(sizeof(struct data_event) == 144)
    assert decode_event(data_record(b"GET / HTTP/1.1\r\n")).rv is None  # type: ignore[union-attr]
    # bit 63 says the kernel chose R; the low 56 bits are R, whatever else is set in between
    kernel = decode_event(data_record(b"GET / HTTP/1.1\r\n", rv=(1 << 63) | (0x7F << 56) | 0x00ABCDEF012345))
    assert kernel.rv == 0x00ABCDEF012345  # type: ignore[union-attr]
    # without bit 63 the field means nothing (the kernel used the wire's trace id, or did not decide)
    assert decode_event(data_record(b"GET / HTTP/1.1\r\n", rv=0x00ABCDEF012345)).rv is None  # type: ignore[union-attr]


def more_record(payload: bytes, *, direction: int = 1, offset: int = 1, claimed: int | None = None) -> bytes:
    head = struct.pack("=IIIHBB", 8, 100, 101, len(payload) if claimed is None else claimed, direction, 0)
    return head + struct.pack("=QQQQ", 2000, 2100, 0xFFFF888812345678, offset) + payload


def test_data_more_record() -> None:
    assert RECORD_SIZES[8] == 48  # bpf/io.h: _Static_assert(sizeof(struct data_more_event) == 48)
    ev = decode_event(more_record(b"\x0b\x00\x07plant/t", offset=2))
    assert ev == DataMoreEvent(2000, 2100, 0xFFFF888812345678, 100, 101, Direction.INGRESS, 2, b"\x0b\x00\x07plant/t")
    stats = DecodeStats()
    assert decode_event(more_record(b"ab", claimed=3), stats) is None and stats.short == 1
    assert decode_event(more_record(b"ab", direction=2), stats) is None and stats.bad_value == 1
    assert decode_event(more_record(b"")[:47], stats) is None and stats.short == 2
    assert stats.by_type == {}


def test_ipv6_endpoints() -> None:
    a, b = socket.inet_pton(socket.AF_INET6, "2001:db8::1"), socket.inet_pton(socket.AF_INET6, "::1")
    raw = struct.pack("=IIiIQQ", 4, 1, 1, 0, 5, 9) + EP.pack(a, b, 443, 5555, 10, 1, 0)
    ev = decode_event(raw)
    assert ev == TcpFaultEvent(5, FaultKind.SEND_RESET, 9, Endpoint("2001:db8::1", 443), Endpoint("::1", 5555), 1)


def test_other_records() -> None:
    close = struct.pack("=IIIiQQQQQ", 2, 5, 6, 3, 10, 11, 12, 13, 14)
    assert decode_event(close) == CloseEvent(10, 5, 6, 3, 11, 12, 13, 14)
    conn = struct.pack("=IIiIQQQ", 3, 9, 111, 0, 20, 21, 22) + ep4("10.0.0.2", 5000, "10.0.0.1", 80, 1) + b"curl".ljust(16, b"\0")
    assert decode_event(conn) == ConnectEvent(20, 9, "curl", 21, Endpoint("10.0.0.2", 5000), Endpoint("10.0.0.1", 80), 22, 111)
    names = [b"data.bin", b"spool", b"var"] + [b""] * 3
    fio = struct.pack("=IIIiIHHQQQ", 7, 1, 2, 3, 2, 3, 1, 30, 40, 0) + b"".join(n.ljust(48, b"\0") for n in names)
    assert decode_event(fio) == FileIoEvent(30, 40, 1, 2, FileOp.FSYNC, 3, 0, "/var/spool/data.bin")
    partial = struct.pack("=IIIiIHHQQQ", 7, 1, 2, 3, 1, 2, 0, 30, 40, 5) + b"".join(n.ljust(48, b"\0") for n in names)
    assert decode_event(partial).path == ".../spool/data.bin"  # type: ignore[union-attr]
    ex = struct.pack("=IIIIQ16s256s", 5, 50, 1, 0, 60, b"true", b"/bin/true")
    assert decode_event(ex) == ExecEvent(60, 50, 1, "true", "/bin/true")
    for status, code in ((0, 0), (1 << 8, 1), (9, -9), (0x7F00, 127)):
        raw = struct.pack("=IIiIQ16s", 6, 50, status, 0, 70, b"true")
        assert decode_event(raw) == ExitEvent(70, 50, "true", code)
    wake = struct.pack("=IIIIQQ", 9, 50, 51, 52, 80, 75)  # bpf/proc.h struct wakeup_event
    assert len(wake) == RECORD_SIZES[9] == 32
    assert decode_event(wake) == WakeupEvent(80, 50, 51, 52, 75)
    turn = struct.pack("=IIIiQ", 11, 50, 51, -4, 90)  # bpf/proc.h struct turn_event: an epoll wait interrupted
    assert len(turn) == RECORD_SIZES[11] == 24
    assert decode_event(turn) == TurnEvent(90, 50, 51, -4)


def test_python_context_records_decode_their_valid_depth() -> None:
    """bpf/io.h struct py_ctx_event: `depth` of the 8 contexts are valid; a depth out of range is a counted drop."""
    raw = struct.pack("=IIIIQQ8Q", 12, 50, 51, 3, 90, 0xFFFF0001, 0x10, 0x20, 0x30, 0, 0, 0, 0, 0)
    assert len(raw) == RECORD_SIZES[12] == 96
    assert decode_event(raw) == PyContextEvent(90, 50, 51, 0xFFFF0001, (0x10, 0x20, 0x30))
    stats = DecodeStats()
    for depth in (0, 9):
        bad = struct.pack("=IIIIQQ8Q", 12, 50, 51, depth, 90, 1, *range(8))
        assert decode_event(bad, stats) is None
    assert stats.bad_value == 2


def test_bad_records_are_counted_drops() -> None:
    stats = DecodeStats()
    assert decode_event(b"", stats) is None
    assert decode_event(b"\x01\x00", stats) is None
    assert decode_event(struct.pack("=I", 99) + bytes(200), stats) is None
    assert decode_event(data_record(b"")[:100], stats) is None
    assert decode_event(data_record(b"abc", claimed=50), stats) is None  # payload shorter than claimed
    assert decode_event(data_record(b"x", role=7), stats) is None
    assert (stats.short, stats.unknown_type, stats.bad_value, stats.decoded) == (4, 1, 1, 0)
    assert decode_batch([data_record(b"ok"), b"junk"], stats)[0].payload == b"ok"  # type: ignore[union-attr]
    assert stats.decoded == 1 and stats.dropped == 7


@settings(max_examples=500)
@given(st.sampled_from(sorted(RECORD_SIZES)), st.binary(max_size=400))
def test_garbage_never_raises(kind: int, body: bytes) -> None:
    stats = DecodeStats()
    ev = decode_event(struct.pack("=I", kind) + body, stats)
    assert (ev is None) == (stats.dropped == 1)


def test_red_aggregate_layouts() -> None:
    from edge.sources.ebpf.loader import RED_CLIENT, RED_PRODUCER, RedAggregate

    key = struct.Struct("=IHBB 16s 8s 64s 40s")  # bpf/helix.h struct helix_red_key
    val = struct.Struct("=QQQ 17Q")  # bpf/helix.h struct helix_red_val
    assert (key.size, val.size) == (136, 160)  # the _Static_asserts of helix.h
    buckets = list(range(17))
    raw_val = val.pack(136, 3, 9_000_000, *buckets)
    client = RedAggregate.decode(key.pack(4242, 0, RED_CLIENT, 0, b"curl", b"GET", b"/api/items/7",
                                          b"shop.local:8080"), raw_val)
    assert (client.tgid, client.kind, client.comm, client.method, client.path, client.host) == (
        4242, RED_CLIENT, "curl", "GET", "/api/items/7", "shop.local:8080")
    assert (client.count, client.errors, client.sum_ns, client.buckets) == (136, 3, 9_000_000, tuple(buckets))
    # producer: the topic in `path`, the remote address's raw bytes in `host`, its family in `family`
    v4 = RedAggregate.decode(key.pack(7, 2, RED_PRODUCER, 0, b"sensor", b"", b"plant/t",
                                      socket.inet_aton("10.0.0.2")), raw_val)
    assert (v4.path, v4.host) == ("plant/t", "10.0.0.2")
    v6 = RedAggregate.decode(key.pack(7, 10, RED_PRODUCER, 0, b"sensor", b"", b"plant/t",
                                      socket.inet_pton(socket.AF_INET6, "fd00::2")), raw_val)
    assert v6.host == "fd00::2"
