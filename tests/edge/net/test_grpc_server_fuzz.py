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
    conn = grpc_server._Connection(server)
    transport = _Transport()
    conn.connection_made(transport)
    for i in range(0, len(data), chunk):
        conn.data_received(data[i:i + chunk])  # must not raise, whatever the bytes
        if transport.closed:
            break
    conn.connection_lost(None)
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
