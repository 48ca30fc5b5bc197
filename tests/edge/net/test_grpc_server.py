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


async def test_idle_connections_make_room_and_busy_ones_keep_a_new_one_out(served, monkeypatch) -> None:
    server, rec = served
    monkeypatch.setattr(grpc_server, "MAX_CONNECTIONS", 2)
    # Two exporters that connected and sit idle between exports: a third is served, the longest idle gets GOAWAY.
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel, as separate processes would have
    first, second = (grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=own) for _ in range(2))
    assert await _call(first, ECHO)(b"1", timeout=5) == b"got 1"
    assert await _call(second, ECHO)(b"2", timeout=5) == b"got 1"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=own) as third:
        assert await _call(third, ECHO)(b"3", timeout=5) == b"got 1"
    assert server.stats.reclaimed_connections == 1 and server.stats.refused_connections == 0
    assert await _call(first, ECHO)(b"again", timeout=5) == b"got 5"  # grpcio reconnects after GOAWAY
    await first.close()
    await second.close()
    await asyncio.sleep(0.1)
    # Two connections each with a call open: nothing to reclaim, the third is refused.
    rec.full = True
    held = [grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=own) for _ in range(2)]
    calls = [asyncio.ensure_future(_call(ch, CAREFUL)(b"x", timeout=10)) for ch in held]
    while len(server._connections) < 2 or any(not c.streams for c in server._connections):
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
    assert server.stats.refused_connections == 1
    writer.close()
    rec.full = False
    assert await asyncio.gather(*calls) == [b"got 1", b"got 1"]
    for ch in held:
        await ch.close()


@pytest.mark.parametrize("end", ["cancelled", "answered"])
async def test_bytes_held_back_from_a_call_that_ends_are_handed_back_to_the_connection(served, end: str) -> None:
    # A call whose window the server held back (the budget was full) and that then ended (answered, or cancelled:
    # the client's deadline passed, or it was reclaimed) must give its bytes back to the connection window, or
    # after 64 KiB of such calls every later call on the connection hangs until its deadline.
    await served[0].stop()
    server = GrpcServer("127.0.0.1", 0, {ECHO: Method(served[1].echo)}, max_message=1 << 20, max_buffered=16 * 1024)
    await server.start()
    first, second = await _RawClient.connect(server.port), await _RawClient.connect(server.port)

    async def call(c: _RawClient, whole: bool = False) -> int:
        await c.pump()
        sid = c.open()
        c.h2.send_data(sid, b"\x00" + (32_000 if whole else 100_000).to_bytes(4, "big") + b"x" * 16_000)
        c.h2.send_data(sid, b"x" * 16_000, end_stream=whole)
        await c.flush()
        return sid

    await call(first)  # takes the budget and keeps it
    for n in (1, 2):  # two calls whose bytes are held back, then end: 64,010 bytes of the connection window
        sid = await call(second, whole=end == "answered")
        async with asyncio.timeout(5):
            while server.stats.deferred_windows < n:
                await second.pump(0.05)
        if end == "cancelled":
            second.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            await second.flush()
        else:
            async with asyncio.timeout(5):
                while second.status(sid) is None:
                    await second.pump(0.05)
            assert second.status(sid) == "0"
    async with asyncio.timeout(5):
        while second.h2.outbound_flow_control_window < 65535:
            assert await second.pump(0.1)
    first.close()
    second.close()
    await server.stop()


async def test_connections_whose_calls_went_silent_make_room_for_a_live_client(served, monkeypatch) -> None:
    server, _ = served
    monkeypatch.setattr(grpc_server, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(grpc_server, "SLOW_CALL", 0.2)
    # Two peers that opened a call, sent part of its message and went quiet, windows open: no local exporter does that.
    quiet = [await _RawClient.connect(server.port) for _ in range(2)]
    for c in quiet:
        sid = c.open()
        c.h2.send_data(sid, b"\x00" + (100).to_bytes(4, "big") + b"part")
        await c.flush()
    while len(server._connections) < 2 or any(not c.streams for c in server._connections):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as live:
        assert await _call(live, ECHO)(b"live", timeout=5) == b"got 4"
    assert server.stats.reclaimed_connections == 1 and server.stats.refused_connections == 0
    for c in quiet:
        await c.pump(0.5)
    goaway = [any(isinstance(e, h2.events.ConnectionTerminated) for e in c.events) for c in quiet]
    assert sorted(goaway) == [False, True]  # one was closed to make room, the other left alone
    for c in quiet:
        c.close()


class _RawClient:
    """An HTTP/2 client on a socket that does exactly what a test tells it (an attacker, or a careful client)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.events: list[h2.events.Event] = []

    @classmethod
    async def connect(cls, port: int) -> _RawClient:
        c = cls(*await asyncio.open_connection("127.0.0.1", port))
        c.h2.initiate_connection()
        await c.flush()
        return c

    def open(self, path: str = ECHO, encoding: str = "identity", end_headers: bool = True) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "t"),
                                   ("content-type", "application/grpc"), ("grpc-encoding", encoding),
                                   ("te", "trailers")])
        return sid

    async def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()

    async def pump(self, timeout: float = 0.2) -> bool:
        """Read what the server sent within `timeout`; False once it closed the connection."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except asyncio.TimeoutError:
            return True
        except ConnectionError:
            return False
        if not data:
            return False
        try:
            self.events += self.h2.receive_data(data)
            await self.flush()
        except (h2.exceptions.ProtocolError, ConnectionError):
            return False
        return True

    def status(self, sid: int) -> str | None:
        for e in self.events:
            if isinstance(e, (h2.events.TrailersReceived, h2.events.ResponseReceived)) and e.stream_id == sid:
                found = dict(e.headers).get("grpc-status")
                if found is not None:
                    return found
        return None

    def close(self) -> None:
        self.writer.close()


async def test_streams_that_never_end_hold_the_budget_plus_a_connection_window_each(served) -> None:
    # Each client opens as many calls as it may and sends what its windows allow, never ending one: what the
    # server holds is bounded by the budget and the connection windows, not by connections x streams x 64 KiB.
    server, rec = served
    clients = [await _RawClient.connect(server.port) for _ in range(3)]
    for c in clients:
        await c.pump()
        for _ in range(grpc_server.MAX_STREAMS):
            sid = c.open()
            window = c.h2.local_flow_control_window(sid)
            data = b"\x00" + (1 << 20).to_bytes(4, "big") + b"z" * (window - 5) if window > 5 else b""
            for i in range(0, len(data), 16384):
                c.h2.send_data(sid, data[i:i + 16384])
        await c.flush()
    for _ in range(5):
        for c in clients:
            await c.pump(0.05)
    held = server.buffered
    assert held <= server.max_buffered + 3 * 65535 + grpc_server.MAX_STREAMS * grpc_server.STREAM_WINDOW
    assert held < 3 * grpc_server.MAX_STREAMS * 64 * 1024 // 4
    for c in clients:
        c.close()
    await asyncio.sleep(0.1)
    assert server.buffered == 0


async def test_a_continuation_flood_ends_the_connection_at_the_header_block_bound(served) -> None:
    server, rec = served
    c = await _RawClient.connect(server.port)
    await c.pump()
    sid = c.h2.get_next_available_stream_id()
    # A HEADERS frame without END_HEADERS, then CONTINUATION frames that never end the block (raw frames: h2
    # itself would not send them).
    block = b"\x82"  # :method GET, indexed
    frame = lambda ftype, flags, payload: len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + \
        sid.to_bytes(4, "big") + payload
    c.writer.write(frame(0x1, 0x0, block))
    for _ in range(10):
        c.writer.write(frame(0x9, 0x0, b"\x00" * 16000))
    await c.writer.drain()
    alive = True
    for _ in range(20):
        alive = await c.pump(0.05)
        if not alive:
            break
    assert not alive and server.stats.protocol_errors == 1
    assert not server._connections
    c.close()


async def test_compressed_requests_wait_compressed_and_are_inflated_in_turn(served) -> None:
    # Twelve 300 KB requests, each ~300 bytes gzip'd, arrive while the method is not ready: they wait with their wire
    # bytes, and only the one whose turn it is is inflated (held decoded), not all twelve.
    server, rec = served
    rec.full = True
    payloads = [bytes([i]) * 300_000 for i in range(12)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        calls = [asyncio.ensure_future(_call(ch, CAREFUL)(p, timeout=10, compression=grpc.Compression.Gzip))
                 for p in payloads]
        await asyncio.sleep(0.3)
        assert server.stats.waited == 12 and server.buffered < 2 * 300_000
        rec.full = False
        assert await asyncio.gather(*calls) == [b"got 300000"] * 12
    assert sorted(rec.seen) == sorted(payloads) and server.buffered == 0
    assert server.stats.buffered_peak < 3 * 300_000


async def _gzip_call(server: GrpcServer, message: bytes) -> str | None:
    c = await _RawClient.connect(server.port)
    await c.pump()
    sid = c.open(encoding="gzip")
    c.h2.send_data(sid, b"\x01" + len(message).to_bytes(4, "big") + message, end_stream=True)
    await c.flush()
    for _ in range(20):
        if c.status(sid) is not None or not await c.pump(0.05):
            break
    c.close()
    return c.status(sid)


async def test_gzip_messages_are_inflated_whole_and_bounded(served) -> None:
    server, rec = served
    assert await _gzip_call(server, gzip.compress(b"abc")) == "0" and rec.seen == [b"abc"]
    assert await _gzip_call(server, gzip.compress(b"\0" * (2 << 20))) == str(Code.RESOURCE_EXHAUSTED)  # a bomb
    assert await _gzip_call(server, b"not gzip") == str(Code.INTERNAL)
    whole = gzip.compress(b"abcdef" * 100)
    for mangled in (whole[:-6], whole + b"x"):  # cut before its checksum; bytes after its end
        assert await _gzip_call(server, mangled) == str(Code.INTERNAL)
    assert rec.seen == [b"abc"] and server.buffered == 0


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


async def test_the_oldest_call_gets_connection_window_its_waiting_siblings_used_up() -> None:
    # Call A opens first and sends nothing yet; four later calls on the same connection fill the 64 KiB connection
    # window while the budget is full, so their windows stay closed. A, the oldest, must still be able to finish.
    rec = Recorder()
    server = GrpcServer("127.0.0.1", 0, {ECHO: Method(rec.echo)}, max_message=1 << 20, max_buffered=1024)
    await server.start()
    try:
        c = await _RawClient.connect(server.port)
        await c.pump()
        a = c.open()
        await c.flush()
        await c.pump(0.05)
        for size in (16384, 16384, 16384, 16383):  # 65,535 bytes: the whole connection window
            sid = c.open()
            c.h2.send_data(sid, b"\x00" + (1 << 20).to_bytes(4, "big") + b"s" * (size - 5))
        assert c.h2.local_flow_control_window(a) == 0
        await c.flush()
        await c.pump(0.1)
        message = b"\x00" + (100_000).to_bytes(4, "big") + b"a" * 100_000
        sent = 0
        async with asyncio.timeout(5):
            while c.status(a) is None:
                n = min(c.h2.local_flow_control_window(a), c.h2.max_outbound_frame_size, len(message) - sent)
                if n > 0:
                    c.h2.send_data(a, message[sent:sent + n], end_stream=sent + n == len(message))
                    sent += n
                    await c.flush()
                assert await c.pump(0.02)
        assert c.status(a) == "0" and rec.seen == [b"a" * 100_000]
        c.close()
    finally:
        await server.stop()
