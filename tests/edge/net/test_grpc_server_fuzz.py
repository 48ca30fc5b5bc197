"""The gRPC server fed mangled HTTP/2: whatever the bytes, the connection ends or serves, never the process.

HELIX_FUZZ_EXAMPLES=20000 runs the property longer than CI does.
"""
from __future__ import annotations

import gzip
import os

import h2.config
import h2.connection
import h2.events
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge.net import grpc_server
from edge.net.grpc_server import GrpcServer, Method

ECHO = "/test.Echo/Echo"



class _Transport:
    """Just enough of an asyncio transport to drive a connection without a socket."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default


def _feed(server: GrpcServer, data: bytes, chunk: int) -> None:
    """One connection's bytes, `chunk` at a time, until the server closes it; none may raise, whatever they are."""
    conn = grpc_server._Connection(server)
    transport = _Transport()
    conn.connection_made(transport)
    for i in range(0, len(data), chunk):
        conn.data_received(data[i:i + chunk])
        if transport.closed:
            break
    conn.connection_lost(None)


def _client_bytes(body: bytes, conn: h2.connection.H2Connection | None = None) -> bytes:
    conn = conn or h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", ECHO), (":authority", "t"),
                            ("content-type", "application/grpc"), ("grpc-encoding", "gzip")])
    conn.send_data(sid, b"\x01" + len(body).to_bytes(4, "big") + body, end_stream=True)
    return conn.data_to_send()




@settings(max_examples=int(os.environ.get("HELIX_FUZZ_EXAMPLES", "300")), deadline=None)
@given(body=st.binary(max_size=300), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                    max_size=6),
       cut=st.integers(0, 10_000), chunk=st.integers(1, 64), junk=st.binary(max_size=64))
@example(body=b"", flips=[(87, 14)], cut=131, chunk=1, junk=b"")  # a header value that is not UTF-8
def test_mangled_http2_never_escapes_the_connection(body, flips, cut, chunk, junk) -> None:
    seen: list[bytes] = []
    server = GrpcServer("127.0.0.1", 0, {ECHO: Method(lambda d, c: seen.append(d) or b"ok")}, max_message=1 << 16)
    compressed = gzip.compress(body, mtime=0)
    data = bytearray(_client_bytes(compressed))
    for pos, value in flips:
        if 24 <= pos < len(data):  # past the preface, so that frames, not the greeting, are mangled
            data[pos] = value
    data = bytes(data[:max(24, cut)]) + junk
    _feed(server, data, chunk)
    assert server.buffered == 0 and not server._streams and not server._connections
    # Anything handled is the real request. gRPC frames carry no checksum, so a flipped compressed-flag byte
    # hands the method the compressed bytes: the only mangling no server can see.
    assert all(d in (body, compressed) for d in seen), seen


def test_the_harness_serves_an_intact_request() -> None:
    # The property above would hold vacuously if nothing ever reached the method: intact bytes must be served.
    seen: list[bytes] = []
    server = GrpcServer("127.0.0.1", 0, {ECHO: Method(lambda d, c: seen.append(d) or b"ok")}, max_message=1 << 16)
    conn, transport = grpc_server._Connection(server), _Transport()
    conn.connection_made(transport)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    data = _client_bytes(gzip.compress(b"hello"), client)
    for i in range(0, len(data), 7):
        conn.data_received(data[i:i + 7])
    assert seen == [b"hello"] and not transport.closed and server.buffered == 0
    events = client.receive_data(bytes(transport.out))
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    trailers = [dict(e.headers) for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert body == b"\x00\x00\x00\x00\x02ok" and trailers == [{"grpc-status": "0"}]


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + (sid & 0x7FFFFFFF).to_bytes(4, "big") + payload


def _headers_block() -> bytes:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    c.data_to_send()
    c.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", ECHO), (":authority", "t"),
                       ("content-type", "application/grpc")])
    return c.data_to_send()[9:]


_BLOCK = _headers_block()
_sids = st.sampled_from([0, 1, 3, 5, 2**31 - 1])
_frames = st.one_of(
    st.builds(lambda pairs: _frame(0x4, 0, 0, b"".join(i.to_bytes(2, "big") + v.to_bytes(4, "big") for i, v in pairs)),
              st.lists(st.tuples(st.integers(0, 9), st.sampled_from([0, 1, 16383, 16384, 2**24, 2**31, 2**32 - 1])),
                       max_size=4)),  # SETTINGS with extreme values
    st.builds(lambda sid, inc: _frame(0x8, 0, sid, inc.to_bytes(4, "big")), _sids,
              st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1])),  # WINDOW_UPDATE, overflowing
    st.builds(lambda sid, end, pad: _frame(0x1, (0x4 if end else 0) | (0x8 if pad else 0), sid,
                                           (bytes([pad]) + _BLOCK + b"\0" * pad) if pad else _BLOCK),
              _sids, st.booleans(), st.sampled_from([0, 1, 255])),  # HEADERS, with or without END_HEADERS/padding
    st.builds(lambda sid, n, end: _frame(0x9, 0x4 if end else 0, sid, b"\x00" * n), _sids,
              st.sampled_from([0, 1, 16384]), st.booleans()),  # CONTINUATION, on any stream
    st.builds(lambda sid, data, flags: _frame(0x0, flags, sid, data), _sids, st.binary(max_size=64),
              st.sampled_from([0, 1, 8, 9])),  # DATA, padded or not, ending or not
    st.builds(lambda sid, t: _frame(t, 0, sid, b"\x00" * 8), _sids, st.sampled_from([0x2, 0x3, 0x6, 0x7, 0xA, 0xFF])),
    st.binary(max_size=20),
)


@settings(max_examples=int(os.environ.get("HELIX_FUZZ_EXAMPLES", "200")), deadline=None)
@given(frames=st.lists(_frames, max_size=25), chunk=st.integers(1, 4096))
def test_hostile_frame_sequences_never_escape_the_connection(frames, chunk) -> None:
    seen: list[bytes] = []
    server = GrpcServer("127.0.0.1", 0, {ECHO: Method(lambda d, c: seen.append(d) or b"ok")}, max_message=1 << 16,
                        max_buffered=4096)
    data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(0x4, 0, 0, b"")
    data += b"".join(frames)
    _feed(server, data, chunk)
    assert server.buffered == 0 and server.budget.bytes == 0 and not server._streams and not server._connections
