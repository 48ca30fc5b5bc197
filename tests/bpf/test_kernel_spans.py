"""Kernel spans from real traffic: curl, Python http.server, nginx, mosquitto and mosquitto_pub/sub.

Each test runs the product's kernel source (probes + ring buffer + span builder) and asserts on the spans it
produces: method, path, status, peer, duration within what the client measured, trace context off the wire.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge.config import EbpfSourceConfig
from edge.demo.broker import Mosquitto, free_port
from edge.errors import ProbeUnavailable
from edge.model import Source, Span, SpanKind, StatusCode
from edge.sources.ebpf.source import EbpfSource

from .conftest import Server, bpf_unavailable

pytestmark = pytest.mark.bpf

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Spans:
    """The kernel source under test, collecting what it emits."""

    def __init__(self, source: EbpfSource) -> None:
        self.source = source
        self.spans: list[Span] = []

    def sink(self, spans: list[Span], src: Source) -> int:
        assert src is Source.EBPF
        self.spans.extend(spans)
        return len(spans)

    async def wait_for(self, pred: Callable[[Span], bool], count: int = 1, timeout: float = 10.0) -> list[Span]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            assert self.source.stream is not None
            self.source.stream.poll()
            hits = [s for s in self.spans if pred(s)]
            if len(hits) >= count:
                return hits
            if loop.time() > deadline:
                names = sorted({(s.name, str(s.attributes.get("url.path", ""))) for s in self.spans})[:20]
                pytest.fail(f"timed out: {len(hits)}/{count} matching spans among {len(self.spans)}: {names}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def kernel_spans() -> AsyncIterator[Callable[..., Spans]]:
    made: list[tuple[Spans, asyncio.Task[None]]] = []

    async def make(**cfg: object) -> Spans:
        holder = Spans(None)  # type: ignore[arg-type]
        source = EbpfSource(EbpfSourceConfig(**cfg), holder.sink, own_pid=os.getpid())  # type: ignore[arg-type]
        holder.source = source
        try:
            await source.start()
        except ProbeUnavailable as e:
            bpf_unavailable(str(e))
        made.append((holder, asyncio.create_task(source.run())))
        return holder

    yield make  # type: ignore[misc]
    for holder, task in made:
        task.cancel()
        await holder.source.stop()


def _curl(url: str, *headers: str) -> tuple[float, str]:
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
    for h in headers:
        args += ["-H", h]
    t0 = time.monotonic_ns()
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True, timeout=10).stdout
    return (time.monotonic_ns() - t0) / 1e9, out


async def test_http_server_and_client_spans_from_curl(kernel_spans, http_server: Server) -> None:
    ks = await kernel_spans()
    url = f"http://127.0.0.1:{http_server.port}/path?q=1"
    took, code = await asyncio.to_thread(_curl, url, f"traceparent: 00-{TRACE}-{PARENT}-01", "tracestate: k=v")
    assert code == "200"
    server = (await ks.wait_for(lambda s: s.kind == SpanKind.SERVER and s.attributes.get("url.path") == "/path"))[0]
    client = (await ks.wait_for(lambda s: s.kind == SpanKind.CLIENT and s.attributes.get("url.path") == "/path"))[0]
    for s in (server, client):
        assert s.name == "GET" and s.source is Source.EBPF
        assert s.attributes["http.request.method"] == "GET"
        assert s.attributes["url.query"] == "q=1"
        assert s.attributes["http.response.status_code"] == 200
        assert s.trace_id.hex() == TRACE and s.parent_span_id.hex() == PARENT
        assert s.attributes["helix.context_from"] == "wire" and s.trace_state == "k=v"
        assert 0 < s.duration_ns <= took * 1e9, "a span cannot outlast what the client measured"
        assert s.status_code == StatusCode.UNSET
    assert server.attributes["process.pid"] != client.attributes["process.pid"]
    assert client.resource.service_name == "curl"
    assert client.attributes["network.peer.port"] == http_server.port
    assert server.attributes["network.peer.port"] not in (None, http_server.port)
    # The server answered inside the client's request: its span nests in the client's.
    assert client.start_ns <= server.start_ns and server.end_ns <= client.end_ns + 1_000_000
    connects = await ks.wait_for(lambda s: s.name == "tcp.connect" and s.attributes.get("network.peer.port") == http_server.port)
    assert connects[0].kind == SpanKind.CLIENT and connects[0].duration_ns < took * 1e9


async def test_b3_and_jaeger_context_and_404(kernel_spans, http_server: Server) -> None:
    ks = await kernel_spans()
    base = f"http://127.0.0.1:{http_server.port}"
    await asyncio.to_thread(_curl, f"{base}/missing-b3", f"b3: {TRACE}-{PARENT}-1")
    await asyncio.to_thread(_curl, f"{base}/missing-jaeger", f"uber-trace-id: {TRACE}:{PARENT}:0:1")
    for path, fmt in (("/missing-b3", "b3"), ("/missing-jaeger", "jaeger")):
        (s,) = await ks.wait_for(lambda s, p=path: s.kind == SpanKind.SERVER and s.attributes.get("url.path") == p)
        assert s.trace_id.hex() == TRACE and s.parent_span_id.hex() == PARENT
        assert s.attributes["helix.wire.format"] == fmt
        assert s.attributes["http.response.status_code"] == 404
        assert s.status_code == StatusCode.UNSET  # a 4xx is not a server error
        (c,) = await ks.wait_for(lambda s, p=path: s.kind == SpanKind.CLIENT and s.attributes.get("url.path") == p)
        assert c.status_code == StatusCode.ERROR  # but it is a failed call for the client


@pytest.fixture
def nginx(tmp_path: Path, http_server: Server):
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path}; fastcgi_temp_path {tmp_path};
  uwsgi_temp_path {tmp_path}; scgi_temp_path {tmp_path};
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://127.0.0.1:{http_server.port}; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    proc = subprocess.Popen([binary, "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            import socket
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(5)


async def test_nginx_reverse_proxy_keeps_the_wire_context(kernel_spans, http_server: Server, nginx: int) -> None:
    ks = await kernel_spans()
    took, code = await asyncio.to_thread(_curl, f"http://127.0.0.1:{nginx}/path", f"traceparent: 00-{TRACE}-{PARENT}-01")
    assert code == "200"
    on_path = lambda s: s.attributes.get("url.path") == "/path" and s.trace_id.hex() == TRACE  # noqa: E731
    spans = await ks.wait_for(on_path, count=4)
    by = {(s.resource.service_name, s.kind) for s in spans}
    assert ("curl", SpanKind.CLIENT) in by
    assert ("nginx", SpanKind.SERVER) in by and ("nginx", SpanKind.CLIENT) in by
    assert any(svc.startswith("python") and kind == SpanKind.SERVER for svc, kind in by)
    assert all(s.duration_ns <= took * 1e9 for s in spans)


async def _mqtt_exchange(kernel_spans, tmp_path: Path) -> Spans:
    ks = await kernel_spans()
    with Mosquitto(workdir=tmp_path) as broker:
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-V", "mqttv5", "-t", "plant/line1/temp",
                                "-C", "1", "-q", "1"], stdout=subprocess.PIPE)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(subprocess.run, [
            "mosquitto_pub", "-p", str(broker.port), "-V", "mqttv5", "-q", "1", "-t", "plant/line1/temp",
            "-m", "21.5", "-D", "PUBLISH", "user-property", "traceparent", f"00-{TRACE}-{PARENT}-01"],
            check=True, timeout=10)
        assert sub.wait(10) == 0
        await ks.wait_for(lambda s: s.kind == SpanKind.PRODUCER)
        await asyncio.sleep(0.5)
        ks.source.stream.poll()  # type: ignore[union-attr]
    return ks


async def test_mqtt_publish_with_user_property_traceparent(kernel_spans, tmp_path: Path) -> None:
    ks = await _mqtt_exchange(kernel_spans, tmp_path)
    (pub,) = [s for s in ks.spans if s.kind == SpanKind.PRODUCER
              and s.attributes.get("messaging.destination.name") == "plant/line1/temp"]
    assert pub.attributes["messaging.system"] == "mqtt"
    assert pub.trace_id.hex() == TRACE and pub.parent_span_id.hex() == PARENT
    assert pub.resource.service_name == "mosquitto_pub"
    # The broker's own connections are not spans of their own.
    assert not [s for s in ks.spans if s.resource.service_name == "mosquitto"]


async def test_mqtt_receive_span_on_the_subscriber(kernel_spans, tmp_path: Path) -> None:
    ks = await _mqtt_exchange(kernel_spans, tmp_path)
    (rcv,) = [s for s in ks.spans if s.kind == SpanKind.CONSUMER
              and s.attributes.get("messaging.destination.name") == "plant/line1/temp"]
    assert rcv.trace_id.hex() == TRACE, "the broker forwards the user property; the subscriber side reads it"
    assert rcv.resource.service_name == "mosquitto_sub"


async def test_own_pipeline_traffic_is_not_traced(kernel_spans, tmp_path: Path) -> None:
    ks = await kernel_spans()
    with Mosquitto(workdir=tmp_path) as broker:
        await asyncio.to_thread(subprocess.run, ["mosquitto_pub", "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
                                                 "-t", "helix/uplink/n1", "-m", "x"], check=True, timeout=10)
        await asyncio.to_thread(subprocess.run, ["mosquitto_pub", "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
                                                 "-t", "visible/topic", "-m", "x"], check=True, timeout=10)
        await ks.wait_for(lambda s: s.attributes.get("messaging.destination.name") == "visible/topic")
        assert not [s for s in ks.spans if str(s.attributes.get("messaging.destination.name", "")).startswith("helix/")]
        assert ks.source.stats.ignored_own_traffic >= 1


async def test_pid_allow_list_filters_in_the_kernel(kernel_spans, http_server: Server) -> None:
    ks = await kernel_spans(pids=(http_server.pid,))
    await asyncio.to_thread(_curl, f"http://127.0.0.1:{http_server.port}/path")
    (server,) = await ks.wait_for(lambda s: s.attributes.get("url.path") == "/path")
    await asyncio.sleep(0.5)
    assert server.kind == SpanKind.SERVER
    assert not [s for s in ks.spans if s.resource.service_name == "curl"], "curl is not on the allow-list"
