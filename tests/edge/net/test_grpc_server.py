"""The agent's small gRPC server against real clients: grpcio channels, curl, raw HTTP/2 (h2) and raw sockets."""
from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
from collections.abc import AsyncIterator

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from edge.net import grpc_server
from edge.net.grpc_server import Call, Code, GrpcServer, GrpcStatus, Method

pytestmark = pytest.mark.asyncio

ECHO, FAIL, BOOM, CAREFUL = "/test.Echo/Echo", "/test.Echo/Fail", "/test.Echo/Boom", "/test.Echo/Careful"


class Recorder:
    """Methods that record what they got."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.asked: list[int] = []
        self.refused: list[str] = []
        self.full = False

    def echo(self, data: bytes, call: Call) -> bytes:
        self.seen.append(data)
        return b"got %d" % len(data)

    def fail(self, data: bytes, call: Call) -> bytes:
        raise GrpcStatus(Code.INVALID_ARGUMENT, "bad ünïcode, 100% wrong")

    def boom(self, data: bytes, call: Call) -> bytes:
        raise RuntimeError("method bug")

    def ready(self, length: int) -> bool:
        self.asked.append(length)
        return not self.full

    def refuse(self, call: Call) -> None:
        self.refused.append(call.method)


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcServer, Recorder]]:
    rec = Recorder()
    server = GrpcServer("127.0.0.1", 0, {ECHO: Method(rec.echo), FAIL: Method(rec.fail), BOOM: Method(rec.boom),
                                         CAREFUL: Method(rec.echo, ready=rec.ready, refused=rec.refuse)},
                        max_message=1 << 20, max_buffered=64 * 1024, max_wait=0.5)
    await server.start()
    yield server, rec
    await server.stop()


def _call(channel: grpc.aio.Channel, path: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


async def _code(coro) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coro
    return e.value.code(), e.value.details() or ""


async def test_unary_calls_through_grpcio_including_gzip(served) -> None:
    server, rec = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        assert await _call(ch, ECHO)(b"hello", timeout=5) == b"got 5"
        big = bytes(range(256)) * 2000  # 512 000 bytes: many DATA frames, many window updates
        assert await _call(ch, ECHO)(big, timeout=5, compression=grpc.Compression.Gzip) == b"got 512000"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", compression=grpc.Compression.Deflate) as ch:
        assert await _call(ch, ECHO)(b"x" * 1000, timeout=5) == b"got 1000"
    assert rec.seen == [b"hello", big, b"x" * 1000]
    assert server.buffered == 0 and server.stats.calls == 3


async def test_errors_are_grpc_statuses_and_the_connection_survives(served) -> None:
    server, rec = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        assert await _code(_call(ch, "/test.Echo/Nope")(b"", timeout=5)) == (grpc.StatusCode.UNIMPLEMENTED,
                                                                            "unknown method /test.Echo/Nope")
        # grpc-message is percent-encoded on the wire; grpcio decodes it back.
        assert await _code(_call(ch, FAIL)(b"x", timeout=5)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                 "bad ünïcode, 100% wrong")
        assert (await _code(_call(ch, BOOM)(b"x", timeout=5)))[0] == grpc.StatusCode.INTERNAL
        assert await _call(ch, ECHO)(b"still here", timeout=5) == b"got 10"
    assert server.buffered == 0


async def test_an_oversized_request_is_refused_on_its_prefix(served) -> None:
    server, rec = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        code, details = await _code(_call(ch, ECHO)(b"\0" * (2 << 20), timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "over the 1048576-byte limit" in details
        assert await _call(ch, ECHO)(b"ok", timeout=5) == b"got 2"
    assert rec.seen == [b"ok"]
    # Refused when 5 bytes were in: at most the first window's worth was ever held, not 2 MiB.
    assert server.stats.buffered_peak <= 64 * 1024 and server.buffered == 0


async def test_a_compression_bomb_is_resource_exhausted(served) -> None:
    server, rec = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        # 8 MiB of zeros compress to ~8 KiB: under the limit on the wire, far over it decoded.
        code, details = await _code(_call(ch, ECHO)(b"\0" * (8 << 20), timeout=10,
                                                    compression=grpc.Compression.Gzip))
    assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)  # grpcio may refuse it first
    assert rec.seen == [] and server.buffered == 0


async def test_a_request_waits_for_room_in_order_then_is_refused(served) -> None:
    server, rec = served
    rec.full = True
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        first = asyncio.ensure_future(_call(ch, CAREFUL)(b"a" * 100_000, timeout=10))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(_call(ch, CAREFUL)(b"b", timeout=10))
        await asyncio.sleep(0.2)
        assert not first.done() and not second.done() and rec.seen == []  # waiting, not refused
        assert server.buffered >= 100_000  # still counted while they wait
        rec.full = False
        assert await first == b"got 100000" and await second == b"got 1"
        assert rec.seen == [b"a" * 100_000, b"b"]  # in arrival order
        # Still not ready after max_wait: UNAVAILABLE, which clients retry; the method hears of it.
        rec.full = True
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        code, details = await _code(_call(ch, CAREFUL)(b"c" * 10, timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE and "busy" in details and loop.time() - t0 >= 0.5
    assert rec.refused == [CAREFUL] and server.stats.refused_busy == 1 and server.stats.waited == 3
    assert set(rec.asked) == {100_000, 1, 10} and server.buffered == 0


async def test_a_waiting_compressed_request_counts_its_decoded_size(served) -> None:
    server, rec = served
    rec.full = True
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        call = asyncio.ensure_future(_call(ch, CAREFUL)(b"\0" * 500_000, timeout=10,
                                                        compression=grpc.Compression.Gzip))
        await asyncio.sleep(0.2)
        assert server.buffered >= 500_000  # ~500 bytes on the wire, 500 000 held while it waits
        rec.full = False
        assert await call == b"got 500000"
    assert server.buffered == 0


async def test_flow_control_bounds_what_concurrent_calls_hold(served) -> None:
    server, rec = served
    size, n = 200 * 1024, 20
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        await _call(ch, ECHO)(b"warm", timeout=5)  # settings exchanged
        answers = await asyncio.gather(*(_call(ch, ECHO)(bytes([i]) * size, timeout=30) for i in range(n)))
    assert answers == [b"got %d" % size] * n
    assert sorted(rec.seen[1:]) == sorted(bytes([i]) * size for i in range(n))  # every call completed
    assert server.stats.deferred_windows > 0
    # Unbounded, 20 concurrent 200 KiB requests would sit here together (4 MiB). With flow control the server
    # holds its bound, a window per stream and the one request it always lets finish.
    bound = server.max_buffered + n * grpc_server.STREAM_WINDOW + size
    assert server.stats.buffered_peak <= bound < n * size // 2
    assert server.buffered == 0


async def _run(*argv: str) -> bytes:
    # The server shares this event loop: the client must not block it.
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    return out


async def test_garbage_and_http1_get_clear_answers_and_are_counted(served) -> None:
    server, rec = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x16\x03\x01 definitely not HTTP/2" * 4)
    await writer.drain()
    await asyncio.wait_for(reader.read(), 5)  # GOAWAY, then the server closes
    writer.close()
    curl = shutil.which("curl")
    assert curl, "curl is a test dependency (.ci/run installs it)"
    out = await _run(curl, "-s", "-i", f"http://127.0.0.1:{server.port}/")
    assert b"505" in out.split(b"\r\n", 1)[0] and b"OTLP/gRPC" in out
    h2c = await _run(curl, "-s", "-i", "--http2-prior-knowledge", f"http://127.0.0.1:{server.port}/metrics")
    assert h2c.startswith(b"HTTP/2 405") and b"needs a gRPC POST" in h2c
    assert server.stats.protocol_errors == 2
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        assert await _call(ch, ECHO)(b"after", timeout=5) == b"got 5"


async def test_a_stalled_request_is_reset_and_its_bytes_released(served, monkeypatch) -> None:
    server, rec = served
    monkeypatch.setattr(grpc_server, "STREAM_TIMEOUT", 0.3)
    monkeypatch.setattr(grpc_server, "_SWEEP", 0.1)
    await server.stop()
    await server.start()  # the sweeper picks up the short period
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", ECHO),
                            (":authority", "test"), ("content-type", "application/grpc"), ("te", "trailers")])
    conn.send_data(sid, b"\x00" + (1000).to_bytes(4, "big") + b"half")  # 996 bytes never come
    writer.write(conn.data_to_send())
    await writer.drain()
    reset = False
    async with asyncio.timeout(5):
        while not reset:
            data = await reader.read(65536)
            assert data, "server closed the connection instead of resetting the stream"
            reset = any(isinstance(e, h2.events.StreamReset) and e.stream_id == sid for e in conn.receive_data(data))
            writer.write(conn.data_to_send())
    writer.close()
    assert server.stats.stalled_streams == 1 and server.buffered == 0 and rec.seen == []


async def test_connections_are_bounded(served, monkeypatch) -> None:
    server, rec = served
    monkeypatch.setattr(grpc_server, "MAX_CONNECTIONS", 2)
    kept = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
    assert server.stats.refused_connections == 1
    for _, w in kept + [(reader, writer)]:
        w.close()


async def test_a_long_lived_connection_remembers_a_bounded_number_of_closed_streams(served) -> None:
    # An SDK exporter keeps one connection for days; h2 would remember 65,536 closed streams on it (~8 MiB).
    server, rec = served
    n = grpc_server.CLOSED_STREAMS_REMEMBERED + 150
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        echo = _call(ch, ECHO)
        for start in range(0, n, 50):
            await asyncio.gather(*(echo(b"%d" % i, timeout=5) for i in range(start, min(n, start + 50))))
        (conn,) = server._connections
        assert len(conn.h2._closed_streams) <= grpc_server.CLOSED_STREAMS_REMEMBERED
        assert await echo(b"after", timeout=5) == b"got 5"
    assert server.stats.calls == n + 1 and len(rec.seen) == n + 1


async def test_a_taken_port_is_a_helix_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = GrpcServer("127.0.0.1", taken.getsockname()[1], {}, 1024, name="OTLP/gRPC")
        with pytest.raises(grpc_server.HelixError, match="cannot listen for OTLP/gRPC on 127.0.0.1"):
            await server.start()


async def test_gzip_decoding_is_bounded() -> None:
    bomb = gzip.compress(b"\0" * 100_000)
    assert grpc_server._decode(gzip.compress(b"abc"), 1, "gzip", 10) == b"abc"
    with pytest.raises(GrpcStatus) as e:
        grpc_server._decode(bomb, 1, "gzip", 10_000)
    assert e.value.code == Code.RESOURCE_EXHAUSTED
    with pytest.raises(GrpcStatus) as e:
        grpc_server._decode(b"not gzip", 1, "gzip", 10_000)
    assert e.value.code == Code.INTERNAL
    whole = gzip.compress(b"abcdef" * 100)
    for mangled in (whole[:-6], whole + b"x"):  # cut before its checksum; bytes after its end
        with pytest.raises(GrpcStatus) as e:
            grpc_server._decode(mangled, 1, "gzip", 10_000)
        assert e.value.code == Code.INTERNAL and "truncated" in e.value.message

