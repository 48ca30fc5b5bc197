"""The agent's small HTTP server against real clients (curl, raw sockets, the OpenTelemetry SDK's exporter)."""
from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator

import pytest

from edge.net import http_server
from edge.net.http_server import HttpServer, Request, Response

pytestmark = pytest.mark.asyncio


class Echo:
    """Handlers that record what they got."""

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.gate = asyncio.Event()

    async def post(self, req: Request) -> Response:
        self.seen.append(req)
        return Response(200, b"got %d" % len(req.body), headers={"X-Path": req.path})

    async def get(self, req: Request) -> Response:
        self.seen.append(req)
        return Response(200, b"hello")

    async def boom(self, req: Request) -> Response:
        raise RuntimeError("handler bug")

    async def slow(self, req: Request) -> Response:
        self.seen.append(req)
        await self.gate.wait()
        return Response(200, b"slow %d" % len(req.body))


@pytest.fixture
async def served() -> AsyncIterator[tuple[HttpServer, Echo, list[int]]]:
    echo, refused = Echo(), []
    server = HttpServer("127.0.0.1", 0, {("POST", "/in"): echo.post, ("GET", "/hello"): echo.get,
                                         ("GET", "/boom"): echo.boom, ("POST", "/slow"): echo.slow},
                        max_body=64 * 1024, on_refused=refused.append)
    await server.start()
    yield server, echo, refused
    await server.stop()


async def raw(port: int, data: bytes, read_until_close: bool = True) -> bytes:
    """Send bytes on a fresh connection and return everything answered until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(-1) if read_until_close else reader.read(65536), 10)
    writer.close()
    return out


async def curl(*args: str) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec("curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 20)
    body, _, code = out.decode().rpartition("\n")
    return int(code), body + err.decode()


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (scripts/setup.sh installs it)")


@needs_curl
async def test_curl_posts_with_content_length_chunked_gzip_and_expect_continue(served, tmp_path) -> None:
    server, echo, _ = served
    url = f"http://127.0.0.1:{server.port}/in?x=1"
    assert await curl("--data-binary", "abc", url) == (200, "got 3")
    big = tmp_path / "big"
    big.write_bytes(b"z" * 40_000)  # curl sends Expect: 100-continue for bodies over 1 KiB
    assert await curl("--data-binary", f"@{big}", url) == (200, "got 40000")
    assert await curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{big}", url) == (200, "got 40000")
    gz = tmp_path / "gz"
    gz.write_bytes(gzip.compress(b"q" * 50_000))
    assert await curl("-H", "Content-Encoding: gzip", "--data-binary", f"@{gz}", url) == (200, "got 50000")
    assert [r.query for r in echo.seen] == ["x=1"] * 4
    assert echo.seen[-1].wire_size == gz.stat().st_size


@needs_curl
async def test_oversized_and_compression_bombs_are_413_and_counted(served, tmp_path) -> None:
    server, echo, refused = served
    url = f"http://127.0.0.1:{server.port}/in"
    big = tmp_path / "big"
    big.write_bytes(b"z" * 100_000)
    code, _ = await curl("--data-binary", f"@{big}", url)
    assert code == 413
    bomb = tmp_path / "bomb"
    bomb.write_bytes(gzip.compress(b"\0" * 5_000_000))  # ~5 KB on the wire
    code, _ = await curl("-H", "Content-Encoding: gzip", "--data-binary", f"@{bomb}", url)
    assert code == 413
    code, _ = await curl("-H", "Content-Encoding: br", "--data-binary", "x", url)
    assert code == 415
    cut = tmp_path / "cut"
    cut.write_bytes(gzip.compress(b"q" * 50_000)[:-6])  # its checksum never arrives
    code, _ = await curl("-H", "Content-Encoding: gzip", "--data-binary", f"@{cut}", url)
    assert code == 400
    assert refused == [413, 413, 415, 400] and echo.seen == []


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(served) -> None:
    server, echo, _ = served
    reqs = (b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
            b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nc")
    out = await raw(server.port, reqs)
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.index(b"got 2") < out.index(b"hello") < out.index(b"got 1")
    assert out.rstrip().endswith(b"got 1") and b"Connection: close" in out
    # HTTP/1.0 closes after one answer unless asked to keep the connection.
    out = await raw(server.port, b"GET /hello HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"hello")


@pytest.mark.parametrize("data,status", [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /hello HTTP/2.0\r\n\r\n", 400),
    (b"GET /hello HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    (b"POST /in HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400),
    (b"POST /in HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"POST /in HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST /in HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
    (b"GET /in HTTP/1.1\r\n\r\n", 405),
    (b"GET /hello HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    # What RFC 9112's grammar refuses and a lenient parser would take (or crash on):
    (b"POST /in HTTP/1.1\r\nContent-Length: \xb2\r\n\r\nab", 400),  # a superscript two: isdigit() yet not int()
    (b"POST /in HTTP/1.1\r\nContent-Length: +2\r\n\r\nab", 400),
    (b"POST /in HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
    (b"POST /in HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n", 400),
    (b"POST /in HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n", 400),
    (b"POST /in HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nab\r\n0\r\n\r\n", 400),
    (b"POST /in HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n 2\r\nab\r\n0\r\n\r\n", 400),
    (b"GET /hello HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400),  # NUL in a value
    (b"GET /hello HTTP/1.1\r\nX-A: a\nX-B: b\r\n\r\n", 400),  # a bare LF (request smuggling)
    (b"GET /hello HTTP/1.1\r\nX A: b\r\n\r\n", 400),
    (b"GET /hel\x01lo HTTP/1.1\r\n\r\n", 400),
    (b"G(T /hello HTTP/1.1\r\n\r\n", 400),
])
async def test_malformed_requests_get_a_4xx_and_a_closed_connection(served, data: bytes, status: int) -> None:
    server, echo, refused = served
    out = await raw(server.port, data)
    assert out.startswith(f"HTTP/1.1 {status} ".encode()), out[:80]
    assert b"Connection: close" in out and refused == [status] and echo.seen == []


async def test_a_handler_bug_is_a_500_and_the_server_goes_on(served) -> None:
    server, _, _ = served
    out = await raw(server.port, b"GET /boom HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 500 ") and out.endswith(b"hello")


async def test_slow_heads_time_out(served, monkeypatch) -> None:
    server, _, refused = served
    monkeypatch.setattr(http_server, "HEAD_TIMEOUT", 0.3)
    out = await raw(server.port, b"GET /hel")  # never finishes its head
    assert out.startswith(b"HTTP/1.1 408 ") and refused == [408]


async def _answer(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(65536), 5)


async def test_idle_keep_alive_connections_make_room_for_a_new_client(served, monkeypatch) -> None:
    # SDK exporters keep their connection between exports; one more exporter than slots must still be served.
    server, _, _ = served
    monkeypatch.setattr(http_server, "MAX_CONNECTIONS", 2)
    idle = []
    for _ in range(2):
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"GET /hello HTTP/1.1\r\n\r\n")
        assert (await _answer(r)).startswith(b"HTTP/1.1 200 ")
        idle.append((r, w))
    out = await raw(server.port, b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and server.stats.reclaimed["idle"] == 1
    assert await asyncio.wait_for(idle[0][0].read(), 5) == b""  # the longest idle was closed (a clean FIN)
    idle[1][1].write(b"GET /hello HTTP/1.1\r\n\r\n")  # the other one still serves
    assert (await _answer(idle[1][0])).startswith(b"HTTP/1.1 200 ")
    for _, w in idle:
        w.close()


async def test_slow_heads_make_room_and_only_live_requests_keep_a_new_client_out(served, monkeypatch) -> None:
    server, echo, _ = served
    monkeypatch.setattr(http_server, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(http_server, "SLOW_HEAD", 0.2)
    slow = []
    for _ in range(2):  # slowloris: a head that never ends
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"GET /hel")
        slow.append((r, w))
    await asyncio.sleep(0.3)
    out = await raw(server.port, b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and server.stats.reclaimed["slow_head"] == 1
    for _, w in slow:
        w.close()
    await asyncio.sleep(0.1)
    busy = []
    for _ in range(2):  # two requests in their handler: live, never reclaimed
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"POST /slow HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
        busy.append((r, w))
    while len(echo.seen) < 2:
        await asyncio.sleep(0.01)
    out = await raw(server.port, b"GET /hello HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in out and server.refused_connections == 1
    echo.gate.set()
    for r, w in busy:
        assert (await _answer(r)).startswith(b"HTTP/1.1 200 ")
        w.close()


async def test_bodies_are_taken_from_the_budget_before_they_are_read() -> None:
    # 600 KB bodies against a 32 KiB budget: the first (the oldest) always completes; the second waits for room
    # and, when none comes within its body time, is answered busy (retryable) without being read whole.
    echo = Echo()
    budget = http_server.RequestBudget(32 * 1024)
    server = HttpServer("127.0.0.1", 0, {("POST", "/slow"): echo.slow, ("POST", "/in"): echo.post},
                        max_body=1 << 20, budget=budget)
    await server.start()
    try:
        body = b"a" * 600_000
        head = b"POST /slow HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
        r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
        w1.write(head + body)
        while not echo.seen:
            await asyncio.sleep(0.01)
        assert budget.bytes >= 600_000  # held while its handler runs
        http_server.BODY_TIMEOUT, saved = 0.5, http_server.BODY_TIMEOUT
        try:
            out = await raw(server.port, head.replace(b"/slow", b"/in") + body)
        finally:
            http_server.BODY_TIMEOUT = saved
        assert out.startswith(b"HTTP/1.1 503 ") and b"Retry-After" in out and server.stats.busy == 1
        # The oldest body, and its copy into bytes for a moment; never the second body read whole beside it.
        assert budget.stats.peak <= 2 * 600_000 + 32 * 1024
        echo.gate.set()
        assert (await _answer(r1)).startswith(b"HTTP/1.1 200 ")
        w1.close()
        await asyncio.sleep(0.05)
        assert budget.bytes == 0
        out = await raw(server.port, head.replace(b"/slow", b"/in").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + body)
        assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"got 600000")
    finally:
        await server.stop()


async def test_inflated_bytes_are_counted_and_a_stalled_body_is_reclaimed_for_a_live_one(monkeypatch) -> None:
    echo = Echo()
    budget = http_server.RequestBudget(64 * 1024, stall=0.2)
    server = HttpServer("127.0.0.1", 0, {("POST", "/in"): echo.post}, max_body=1 << 20, budget=budget)
    await server.start()
    try:
        gz = gzip.compress(b"q" * 500_000)
        out = await raw(server.port, b"POST /in HTTP/1.1\r\nContent-Encoding: gzip\r\nConnection: close\r\n"
                                     b"Content-Length: %d\r\n\r\n" % len(gz) + gz)
        assert out.endswith(b"got 500000") and budget.stats.peak >= 500_000 and budget.bytes == 0
        # A client that sends 60 KB of a 600 KB body and stops holds the budget; a live request needing room
        # reclaims it once it has stalled.
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"POST /in HTTP/1.1\r\nContent-Length: 600000\r\n\r\n" + b"s" * 60_000)
        await asyncio.sleep(0.1)
        assert budget.bytes >= 60_000
        body = b"n" * 100_000
        out = await raw(server.port, b"POST /in HTTP/1.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                        % len(body) + body)
        assert out.endswith(b"got 100000") and server.stats.reclaimed["stalled"] == 1
        assert await asyncio.wait_for(r.read(), 5) == b""  # the stalled one was closed
        w.close()
    finally:
        await server.stop()


async def test_the_opentelemetry_sdk_exports_to_the_otlp_receiver() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource as OtelResource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from edge.model import Source, Span
    from edge.sources.otlp_common import OtlpIngest
    from edge.sources.otlp_http import OtlpHttpReceiver

    got: list[Span] = []

    def admit(spans: list[Span], source: Source) -> int:
        got.extend(spans)
        return len(spans)

    receiver = OtlpHttpReceiver(OtlpIngest(admit, lambda n: True), "127.0.0.1", 0, 4 * 1024 * 1024)
    await receiver.start()
    try:
        for compression in (Compression.NoCompression, Compression.Gzip):
            provider = TracerProvider(resource=OtelResource.create({"service.name": "sdk-app"}))
            exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.port}/v1/traces", compression=compression)
            provider.add_span_processor(BatchSpanProcessor(exporter))  # exports on its own thread
            with provider.get_tracer("t").start_as_current_span(f"op-{compression.value}"):
                pass
            # The exporter is synchronous (requests): run it off the loop the receiver serves on.
            await asyncio.to_thread(provider.shutdown)
    finally:
        await receiver.stop()
    assert sorted(s.name for s in got) == ["op-gzip", "op-none"]
    assert all(s.resource.service_name == "sdk-app" for s in got)


async def test_port_in_use_is_an_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = HttpServer("127.0.0.1", s.getsockname()[1], {}, 1024)
        with pytest.raises(OSError):
            await server.start()


async def test_a_full_pipeline_answers_503_before_parsing_and_the_sdk_retries_until_it_fits() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource as OtelResource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from edge.model import Source, Span
    from edge.sources.otlp_common import OtlpIngest
    from edge.sources.otlp_http import OtlpHttpReceiver

    got: list[Span] = []
    room = {"bytes": 0}
    asked: list[int] = []

    def has_room(n: int) -> bool:
        asked.append(n)
        return n <= room["bytes"]

    def admit(spans: list[Span], source: Source) -> int:
        got.extend(spans)
        return len(spans)

    ingest = OtlpIngest(admit, has_room)
    receiver = OtlpHttpReceiver(ingest, "127.0.0.1", 0, 4 * 1024 * 1024)
    await receiver.start()
    try:
        provider = TracerProvider(resource=OtelResource.create({"service.name": "sdk-app"}))
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.port}/v1/traces"), schedule_delay_millis=50))
        for i in range(20):
            with provider.get_tracer("t").start_as_current_span(f"op-{i}"):
                pass
        deadline = asyncio.get_running_loop().time() + 10
        while ingest.stats.dropped["busy"] == 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert ingest.stats.dropped["busy"] >= 1 and got == []
        # The room asked for covers the decoded spans (several times the wire bytes), not the wire bytes alone.
        assert min(asked) >= 6 * 20 * 50
        room["bytes"] = 10**9
        await asyncio.to_thread(provider.shutdown)
    finally:
        await receiver.stop()
    assert sorted(s.name for s in got) == sorted(f"op-{i}" for i in range(20))

