"""Per-exchange sampling in the kernel, with real curl, a real HTTP/1.1 server and mosquitto_pub.

With a threshold set, an exchange whose randomness R is below it sends nothing to the ring buffer and is counted
into `red_agg` instead; what is kept is sent as before. Trace ids are chosen so that the expected decisions are
known: the threshold for ratio 0.5 is 2^55, so R (the last 14 hex digits of the trace id) starting with 8-f is
kept and 0-7 is not.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from edge.aggregator.red import DEFAULT_BUCKETS
from edge.config import EbpfSourceConfig
from edge.demo.broker import Mosquitto
from edge.errors import ProbeUnavailable
from edge.model import Source, Span, SpanKind
from edge.sampler.consistent import ConsistentSampler, randomness, threshold_for_ratio
from edge.sources.ebpf.events import CloseEvent, ConnectEvent, DataEvent, DataMoreEvent
from edge.sources.ebpf.loader import RED_CLIENT, RED_CONSUMER, RED_PRODUCER, RED_SERVER, RedAggregate
from edge.sources.ebpf.spans import SpanBuilder
from edge.sources.ebpf.source import EbpfSource

from ._services import FRONT
from .conftest import ScriptServer, bpf_unavailable

pytestmark = pytest.mark.bpf

HALF = threshold_for_ratio(0.5)
BOUNDS_NS = tuple(round(b * 1e9) for b in DEFAULT_BUCKETS)

# Keep-alive HTTP/1.1 server: /fail answers 500, anything else 200 with a body in the same write.
SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        code = 500 if self.path.startswith("/fail") else 200
        body = b"x" * 32
        self.send_response(code); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


class App(ScriptServer):
    """The keep-alive server in a subprocess."""

    def __init__(self) -> None:
        super().__init__(SERVER)


@pytest.fixture
def app() -> Iterator[App]:
    a = App()
    try:
        yield a
    finally:
        a.stop()


def trace_id(n: int, kept: bool) -> str:
    """A trace id whose R is >= 2^55 when `kept`, < 2^55 otherwise."""
    low = (0x8 if kept else 0x1) << 52 | n
    return f"{0xABC0 + n:018x}{low:014x}"


def tp(tid: str) -> str:
    return f"traceparent: 00-{tid}-00f067aa0ba902b7-01"


async def curl(url: str, *headers: str) -> tuple[int, str]:
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
    for h in headers:
        args += ["-H", h]
    proc = await asyncio.create_subprocess_exec(*args, url, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return proc.pid, out.decode()


def series(aggs: list[RedAggregate], kind: int, path: str, tgids: set[int] | None = None) -> tuple[int, int, int]:
    """(count, errors, histogram total) over the aggregates of one kind and path (and processes)."""
    hits = [a for a in aggs if a.kind == kind and a.path == path and (tgids is None or a.tgid in tgids)]
    return (sum(a.count for a in hits), sum(a.errors for a in hits),
            sum(sum(a.buckets[:len(BOUNDS_NS) + 1]) for a in hits))


async def publish_traced(port: int, topic: str, payload: str, tid: str) -> int:
    """mosquitto_pub (MQTT 5, its defaults) publishes `payload` with a traceparent user property; returns its pid."""
    pub = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "5", "-t", topic, "-m", payload,
        "-D", "publish", "user-property", "traceparent", f"00-{tid}-00f067aa0ba902b7-01")
    assert await pub.wait() == 0
    return pub.pid


async def test_traceparent_decides_and_held_back_exchanges_are_counted(kernel: Any, app: App) -> None:
    k = kernel()
    k.probes.set_red_bounds(BOUNDS_NS)
    k.probes.set_sample_threshold(HALF)
    plan = [(path, n, kept) for n, (path, kept) in enumerate(
        [("/ok", True), ("/ok", False), ("/fail", True), ("/fail", False)] * 4)]
    curls: dict[int, tuple[str, str, bool]] = {}
    for path, n, kept in plan:
        tid = trace_id(n, kept)
        pid, code = await curl(f"http://127.0.0.1:{app.port}{path}?n={n}", tp(tid))
        assert code == ("500" if path == "/fail" else "200")
        curls[pid] = (path, tid, kept)
    await k.wait_for(lambda e: isinstance(e, CloseEvent) and e.pid in curls, count=len(curls))
    await k.settle(0.5)

    def records_of(pid: int) -> list[Any]:
        return [e for e in k.events if isinstance(e, (DataEvent, DataMoreEvent)) and e.pid == pid]

    client_ports = {e.pid: e.local.port for e in k.of(ConnectEvent) if e.pid in curls}
    for pid, (path, tid, kept) in curls.items():
        client = records_of(pid)
        # the server's side of this connection: records of the server on the socket whose peer is this curl
        server_socks = {e.sock for e in k.of(DataEvent, pid=app.pid) if e.remote.port == client_ports[pid]}
        server = [e for e in k.events if isinstance(e, (DataEvent, DataMoreEvent)) and e.sock in server_socks]
        if kept:
            requests = [e for e in client if isinstance(e, DataEvent) and e.payload.startswith(b"GET ")]
            assert len(requests) == 1 and tid.encode() in requests[0].payload
            assert any(isinstance(e, DataEvent) and e.payload.startswith(b"HTTP/1") for e in client)
            assert any(isinstance(e, DataEvent) and tid.encode() in e.payload for e in server)
            assert requests[0].rv is None, "R came from the wire: no kernel randomness to report"
        else:
            assert client == [], f"held-back exchange {path} {tid} sent {client}"
            assert server == []
    # Nothing of a held-back trace anywhere in what was sent.
    held_ids = {tid.encode() for _, tid, kept in curls.values() if not kept}
    assert not [e for e in k.events if isinstance(e, (DataEvent, DataMoreEvent)) and any(t in e.payload for t in held_ids)]

    aggs = k.probes.red_aggregates()
    curl_pids = set(curls)
    # 4 held back per path, on each side. Server errors are 5xx; client errors 4xx and up.
    assert series(aggs, RED_SERVER, "/ok", {app.pid}) == (4, 0, 4)
    assert series(aggs, RED_SERVER, "/fail", {app.pid}) == (4, 4, 4)
    assert series(aggs, RED_CLIENT, "/ok", curl_pids) == (4, 0, 4)
    assert series(aggs, RED_CLIENT, "/fail", curl_pids) == (4, 4, 4)
    client = [a for a in aggs if a.kind == RED_CLIENT and a.tgid in curl_pids]
    assert {a.host for a in client} == {f"127.0.0.1:{app.port}"} and {a.comm for a in client} == {"curl"}
    assert {a.method for a in aggs if a.tgid in curl_pids | {app.pid}} == {"GET"}
    for a in client:
        assert 0 < a.sum_ns < 5 * 10**9
    decisions = k.probes.decision_counts()  # machine-wide: other traced traffic may add to them
    assert decisions["kept"] >= 16 and decisions["sampled_out"] >= 16, decisions

    # Threshold 0: everything is sent again, and nothing more is decided or counted.
    k.probes.set_sample_threshold(0)
    decisions = k.probes.decision_counts()
    pid, _ = await curl(f"http://127.0.0.1:{app.port}/ok", tp(trace_id(99, False)))
    await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == pid and e.payload.startswith(b"GET "))
    assert k.probes.decision_counts() == decisions
    assert series(k.probes.red_aggregates(), RED_SERVER, "/ok", {app.pid}) == (4, 0, 4)


async def test_histogram_buckets_match_the_aggregators_boundaries(kernel: Any, app: App) -> None:
    # One bound far above any loopback exchange, one below all of them: every count lands in bucket 1.
    k = kernel()
    k.probes.set_red_bounds((1, 10**12))
    k.probes.set_sample_threshold(HALF)
    for n in range(3):
        await curl(f"http://127.0.0.1:{app.port}/ok", tp(trace_id(n, False)))
    await k.settle(0.5)
    server = [a for a in k.probes.red_aggregates() if a.kind == RED_SERVER and a.tgid == app.pid]
    assert len(server) == 1 and server[0].buckets[:3] == (0, 3, 0)
    # No bounds at all: one bucket, as RedAggregator with no bounds has.
    k.probes.set_red_bounds(())
    await curl(f"http://127.0.0.1:{app.port}/ok", tp(trace_id(7, False)))
    await k.settle(0.5)
    server = [a for a in k.probes.red_aggregates() if a.kind == RED_SERVER and a.tgid == app.pid]
    assert server[0].count == 4 and server[0].buckets[0] == 1
    # Disabled: the kernel cannot count, so it holds nothing back.
    k.probes.set_red_bounds(None)
    pid, _ = await curl(f"http://127.0.0.1:{app.port}/ok", tp(trace_id(8, False)))
    await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == pid and e.payload.startswith(b"GET "))


class Spans:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.red: list[tuple[str, str, str, str, int, int, tuple[int, ...]]] = []

    def sink(self, spans: list[Span], src: Source) -> int:
        self.spans.extend(spans)
        return len(spans)

    def red_sink(self, service: str, kind: str, path: str, peer: str, errors: int, sum_ns: int, buckets: Any) -> None:
        self.red.append((service, kind, path, peer, errors, sum_ns, tuple(buckets)))


@pytest.fixture
async def source() -> AsyncIterator[tuple[EbpfSource, Spans]]:
    got = Spans()
    src = EbpfSource(EbpfSourceConfig(), got.sink, own_pid=os.getpid())
    try:
        await src.start()
    except ProbeUnavailable as e:
        bpf_unavailable(str(e))
    src.set_red_sink(BOUNDS_NS, got.red_sink)
    try:
        yield src, got
    finally:
        await src.stop()


def _keep_alive_requests(port: int, n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for i in range(n):
        conn.request("GET", f"/item/{i}")
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    conn.close()


async def test_context_less_requests_carry_the_kernels_randomness(source: Any, app: App) -> None:
    src, got = source
    src.set_sample_threshold(HALF)
    n = 200
    # One keep-alive connection from this (untraced) process: the kernel decides each request anew on it.
    await asyncio.to_thread(_keep_alive_requests, app.port, n)
    await asyncio.sleep(0.5)
    assert src.stream is not None
    src.stream.poll()
    src._emit(src.builder.flush(time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 10**12))
    src.poll_red()
    spans = [s for s in got.spans if s.kind == SpanKind.SERVER and str(s.attributes.get("url.path", "")).startswith("/item/")]
    assert 0.3 * n <= len(spans) <= 0.7 * n, f"kept {len(spans)} of {n} at ratio 0.5"
    agent = ConsistentSampler(0.5)
    for s in spans:
        assert s.attributes["helix.context_from"] == "none"
        assert s.trace_state.startswith("ot=rv:")
        rv = int(s.trace_state[len("ot=rv:"):], 16)
        assert rv >= HALF and randomness(s.trace_id, s.trace_state) == rv == int.from_bytes(s.trace_id[9:], "big")
        assert agent.keeps(s.trace_id, s.trace_state)
        # The books of a kept response are not those of the held-back exchanges after it.
        assert s.duration_ns < 10**9 and "helix.end_estimated" not in s.attributes
    # (other processes on this machine may be traced too: only this app's series count here)
    ours = [r for r in got.red if r[2].startswith("/item/")]
    counted = sum(sum(b) for *_, b in ours)
    assert len(spans) + counted == n, [r for r in got.red if not r[2].startswith("/item/")]
    assert {(svc, kind, peer) for svc, kind, _, peer, *_ in ours} == {(spans[0].resource.service_name, "server", "")}
    assert {path for _, _, path, *_ in ours} <= {f"/item/{i}" for i in range(n)}


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto_pub not installed")
async def test_mqtt_publish_with_traceparent_is_decided_per_message(kernel: Any, mosquitto: Mosquitto) -> None:
    k = kernel()
    k.probes.set_red_bounds(BOUNDS_NS)
    k.probes.set_sample_threshold(HALF)
    pubs: dict[int, tuple[str, bool]] = {}
    for n in range(6):
        kept = n % 2 == 0
        tid = trace_id(n, kept)
        pubs[await publish_traced(mosquitto.port, "plant/line1/temp", "21.5", tid)] = (tid, kept)
    await k.settle(0.5)
    for pid, (tid, kept) in pubs.items():
        sent = [e for e in k.events if isinstance(e, (DataEvent, DataMoreEvent)) and e.pid == pid
                and tid.encode() in e.payload]
        assert bool(sent) == kept, (tid, kept, sent)
        # CONNECT and DISCONNECT carry no traceparent: always sent
        assert any(isinstance(e, DataEvent) and e.pid == pid and e.payload[:1] == b"\x10" for e in k.events)
    aggs = [a for a in k.probes.red_aggregates() if a.kind == RED_PRODUCER and a.tgid in pubs]
    assert sum(a.count for a in aggs) == 3 and {a.path for a in aggs} == {"plant/line1/temp"}
    assert {a.host for a in aggs} == {"127.0.0.1"} and sum(a.errors for a in aggs) == 0


# A subscriber at its defaults (paho-mqtt 2, MQTT v5, QoS 0, its own read loop): prints each message's payload.
PAHO_SUB = r"""
import sys
import paho.mqtt.client as mqtt
def on_connect(c, userdata, flags, reason, props):
    c.subscribe("plant/#")
def on_subscribe(c, userdata, mid, reasons, props):
    print("subscribed", flush=True)
def on_message(c, userdata, msg):
    print(msg.payload.decode(), flush=True)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_forever()
"""


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto_pub not installed")
async def test_mqtt_publishes_read_by_broker_and_subscriber_are_decided_per_message(kernel: Any,
                                                                                     mosquitto: Mosquitto) -> None:
    """The subscribers' reads of a sampled-out PUBLISH send nothing; the kept ones arrive whole and build the same
    receive spans as when the kernel decides nothing; the held-back receives are counted as consumers. The broker's
    PUBLISHes, read or written, are never sent: its connections make no spans."""
    k = kernel()
    k.probes.set_red_bounds(BOUNDS_NS)
    k.probes.set_sample_threshold(HALF)
    subs = [await asyncio.create_subprocess_exec(
                "mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "5", "-t", "plant/#",
                stdout=asyncio.subprocess.PIPE),
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", PAHO_SUB, str(mosquitto.port), stdout=asyncio.subprocess.PIPE)]
    try:
        paho_sub = subs[1]
        assert paho_sub.stdout is not None
        assert (await asyncio.wait_for(paho_sub.stdout.readline(), 15)).strip() == b"subscribed"
        await asyncio.sleep(0.3)  # mosquitto_sub subscribes as fast, without telling
        sent: list[tuple[str, bool]] = []
        for n in range(8):
            kept = n % 2 == 1
            tid = trace_id(n, kept)
            await publish_traced(mosquitto.port, "plant/line1/temp", f"m{n}", tid)
            sent.append((tid, kept))
            await asyncio.sleep(0.02)  # the messages apart (each read starts a message of its own)
        # every message still reaches both subscribers: the probes only watch
        for sub in subs:
            assert sub.stdout is not None
            got = set()
            while len(got) < len(sent):
                line = (await asyncio.wait_for(sub.stdout.readline(), 10)).strip().decode()
                if line.startswith("m"):
                    got.add(line)
            assert got == {f"m{n}" for n in range(len(sent))}
        await k.settle(0.5)
    finally:
        for sub in subs:
            sub.terminate()
            await sub.wait()
    assert mosquitto.proc is not None
    sub_pids = {sub.pid for sub in subs}
    readers = sub_pids | {mosquitto.proc.pid}
    data = [e for e in k.events if isinstance(e, (DataEvent, DataMoreEvent)) and e.pid in readers]
    for tid, kept in sent:
        for pid in readers:
            hits = [e for e in data if e.pid == pid and tid.encode() in e.payload]
            assert bool(hits) == (kept and pid != mosquitto.proc.pid), (pid, tid, kept, hits)
    # the held-back packets' fixed-header reads were never sent either: one PUBLISH start per kept message
    for pid in sub_pids:
        starts = [e for e in data if isinstance(e, DataEvent) and e.pid == pid and e.payload[:1] == b"\x30"]
        assert len(starts) == sum(kept for _, kept in sent), (pid, starts)
    aggs = [a for a in k.probes.red_aggregates() if a.kind == RED_CONSUMER and a.tgid in sub_pids]
    assert sum(a.count for a in aggs) == 2 * sum(not kept for _, kept in sent)
    assert {a.path for a in aggs} == {"plant/line1/temp"} and {a.tgid for a in aggs} == sub_pids
    assert not [a for a in k.probes.red_aggregates() if a.tgid == mosquitto.proc.pid]  # a broker makes no spans
    # while its CONNECTs, SUBSCRIBEs and their answers are sent as ever
    assert [e for e in data if isinstance(e, DataEvent) and e.pid == mosquitto.proc.pid and e.payload[:1] == b"\x90"]
    # The kept messages build their receive spans as ever: both subscribers, every attribute, whole packets.
    builder = SpanBuilder()
    spans = [s for s in builder.feed(k.events) + builder.flush(time.monotonic_ns() + 10**10)
             if s.kind == SpanKind.CONSUMER and s.attributes.get("process.pid") in sub_pids]
    kept_tids = {bytes.fromhex(tid) for tid, kept in sent if kept}
    assert sorted(s.trace_id for s in spans) == sorted(list(kept_tids) * 2), [s.name for s in spans]
    for s in spans:
        assert s.name == "receive plant/line1/temp" and "helix.mqtt.truncated" not in s.attributes
        assert s.attributes["messaging.message.body.size"] == 2 and s.end_ns >= s.start_ns


# A subscriber whose reads of one packet lie further apart than the probes' message gap (5 ms): paho's reads (the
# type byte, the remaining length, then the rest) when the scheduler takes the CPU from it between them, as on a busy
# node. Raw sockets, because no client can be told to be descheduled: the pause stands for that, not for a setting.
SLOW_SUB = r"""
import socket, sys, time
def rl(n):
    out = bytearray()
    while True:
        b = n & 0x7F; n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n: return bytes(out)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
# CONNECT v5, clean start, keepalive 60, no properties, client id "slow"
var = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + b"\x00\x04slow"
s.sendall(b"\x10" + rl(len(var)) + var)
def packet():
    first = s.recv(1)
    n = mult = 0; shift = 0
    while True:
        b = s.recv(1)[0]; n |= (b & 0x7F) << shift; shift += 7
        if not b & 0x80: break
    time.sleep(float(sys.argv[2]))  # descheduled between the header and the rest
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return first[0], body
assert packet()[0] == 0x20
sub = b"\x00\x01" + b"\x00" + b"\x00\x07plant/#" + b"\x00"
s.sendall(b"\x82" + rl(len(sub)) + sub)
assert packet()[0] == 0x90
print("subscribed", flush=True)
while True:
    kind, body = packet()
    if kind >> 4 == 3:
        tl = int.from_bytes(body[:2], "big"); p = 2 + tl
        pl, i, sh = 0, p, 0
        while True:
            b = body[i]; pl |= (b & 0x7F) << sh; sh += 7; i += 1
            if not b & 0x80: break
        print(body[i + pl:].decode(), flush=True)
"""


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto_pub not installed")
@pytest.mark.parametrize("ratio", [0.5, 1.0])
async def test_a_subscriber_descheduled_inside_a_packet_has_every_receive_counted(kernel: Any, mosquitto: Mosquitto,
                                                                                  ratio: float) -> None:
    """The rest of a PUBLISH read 20 ms after its fixed header still belongs to it. Kernel deciding (0.5): the
    sampled-out receives are counted as consumers, the kept ones build whole receive spans. Nothing decided (1.0):
    every receive builds its span. (Were the rest a message of its own, the receive was lost either way: the header
    alone decodes to nothing, the rest to no MQTT.)"""
    k = kernel()
    k.probes.set_red_bounds(BOUNDS_NS)
    k.probes.set_sample_threshold(HALF if ratio < 1 else 0)
    sub = await asyncio.create_subprocess_exec(sys.executable, "-c", SLOW_SUB, str(mosquitto.port), "0.02",
                                               stdout=asyncio.subprocess.PIPE)
    try:
        assert sub.stdout is not None
        assert (await asyncio.wait_for(sub.stdout.readline(), 15)).strip() == b"subscribed"
        sent: list[tuple[str, bool]] = []
        for n in range(6):
            kept = n % 2 == 1
            tid = trace_id(n, kept)
            await publish_traced(mosquitto.port, "plant/line3/flow", f"m{n}", tid)
            sent.append((tid, kept))
            assert (await asyncio.wait_for(sub.stdout.readline(), 10)).strip() == f"m{n}".encode()
            await asyncio.sleep(0.02)  # the messages apart (each one's first read starts a message of its own)
        await k.settle(0.5)
    finally:
        sub.terminate()
        await sub.wait()
    aggs = [a for a in k.probes.red_aggregates() if a.kind == RED_CONSUMER and a.tgid == sub.pid]
    held = [(a.path, a.count) for a in aggs]
    assert held == ([("plant/line3/flow", 3)] if ratio < 1 else [])
    builder = SpanBuilder()
    spans = [s for s in builder.feed(k.events) + builder.flush(time.monotonic_ns() + 10**10)
             if s.kind == SpanKind.CONSUMER and s.attributes.get("process.pid") == sub.pid]
    assert sorted(s.trace_id for s in spans) == sorted(bytes.fromhex(t) for t, kept in sent if kept or ratio == 1)
    for s in spans:
        assert s.name == "receive plant/line3/flow" and "helix.mqtt.truncated" not in s.attributes
        assert s.attributes["messaging.message.body.size"] == 2
    if ratio == 1:  # undecided, each rest came as a message of its own (decided, the kernel held it to its header)
        assert builder.stats.resumed_packets >= len(spans)


@contextlib.asynccontextmanager
async def _front_serving(kernel: Any, app: App, n: int, trace_app: bool) -> AsyncIterator[tuple[Any, int, list[int]]]:
    """front (traced) serves n curl requests carrying traceparent (every other one's R kept at ratio 0.5), calling app
    without context for each; yields the probes, front's pid and the R of the kept requests, sorted."""
    front = subprocess.Popen([sys.executable, "-c", FRONT, f"http://127.0.0.1:{app.port}"], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert front.stdout is not None
        port = int(front.stdout.readline())
        k = kernel()
        # the decision counters are global: only these processes count here
        k.probes.set_allowed_pids([front.pid, app.pid] if trace_app else [front.pid])
        k.probes.set_red_bounds(BOUNDS_NS)
        k.probes.set_sample_threshold(HALF)
        kept = []
        for i in range(n):
            tid = trace_id(i, i % 2 == 0)
            _, code = await curl(f"http://127.0.0.1:{port}/outer", tp(tid))
            assert code == "200"
            if i % 2 == 0:
                kept.append(int(tid[18:], 16))
        await k.settle(0.5)
        yield k, front.pid, sorted(kept)
    finally:
        front.terminate()
        front.wait(5)


async def test_calls_made_while_serving_follow_the_served_requests_decision(kernel: Any, app: App) -> None:
    async with _front_serving(kernel, app, 12, trace_app=False) as (k, front, kept):
        inner = [e for e in k.of(DataEvent, pid=front) if e.payload.startswith(b"GET /inner ")]
        # The front's context-less calls were decided with the R of the request each thread was serving: the kept
        # half exactly, each carrying that R for the span builder.
        assert sorted(e.rv for e in inner) == kept
        held = [a for a in k.probes.red_aggregates() if a.tgid == front and a.kind == RED_CLIENT]
        assert [(a.path, a.count) for a in held] == [("/inner", 6)]
        decisions = k.probes.decision_counts()
        assert decisions["thread_rv"] == 12 and decisions["sampled_out"] == 12 and decisions["kept"] == 12


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_a_traced_server_decides_a_context_less_call_with_its_clients_randomness(kernel: Any, app: App) -> None:
    # front (traced) serves requests carrying traceparent and calls app (traced) without context: the kernel lends the
    # call the R of the request its thread serves, and app's side of the same hop now takes that R from its client
    # instead of drawing its own, so each hop is kept or held back whole (the agent joins both halves into one trace).
    async with _front_serving(kernel, app, 16, trace_app=True) as (k, front, kept):
        calls = [e for e in k.of(DataEvent, pid=front) if e.payload.startswith(b"GET /inner ")]
        served = [e for e in k.of(DataEvent, pid=app.pid) if e.payload.startswith(b"GET /inner ")]
        assert sorted(e.rv for e in calls) == kept
        assert sorted(e.rv for e in served) == kept, "the server's side of each kept call, and only those"
        held = [a for a in k.probes.red_aggregates() if a.tgid == app.pid and a.kind == RED_SERVER]
        assert sum(a.count for a in held if a.path == "/inner") == 8
        assert k.probes.decision_counts()["peer_rv"] >= 16


async def test_the_compat_object_for_kernels_without_bpf_loop_holds_nothing_back(app: App, tmp_path: Any) -> None:
    from edge.sources.ebpf.loader import ProbeSet, objects_dir

    from .conftest import Collector

    # What the loader picks before 5.17, loaded here as the io object.
    (tmp_path / "io.bpf.o").symlink_to(objects_dir() / "io_compat.bpf.o")
    (tmp_path / "proc.bpf.o").symlink_to(objects_dir() / "proc.bpf.o")
    try:
        probes = ProbeSet(objects=tmp_path)
    except ProbeUnavailable as e:
        bpf_unavailable(str(e))
    k = Collector(probes)
    k.stream.start()
    try:
        probes.set_allowed_pids([app.pid])
        probes.set_red_bounds(BOUNDS_NS)
        probes.set_sample_threshold(HALF)
        await curl(f"http://127.0.0.1:{app.port}/ok", tp(trace_id(1, False)))
        await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == app.pid and e.payload.startswith(b"GET "))
        assert probes.red_aggregates() == []
        assert probes.decision_counts()["undecidable_kept"] == 1 and probes.decision_counts()["sampled_out"] == 0
    finally:
        k.close()
