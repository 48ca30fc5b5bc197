"""The C record decoder (edge/sources/ebpf/_records.c) against the Python decoder it speeds up: on random, mutated and
truncated records both give the same events and the same drop counts, neither raises, and the valid data, data_more
and close records are the C decoder's to answer once their endpoints and process name were seen."""
from __future__ import annotations

import dataclasses
import os
import socket
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import accel

c_only = pytest.mark.skipif(
    not accel.c_status().compiled and os.environ.get("HELIX_REQUIRE_ACCEL") != "1",
    reason=f"C extensions not in use: {accel.c_status().detail}")

_EP = struct.Struct("=16s16sHHHBB")


def _ep(family: int, src: bytes, sport: int, dst: bytes, dport: int, role: int, direction: int) -> bytes:
    return _EP.pack(src, dst, sport, dport, family, role, direction)


def data_record(payload: bytes, *, role: int = 2, direction: int = 1, rv: int = 0, flags: int = 0, tlsv: int = 0,
                comm: bytes = b"api-server", family: int = 2, addr: bytes = b"\x7f\0\0\x01", fd: int = 7,
                claimed: int | None = None) -> bytes:
    head = struct.pack("=IIIiQQQQQQQQ", 1, 4242, 4243, fd, 10**15, 10**15 + 2000, 0xFFFF8880DEAD0000, len(payload),
                       77, 10**15 - 1000, 5_000_000, rv)
    tail = struct.pack("=16sIHH", comm, len(payload) if claimed is None else claimed, flags, tlsv)
    return head + _ep(family, addr, 8080, addr[::-1], 51000, role, direction) + tail + payload


def more_record(payload: bytes, *, direction: int = 0, flags: int = 0, offset: int = 60,
                claimed: int | None = None) -> bytes:
    return struct.pack("=IIIHBBQQQQ", 8, 4242, 4243, len(payload) if claimed is None else claimed, direction, flags,
                       10**15, 10**15 + 10, 0xFFFF8880DEAD0000, offset) + payload


def close_record(fd: int = 7) -> bytes:
    return struct.pack("=IIIiQQQQQ", 2, 4242, 4243, fd, 10**15, 0xFFFF8880DEAD0000, 1234, 10**15 - 5, 99)


_V6 = socket.inet_pton(socket.AF_INET6, "fe80::1")
VALID = [
    data_record(b"GET /api/orders?id=1 HTTP/1.1\r\nHost: shop.local:8080\r\n\r\n"),
    data_record(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", role=1, direction=0, flags=1, tlsv=0x304,
                rv=(1 << 63) | 0x00ABCDEF012345),
    data_record(b"", rv=0x00ABCDEF012345, fd=-1, comm=b"x" * 16),
    data_record(b"\x10\x0c\x00\x04MQTT", family=10, addr=_V6, comm=b"caf\xc3\xa9\xff\0junk"),
    data_record(b"\0" * 600, family=7, role=0, direction=1, flags=0xFFFE),
    more_record(b"Host: h\r\n\r\n"),
    more_record(b"", direction=1, flags=1, offset=2**64 - 1),
    close_record(),
    close_record(fd=-100),
]


def _reference():
    """The pure-Python decoder with the C decoder off: what every answer is compared with."""
    return accel.modules("pure")["edge.sources.ebpf.decode"]


@contextmanager
def _with_c(implementation: str):
    decode = accel.modules(implementation)["edge.sources.ebpf.decode"]
    was_on = decode._records is not None
    assert decode.use_c_records(True), accel.c_status().detail
    try:
        yield decode
    finally:
        decode.use_c_records(was_on)


def _plain(x: object) -> object:
    """An event as comparable data across the two implementations' classes (IntEnums compare by value)."""
    if x is None or isinstance(x, (int, str, bytes, bool)):
        return x
    names = [f.name for f in dataclasses.fields(getattr(_reference(), type(x).__name__))]
    return (type(x).__name__, tuple((n, type(getattr(x, n)).__name__, _plain(getattr(x, n))) for n in names))


def _stats(st_: object) -> tuple:
    return tuple(getattr(st_, n) for n in ("decoded", "short", "unknown_type", "bad_value", "by_type"))


def _outcome(decode, raw: bytes) -> tuple:
    stats = decode.DecodeStats()
    try:
        got = [_plain(decode.decode_event(raw, stats)) for _ in range(2)]  # the second sees the caches filled
    except Exception as e:  # noqa: BLE001 - neither may raise; the comparison says which did
        return ("raised", repr(e))
    return ("ok", got, _stats(stats))


def _assert_same(raw: bytes) -> None:
    ref = _reference()
    assert ref._records is None
    want = _outcome(ref, raw)
    assert want[0] == "ok", want
    for implementation in accel.implementations():
        with _with_c(implementation) as decode:
            assert _outcome(decode, raw) == want, raw
    # What the C decoder answers at all is what the Python decoder answers (None: Python decides).
    c = _c()
    got = c.record(raw, ref._C_CLASSES, ref._ROLES, ref._DIRECTIONS, ref._endpoint_pairs, ref._comms)
    if got is not None:
        assert _plain(got) == _plain(ref.decode_event(raw, ref.DecodeStats()))


def _c():
    mod = accel.c_module("edge.sources.ebpf._records")
    assert mod is not None, accel.c_status().detail
    return mod


@c_only
def test_the_common_records_are_decoded_in_c():
    c, ref = _c(), _reference()
    for raw in VALID:
        want = ref.decode_event(raw, ref.DecodeStats())  # fills the endpoint and process-name caches
        got = c.record(raw, ref._C_CLASSES, ref._ROLES, ref._DIRECTIONS, ref._endpoint_pairs, ref._comms)
        assert got is not None, raw
        assert type(got) is type(want) and _plain(got) == _plain(want)
        assert got == want
    for raw in VALID:
        _assert_same(raw)


@c_only
def test_the_rest_is_left_to_python():
    c, ref = _c(), _reference()
    args = (ref._C_CLASSES, ref._ROLES, ref._DIRECTIONS, ref._endpoint_pairs, ref._comms)
    ok = data_record(b"GET / HTTP/1.1\r\n\r\n")
    ref.decode_event(ok)
    assert c.record(ok, *args) is not None
    unseen = data_record(b"GET / HTTP/1.1\r\n\r\n", addr=b"\x0a\x09\x08\x07")
    for raw in [b"", b"\x01\0\0", ok[:-1], ok[:143], data_record(b"abc", claimed=4), data_record(b"a", role=3),
                data_record(b"a", direction=2), unseen, more_record(b"ab", claimed=3), more_record(b"a", direction=2),
                more_record(b"")[:47], close_record()[:55], struct.pack("=I", 11) + bytes(40), bytearray(ok),
                memoryview(ok)]:
        assert c.record(raw, *args) is None, raw
    ref.decode_event(unseen)  # a first sighting: Python names the endpoints, C answers from then on
    assert c.record(unseen, *args) is not None


@c_only
def test_bad_arguments_raise_type_errors_not_crashes():
    c, ref = _c(), _reference()
    raw = VALID[0]
    good = (ref._C_CLASSES, ref._ROLES, ref._DIRECTIONS, ref._endpoint_pairs, ref._comms)
    for args in [(raw,), (raw, *good, 1), (raw, ref._C_CLASSES[:2], *good[1:]), (raw, good[0], list(good[1]),
                                                                                   *good[2:]),
                 (raw, *good[:3], [], good[4]), (raw, *good[:4], None)]:
        with pytest.raises(TypeError):
            c.record(*args)
    # A cache holding something else than decode.py puts there is not trusted.
    key = raw[80:118]
    assert c.record(raw, *good[:3], {key: "not a pair"}, good[4]) is None


@c_only
def test_the_c_decoder_runs_in_the_active_modules_and_turns_off():
    import edge.sources.ebpf.decode as decode

    assert decode._records is not None and decode._records is accel.c_module("edge.sources.ebpf._records")
    assert _reference()._records is None  # the pure copy is the reference
    code = "import edge.sources.ebpf.decode as d; print(d._records is None)"
    root = Path(__file__).resolve().parents[4]
    for var in ("HELIX_ACCEL_C", "HELIX_ACCEL"):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, var: "0"}, cwd=root,
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "True", (var, out.stdout, out.stderr)


_PAYLOADS = st.one_of(st.binary(max_size=64), st.sampled_from([b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"]))


@st.composite
def _records(draw):
    kind = draw(st.sampled_from(["data", "data", "more", "close", "raw"]))
    if kind == "data":
        return data_record(draw(_PAYLOADS), role=draw(st.integers(0, 4)), direction=draw(st.integers(0, 3)),
                           rv=draw(st.integers(0, 2**64 - 1)), flags=draw(st.integers(0, 0xFFFF)),
                           tlsv=draw(st.integers(0, 0xFFFF)), fd=draw(st.integers(-2**31, 2**31 - 1)),
                           comm=draw(st.binary(max_size=16)), family=draw(st.sampled_from([2, 10, 0, 65535])),
                           addr=draw(st.sampled_from([b"\x7f\0\0\x01", _V6, b"\xff" * 16])),
                           claimed=draw(st.none() | st.integers(0, 2**32 - 1)))
    if kind == "more":
        return more_record(draw(_PAYLOADS), direction=draw(st.integers(0, 3)), flags=draw(st.integers(0, 255)),
                           offset=draw(st.integers(0, 2**64 - 1)), claimed=draw(st.none() | st.integers(0, 0xFFFF)))
    if kind == "close":
        return close_record(draw(st.integers(-2**31, 2**31 - 1)))
    return struct.pack("=I", draw(st.integers(0, 13))) + draw(st.binary(max_size=200))


@c_only
@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=_records(), mutation=st.tuples(st.sampled_from(["none", "cut", "flip", "extend", "retype"]),
                                          st.integers(0, 10**6), st.binary(min_size=1, max_size=8)))
def test_random_mutated_and_truncated_records_decode_alike(raw, mutation):
    op, at, blob = mutation
    at %= len(raw) + 1
    if op == "cut":
        raw = raw[:at]
    elif op == "flip":
        raw = raw[:at] + blob + raw[at + len(blob):]
    elif op == "extend":
        raw = raw + blob
    elif op == "retype":
        raw = struct.pack("=I", at % 13) + raw[4:]
    _assert_same(raw)
