"""Kernel spans from real traffic: curl, Python http.server, nginx, mosquitto and mosquitto_pub/sub.

Each test runs the product's kernel source (probes + ring buffer + span builder) and asserts on the spans it
produces: method, path, status, peer, duration within what the client measured, trace context off the wire.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
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
        self.broker_pid = 0  # the test's own Mosquitto, where it runs one
        self.client_pids: set[int] = set()  # its own MQTT clients: other tests on the machine use the same topics

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
    # By port too: the probes are machine-wide, and other tests (tests/bpf/test_probes.py) request /path of servers
    # of their own, which a suite running beside this one makes spans of.
    ours = lambda s: s.attributes.get("url.path") == "/path" and s.attributes.get("server.port") == http_server.port  # noqa: E731
    server = (await ks.wait_for(lambda s: s.kind == SpanKind.SERVER and ours(s)))[0]
    client = (await ks.wait_for(lambda s: s.kind == SpanKind.CLIENT and ours(s)))[0]
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


def run_nginx(tmp_path: Path, server_block: str) -> tuple[subprocess.Popen[bytes], int]:
    """nginx at its defaults but for one `server` block (`{port}` in it: a free port) and paths in tmp_path; returns
    once it accepts connections."""
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
  server {{ {server_block.replace("{port}", str(port))} }}
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
    return proc, port


@pytest.fixture
def nginx(tmp_path: Path, http_server: Server):
    proc, port = run_nginx(tmp_path, "listen 127.0.0.1:{port}; location / { proxy_pass http://127.0.0.1:"
                           f"{http_server.port}; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}")
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
        assert broker.proc is not None
        ks.broker_pid = broker.proc.pid
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-V", "mqttv5", "-t", "plant/line1/temp",
                                "-C", "1", "-q", "1"], stdout=subprocess.PIPE)
        await asyncio.sleep(0.5)
        pub = subprocess.Popen([
            "mosquitto_pub", "-p", str(broker.port), "-V", "mqttv5", "-q", "1", "-t", "plant/line1/temp",
            "-m", "21.5", "-D", "PUBLISH", "user-property", "traceparent", f"00-{TRACE}-{PARENT}-01"])
        ks.client_pids = {sub.pid, pub.pid}
        assert await asyncio.to_thread(pub.wait, 10) == 0
        assert sub.wait(10) == 0
        await ks.wait_for(lambda s: s.kind == SpanKind.PRODUCER)
        await asyncio.sleep(0.5)
        ks.source.stream.poll()  # type: ignore[union-attr]
    return ks


async def test_mqtt_publish_with_user_property_traceparent(kernel_spans, tmp_path: Path) -> None:
    ks = await _mqtt_exchange(kernel_spans, tmp_path)
    (pub,) = [s for s in ks.spans if s.kind == SpanKind.PRODUCER and s.attributes.get("process.pid") in ks.client_pids
              and s.attributes.get("messaging.destination.name") == "plant/line1/temp"]
    assert pub.attributes["messaging.system"] == "mqtt"
    assert pub.trace_id.hex() == TRACE and pub.parent_span_id.hex() == PARENT
    assert pub.resource.service_name == "mosquitto_pub"
    # The broker's own connections are not spans of their own (other brokers on a shared machine may have some).
    assert not [s for s in ks.spans if s.resource.as_dict().get("process.pid") == ks.broker_pid]


async def test_mqtt_receive_span_on_the_subscriber(kernel_spans, tmp_path: Path) -> None:
    ks = await _mqtt_exchange(kernel_spans, tmp_path)
    (rcv,) = [s for s in ks.spans if s.kind == SpanKind.CONSUMER and s.attributes.get("process.pid") in ks.client_pids
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


PAHO_SUBSCRIBER = r"""
import sys, paho.mqtt.client as mqtt
port, want = int(sys.argv[1]), int(sys.argv[2])
got = []
def on_subscribe(client, userdata, mid, reason_codes, properties):
    print("ready", flush=True)
def on_message(client, userdata, msg):
    got.append(msg.topic)
    if len(got) == want:
        client.disconnect()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-sub", protocol=mqtt.MQTTv5)
c.on_subscribe, c.on_message = on_subscribe, on_message
c.connect("127.0.0.1", port)
c.subscribe("plant/+/temp", qos=0)
c.loop_forever()
print(" ".join(got), flush=True)
"""


async def test_paho_v5_subscriber_receives_three_deliveries_each_with_its_context(kernel_spans, tmp_path: Path) -> None:
    """paho reads the command byte, the remaining length a byte at a time, then the rest: three QoS 0 deliveries,
    each with its own traceparent user property, make three receive spans on the subscriber.

    The publishes are 50 ms apart, as periodic readings are: each delivery is then a message of its own (idle gap).
    Deliveries closer than the gap share one message and its payload_bytes budget (two of these fit in its 512 bytes;
    tests/edge/sources/ebpf/spans/test_mqtt.py covers back-to-back deliveries inside the budget)."""
    ks = await kernel_spans()
    traces = [f"{TRACE[:-2]}{i:02x}" for i in range(3)]
    with Mosquitto(workdir=tmp_path) as broker:
        sub = await asyncio.create_subprocess_exec(sys.executable, "-c", PAHO_SUBSCRIBER, str(broker.port), "3",
                                                   stdout=asyncio.subprocess.PIPE)
        assert sub.stdout is not None
        assert (await asyncio.wait_for(sub.stdout.readline(), 10)).strip() == b"ready"
        for i, trace in enumerate(traces):
            await asyncio.to_thread(subprocess.run, [
                "mosquitto_pub", "-p", str(broker.port), "-V", "mqttv5", "-q", "0", "-t", f"plant/{i}/temp",
                "-m", f"2{i}.5", "-D", "PUBLISH", "user-property", "traceparent", f"00-{trace}-{PARENT}-01"],
                check=True, timeout=10)
            await asyncio.sleep(0.05)
        out, _ = await asyncio.wait_for(sub.communicate(), 10)
        assert sub.returncode == 0 and out.split() == [b"plant/0/temp", b"plant/1/temp", b"plant/2/temp"]
        rcv = await ks.wait_for(lambda s: s.kind == SpanKind.CONSUMER and s.attributes.get("process.pid") == sub.pid,
                                count=3)
    rcv.sort(key=lambda s: s.start_ns)
    assert [s.attributes["messaging.destination.name"] for s in rcv] == [f"plant/{i}/temp" for i in range(3)]
    assert [s.trace_id.hex() for s in rcv] == traces
    assert all(s.parent_span_id.hex() == PARENT and s.attributes["helix.context_from"] == "wire" for s in rcv)
    assert all(s.attributes["messaging.client.id"] == "paho-sub" for s in rcv)
    assert all(s.attributes["network.protocol.version"] == "5" for s in rcv)
    assert all(s.attributes["messaging.message.body.size"] == 4 for s in rcv)
    assert ks.source.builder.stats.topped_up >= 3


SLOW_BODY_SERVER = r"""
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow":
            body = b"a" * 3000
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body[:1000]); self.wfile.flush()
            time.sleep(0.05)                                  # a pause inside the body: past the idle gap
            self.wfile.write(body[1000:])
        else:
            self.send_response(404); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(b"no")
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""

KEEP_ALIVE_CLIENT = r"""
import http.client, json, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
took = {}
for path in ("/slow", "/fast"):
    t0 = time.monotonic_ns()
    c.request("GET", path)
    r = c.getresponse(); r.read()
    took[path] = time.monotonic_ns() - t0
print(json.dumps(took), flush=True)
"""


async def test_http_body_split_by_the_idle_gap_keeps_pairing_and_durations(kernel_spans) -> None:
    import json

    ks = await kernel_spans()
    server = subprocess.Popen([sys.executable, "-c", SLOW_BODY_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", KEEP_ALIVE_CLIENT, str(port)],
                                      capture_output=True, check=True, timeout=10)
        took = json.loads(out.stdout)
        on_server = lambda s: s.kind == SpanKind.SERVER and s.attributes.get("process.pid") == server.pid  # noqa: E731
        spans = await ks.wait_for(on_server, count=2)
    finally:
        server.terminate()
        server.wait(5)
    by_path = {s.attributes["url.path"]: s for s in spans}
    slow, fast = by_path["/slow"], by_path["/fast"]
    assert slow.attributes["http.response.status_code"] == 200 and fast.attributes["http.response.status_code"] == 404
    # The exchange ends with the body's last write, after the pause, and never outlasts what the client measured.
    assert 45_000_000 <= slow.duration_ns <= took["/slow"]
    assert slow.attributes["http.response.body.size"] == 3000
    assert "helix.end_estimated" not in slow.attributes
    assert 0 < fast.duration_ns <= took["/fast"] and fast.start_ns >= slow.end_ns
    # Pairing is proven by the statuses above; the builder's counters are machine-wide (other processes' traffic
    # lands in them), so only the split this exchange must cause is checked there.
    assert ks.source.builder.stats.split_messages >= 1
