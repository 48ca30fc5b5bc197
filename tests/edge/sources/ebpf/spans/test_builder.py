from __future__ import annotations

import errno
import http.client
import http.server
import threading
import time

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.model import Source, SpanKind, StatusCode
from edge.protocols.mqtt import MQTT_5, MQTT_311
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
    Role,
    TcpFaultEvent,
)
from edge.sources.ebpf.spans import SCOPE, FixedClock, SpanBuilder, SpanBuilderConfig, SystemClock
from tests.edge.protocols import mqtt_encode as enc
from tests.edge.protocols.relay import Relay

OFFSET = 1_700_000_000_000_000_000
SRV = Endpoint("10.0.0.5", 8080)
CLI = Endpoint("10.0.0.9", 51000)
BROKER = Endpoint("10.0.0.2", 1883)
TID = "4bf92f3577b34da6a3ce929d0e0e4736"
SID = "00f067aa0ba902b7"
TP = f"00-{TID}-{SID}-01"
IN, OUT = Direction.INGRESS, Direction.EGRESS


def builder(**cfg) -> SpanBuilder:
    cfg.setdefault("host_name", "edge-1")
    return SpanBuilder(SpanBuilderConfig(**cfg), FixedClock(offset_ns=OFFSET))


def data(sock, direction, ts, payload, *, end=None, size=None, prev_bytes=0, prev_end=0, role=Role.SERVER, pid=100,
         tid=101, comm="api", offcpu=0, local=SRV, remote=CLI) -> DataEvent:
    return DataEvent(ts, end if end is not None else ts + 1000, pid, tid, comm, 7, sock, role, direction, local, remote,
                     len(payload) if size is None else size, payload[:256], prev_bytes, prev_end, offcpu)


def req(method="GET", target="/api/orders?id=1", headers=(), body=b"", host="shop.local:8080") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: test-agent/1.0", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def resp(status=200, body=b"ok", headers=()) -> bytes:
    lines = [f"HTTP/1.1 {status} X", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_clean(b: SpanBuilder) -> None:
    assert b.stats.internal_errors == 0
    assert b.connection_count == 0 and b.pending_count == 0
    assert not b.conns.waiting and not b.conns.by_pid  # internal maps back to baseline


# -- HTTP server side ------------------------------------------------------------------------------------------------


def test_simple_get_server_span_exact_times_and_attributes():
    b = builder()
    r, s = req(), resp(body=b"x" * 5000)
    assert b.feed([data(1, IN, 1_000, r, end=2_000, offcpu=10)]) == []
    # The response's first write carried only part of it: its end is known when the next message starts.
    assert b.feed([data(1, OUT, 5_000, s[:300], size=300, end=6_000, prev_bytes=len(r), prev_end=2_000, offcpu=410)]) == []
    spans = b.feed([data(1, IN, 9_000, req(target="/next"), prev_bytes=len(s), prev_end=7_000, offcpu=500)])
    assert len(spans) == 1
    sp = spans[0]
    assert (sp.name, sp.kind, sp.source, sp.scope) == ("GET", SpanKind.SERVER, Source.EBPF, SCOPE)
    # Server spans start when the read returned the request (sys_exit), end when the response message ended.
    assert (sp.start_ns, sp.end_ns) == (OFFSET + 2_000, OFFSET + 7_000)
    assert sp.status_code == StatusCode.UNSET and sp.parent_span_id == b"" and len(sp.trace_id) == 16
    a = sp.attributes
    assert a["http.request.method"] == "GET" and a["url.path"] == "/api/orders" and a["url.query"] == "id=1"
    assert a["http.response.status_code"] == 200
    assert (a["server.address"], a["server.port"]) == ("shop.local", 8080)
    assert (a["client.address"], a["network.peer.address"], a["network.peer.port"]) == ("10.0.0.9", "10.0.0.9", 51000)
    assert a["network.protocol.version"] == "1.1" and a["user_agent.original"] == "test-agent/1.0"
    assert (a["process.pid"], a["thread.id"], a["process.executable.name"]) == (100, 101, "api")
    assert a["helix.offcpu_ns"] == 400
    assert a["http.request.body.size"] == 0 and a["http.response.body.size"] == 5000
    assert a["helix.context_from"] == "none"
    res = sp.resource.as_dict()
    assert res["service.name"] == "api" and res["process.pid"] == 100 and res["host.name"] == "edge-1"


def test_response_whole_in_first_write_is_emitted_at_once():
    b = builder()
    r, s = req(), resp(404, b"nope")
    b.feed([data(1, IN, 1_000, r)])
    spans = b.feed([data(1, OUT, 3_000, s, end=3_500, prev_bytes=len(r), prev_end=2_000)])
    assert len(spans) == 1
    assert spans[0].end_ns == OFFSET + 3_500
    assert spans[0].status_code == StatusCode.UNSET  # 4xx is not a server error
    assert spans[0].attributes["http.response.body.size"] == 4


def test_keep_alive_three_requests():
    b = builder()
    out = []
    t = 0
    prev_bytes = prev_end = 0
    for i, status in enumerate((200, 503, 201)):
        r, s = req(target=f"/r{i}"), resp(status, b"body%d" % i)
        out += b.feed([data(1, IN, t + 100, r, end=t + 200, prev_bytes=prev_bytes, prev_end=prev_end)])
        out += b.feed([data(1, OUT, t + 500, s, end=t + 600, prev_bytes=len(r), prev_end=t + 200)])
        prev_bytes, prev_end, t = len(s), t + 600, t + 10_000
    out += b.feed([CloseEvent(t, 100, 101, 7, 1, prev_bytes, prev_end, 0)])
    assert [sp.attributes["url.path"] for sp in out] == ["/r0", "/r1", "/r2"]
    assert [sp.attributes["http.response.status_code"] for sp in out] == [200, 503, 201]
    assert [sp.status_code for sp in out] == [StatusCode.UNSET, StatusCode.ERROR, StatusCode.UNSET]
    assert out[1].attributes["error.type"] == "503"
    assert len({sp.span_id for sp in out}) == 3 and len({sp.trace_id for sp in out}) == 3
    assert [sp.start_ns - OFFSET for sp in out] == [200, 10_200, 20_200]
    assert_clean(b)


def test_pipelining_two_requests_one_snapshot_two_responses():
    b = builder()
    r1, r2 = req(target="/first"), req("POST", "/second", body=b"12345")
    s1, s2 = resp(200, b"a"), resp(500, b"bb")
    b.feed([data(1, IN, 1_000, r1 + r2, end=1_100)])
    spans = b.feed([data(1, OUT, 2_000, s1 + s2, end=2_100, prev_bytes=len(r1 + r2), prev_end=1_100)])
    assert [(sp.attributes["url.path"], sp.attributes["http.response.status_code"]) for sp in spans] == [
        ("/first", 200), ("/second", 500)]
    assert spans[1].attributes["http.request.body.size"] == 5
    assert all(sp.end_ns == OFFSET + 2_100 for sp in spans)
    assert b.pending_count == 0


def test_pipelining_second_response_head_hidden_by_first_body():
    b = builder()
    r1, r2 = req(target="/big"), req(target="/small")
    s1 = resp(200, b"z" * 4000)
    b.feed([data(1, IN, 1_000, r1 + r2, end=1_100)])
    assert b.feed([data(1, OUT, 2_000, s1, size=1000, end=2_100, prev_bytes=len(r1 + r2), prev_end=1_100)]) == []
    spans = b.feed([CloseEvent(9_000, 100, 101, 7, 1, len(s1) + 60, 8_000, 0)])
    assert [sp.attributes["url.path"] for sp in spans] == ["/big", "/small"]
    assert spans[0].attributes["http.response.status_code"] == 200
    assert "http.response.status_code" not in spans[1].attributes
    assert spans[1].attributes["helix.http.response_seen"] is False
    assert all(sp.end_ns == OFFSET + 8_000 for sp in spans)
    assert b.stats.unseen_responses == 1
    assert_clean(b)


def test_interim_100_continue_is_not_the_answer():
    b = builder()
    r = req("POST", "/upload", headers=["Expect: 100-continue"], body=b"")
    head = r.replace(b"\r\n\r\n", b"\r\nContent-Length: 3000\r\n\r\n")
    out = b.feed([data(1, IN, 1_000, head, end=1_100)])
    out += b.feed([data(1, OUT, 2_000, b"HTTP/1.1 100 Continue\r\n\r\n", end=2_100, prev_bytes=len(head), prev_end=1_100)])
    out += b.feed([data(1, IN, 3_000, b"x" * 256, size=3000, end=3_100, prev_bytes=25, prev_end=2_100)])  # the body
    out += b.feed([data(1, OUT, 4_000, resp(201, b""), end=4_100, prev_bytes=3000, prev_end=3_900)])
    assert len(out) == 1 and out[0].attributes["http.response.status_code"] == 201
    assert out[0].attributes["http.request.body.size"] == 3000
    assert b.stats.continuation == 1 and b.stats.unparsed == 0


# -- HTTP client side ------------------------------------------------------------------------------------------------


def test_client_request_split_across_many_writes():
    """Headers and a 50 kB body in many writes: one DataEvent (the direction never changed), sized by prev_bytes."""
    b = builder()
    head = b"POST /upload HTTP/1.1\r\nHost: files:9000\r\nTransfer-Encoding: chunked\r\n\r\n"
    total = len(head) + 50_000
    ev = data(3, OUT, 10_000, head, end=10_050, role=Role.CLIENT, local=CLI, remote=Endpoint("10.0.0.7", 9000), pid=200, tid=201, comm="uploader")
    assert b.feed([ev]) == []
    s = resp(201, b"")
    spans = b.feed([data(3, IN, 90_000, s, end=95_000, prev_bytes=total, prev_end=80_000, role=Role.CLIENT, local=CLI,
                         remote=Endpoint("10.0.0.7", 9000), pid=200, tid=201, comm="uploader")])
    assert len(spans) == 1
    sp = spans[0]
    assert sp.kind == SpanKind.CLIENT and sp.name == "POST"
    assert (sp.start_ns, sp.end_ns) == (OFFSET + 10_000, OFFSET + 95_000)  # client: write enter .. response read
    assert sp.attributes["http.request.body.size"] == 50_000
    assert sp.attributes["url.full"] == "http://files:9000/upload"
    assert (sp.attributes["server.address"], sp.attributes["server.port"]) == ("files", 9000)


def test_client_error_statuses_and_no_host_header():
    b = builder()
    r = b"GET /missing HTTP/1.0\r\n\r\n"
    remote = Endpoint("fd00::7", 80)
    b.feed([data(4, OUT, 1_000, r, role=Role.CLIENT, local=CLI, remote=remote)])
    sp = b.feed([data(4, IN, 2_000, resp(404, b"no"), role=Role.CLIENT, local=CLI, remote=remote, prev_bytes=len(r), prev_end=1_500)])[0]
    assert sp.status_code == StatusCode.ERROR and sp.attributes["error.type"] == "404"
    assert sp.attributes["server.address"] == "fd00::7" and sp.attributes["url.full"] == "http://[fd00::7]:80/missing"
    assert sp.attributes["network.protocol.version"] == "1.0"


def test_chunked_response_end_inside_and_outside_snapshot():
    b = builder()
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    s = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    b.feed([data(1, IN, 1_000, req())])
    spans = b.feed([data(1, OUT, 2_000, s, end=2_200)])
    assert len(spans) == 1 and spans[0].end_ns == OFFSET + 2_200  # terminator seen: complete in the first write
    assert spans[0].attributes["http.response.body.size"] == len(body)
    # Terminator beyond the snapshot: the end comes with the close, the size from the message byte count.
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b.feed([data(2, IN, 5_000, req())])
    assert b.feed([data(2, OUT, 6_000, head + b"400\r\n" + b"a" * 200, size=4096, end=6_100)]) == []
    spans = b.feed([CloseEvent(20_000, 100, 101, 7, 2, len(head) + 9000, 19_000, 0)])
    assert spans[0].end_ns == OFFSET + 19_000 and spans[0].attributes["http.response.body.size"] == 9000


# -- trace context -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "fmt", "flags"),
    [
        (f"traceparent: {TP}", "w3c", 1),
        (f"b3: {TID}-{SID}-0", "b3", 0),
        (f"uber-trace-id: {TID}:{SID}:0:1", "jaeger", 1),
        (f"X-B3-TraceId: {TID}", "b3", 1),
    ],
)
def test_trace_context_from_wire(header, fmt, flags):
    headers = [header] + ([f"X-B3-SpanId: {SID}"] if header.startswith("X-B3") else [])
    b = builder()
    r = req(headers=headers)
    b.feed([data(1, IN, 1_000, r)])
    sp = b.feed([data(1, OUT, 2_000, resp())])[0]
    assert sp.trace_id.hex() == TID and sp.parent_span_id.hex() == SID and sp.span_id.hex() != SID
    assert sp.flags == flags
    assert sp.attributes["helix.context_from"] == "wire" and sp.attributes["helix.wire.format"] == fmt


def test_client_span_takes_injected_context_and_tracestate():
    b = builder()
    r = req(headers=[f"traceparent: {TP}", "tracestate: ot=th:8,vendor=x"])
    b.feed([data(1, OUT, 1_000, r, role=Role.CLIENT, local=CLI, remote=SRV)])
    sp = b.feed([data(1, IN, 2_000, resp(), role=Role.CLIENT, local=CLI, remote=SRV)])[0]
    assert sp.kind == SpanKind.CLIENT and sp.trace_id.hex() == TID and sp.parent_span_id.hex() == SID
    assert sp.trace_state == "ot=th:8,vendor=x"


# -- MQTT --------------------------------------------------------------------------------------------------------------


def mq(sock, direction, ts, payload, **kw):
    kw.setdefault("role", Role.CLIENT)
    kw.setdefault("local", CLI)
    kw.setdefault("remote", BROKER)
    kw.setdefault("comm", "sensor")
    return data(sock, direction, ts, payload, **kw)


def test_mqtt5_publish_with_traceparent_user_property():
    b = builder()
    out = b.feed([
        mq(5, OUT, 1_000, enc.connect("press-3", MQTT_5)),
        mq(5, IN, 2_000, enc.connack(version=MQTT_5), prev_bytes=20, prev_end=1_100),
    ])
    pub = enc.publish("plant/press/3", b'{"t": 1}', qos=1, packet_id=42, user=[("traceparent", TP), ("tracestate", "a=b")])
    out += b.feed([mq(5, OUT, 3_000, pub, end=3_400, prev_bytes=10, prev_end=2_100)])
    assert len(out) == 1
    sp = out[0]
    assert (sp.name, sp.kind) == ("publish plant/press/3", SpanKind.PRODUCER)
    assert (sp.start_ns, sp.end_ns) == (OFFSET + 3_000, OFFSET + 3_400)
    assert sp.trace_id.hex() == TID and sp.parent_span_id.hex() == SID and sp.trace_state == "a=b"
    a = sp.attributes
    assert a["messaging.system"] == "mqtt" and a["messaging.operation.type"] == "send"
    assert a["messaging.destination.name"] == "plant/press/3" and a["messaging.message.id"] == "42"
    assert a["messaging.mqtt.qos"] == 1 and a["messaging.message.body.size"] == 8
    assert a["messaging.client.id"] == "press-3" and a["network.protocol.version"] == "5"
    assert a["helix.wire.format"] == "w3c"
    # The same connection receiving a publish: a consumer span.
    recv = enc.publish("cmd/press/3", b"stop", user=[("traceparent", TP)])
    sp2 = b.feed([mq(5, IN, 5_000, recv, end=5_300, prev_bytes=len(pub), prev_end=3_400)])[0]
    assert (sp2.name, sp2.kind, sp2.attributes["messaging.operation.type"]) == ("receive cmd/press/3", SpanKind.CONSUMER, "receive")


def test_mqtt311_publish_uses_version_from_connect():
    b = builder()
    b.feed([mq(6, OUT, 1_000, enc.connect("legacy", MQTT_311))])
    # A payload that would also read as an empty v5 property block: the remembered version decides.
    pub = enc.publish("line/1", b"\x00\x01\x02", version=MQTT_311)
    sp = b.feed([mq(6, OUT, 3_000, pub, prev_bytes=4, prev_end=2_000)])[0]
    assert sp.attributes["messaging.message.body.size"] == 3
    assert sp.attributes["network.protocol.version"] == "3.1.1"
    assert sp.attributes["helix.context_from"] == "none"


def test_mqtt_several_publishes_in_one_message_and_topic_alias():
    b = builder()
    b.feed([mq(7, OUT, 1_000, enc.connect("c", MQTT_5))])
    p1 = enc.publish("a/b", b"1", props=[(0x23, b"\x00\x01")])
    p2 = enc.publish("", b"2", props=[(0x23, b"\x00\x01")])
    spans = b.feed([mq(7, OUT, 3_000, p1 + p2, prev_bytes=4, prev_end=2_000)])
    assert [sp.name for sp in spans] == ["publish a/b", "publish a/b"]


def test_broker_side_connections_make_no_spans():
    b = builder()
    ev = dict(role=Role.SERVER, local=BROKER, remote=CLI, comm="mosquitto", pid=300)
    out = b.feed([
        data(8, IN, 1_000, enc.connect("x", MQTT_5), **ev),
        data(8, OUT, 2_000, enc.connack(version=MQTT_5), **ev),
        data(8, IN, 3_000, enc.publish("t", b"p"), **ev),
        data(9, OUT, 4_000, enc.publish("t", b"p"), **ev),  # forwarded to a subscriber, connection seen mid-way
    ])
    assert out == [] and b.stats.broker_side == 2


# -- robustness ----------------------------------------------------------------------------------------------------


def test_garbage_and_tls_are_counted_not_spans():
    b = builder()
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(200))
    noise = bytes(range(255, 0, -1))
    out = b.feed([data(1, IN if i % 2 == 0 else OUT, i * 1_000, hello if i % 2 == 0 else noise) for i in range(5)])
    assert out == [] and b.stats.unparsed == 5
    assert b.conns.get(1).opaque  # written off as opaque after three misses: later messages skip the parsers
    b.feed([CloseEvent(10_000, 100, 101, 7, 1, 0, 0, 0)])
    assert_clean(b)


def test_truncated_request_line_still_makes_a_span():
    b = builder()
    long_target = "/search?q=" + "x" * 400
    r = req(target=long_target)
    b.feed([data(1, IN, 1_000, r)])  # the snapshot holds 256 bytes: the request line is cut
    sp = b.feed([data(1, OUT, 2_000, resp(), prev_bytes=len(r), prev_end=1_500)])[0]
    assert sp.attributes["url.path"] == "/search" and sp.attributes["helix.http.request_truncated"] is True


def test_process_exit_mid_request_emits_incomplete_and_frees_state():
    b = builder()
    b.feed([ExecEvent(500, 100, 1, "api", "/usr/local/bin/api-server")])
    b.feed([data(1, IN, 1_000, req(), end=1_200), data(2, IN, 1_500, req(target="/other"), end=1_600)])
    assert b.connection_count == 2
    spans = b.feed([ExitEvent(9_000, 100, "api", 137)])
    assert len(spans) == 2
    for sp in spans:
        assert sp.status_code == StatusCode.ERROR and sp.attributes["helix.incomplete"] is True
        assert sp.end_ns == OFFSET + 9_000
        assert "exited" in sp.status_message
        assert sp.resource.as_dict()["process.executable.path"] == "/usr/local/bin/api-server"
    assert b.process_count == 0
    assert_clean(b)


def test_request_without_response_flushes_at_timeout():
    b = builder(response_timeout=5.0)
    b.feed([data(1, IN, 1_000, req(), end=2_000)])
    assert b.flush(2_000 + 4_999_999_999) == []
    spans = b.flush(2_000 + 5_000_000_000)
    assert len(spans) == 1 and spans[0].status_code == StatusCode.ERROR
    assert "no response" in spans[0].status_message
    assert b.pending_count == 0 and b.stats.incomplete == 1
    assert b.flush(10**13) == []


def test_response_end_estimated_when_message_end_never_comes():
    b = builder(message_end_timeout=1.0)
    b.feed([data(1, IN, 1_000, req())])
    b.feed([data(1, OUT, 2_000, resp(body=b"q" * 9000)[:256], size=256, end=2_500)])
    spans = b.flush(2_500 + 1_000_000_000)
    assert len(spans) == 1 and spans[0].end_ns == OFFSET + 2_500 and spans[0].attributes["helix.end_estimated"] is True


def test_ten_thousand_connections_leave_no_state():
    b = builder()
    spans = 0
    for i in range(10_000):
        r, s = req(target=f"/c{i}"), resp()
        spans += len(b.feed([
            data(i + 1, IN, i * 10_000, r, remote=Endpoint("10.1.0.1", 1024 + i % 60000), pid=100 + i % 7),
            data(i + 1, OUT, i * 10_000 + 500, s, size=len(s) + 10, prev_bytes=len(r), prev_end=i * 10_000 + 100, pid=100 + i % 7),
            CloseEvent(i * 10_000 + 900, 100 + i % 7, 101, 7, i + 1, len(s) + 10, i * 10_000 + 800, 0),
        ]))
    assert spans == 10_000
    assert_clean(b)
    assert b.stats.evicted_connections == 0


def test_connection_table_is_bounded_lru():
    b = builder(max_connections=100, max_processes=10)
    for i in range(150):
        b.feed([data(i + 1, IN, i, req(), pid=1000 + i)])
    assert b.connection_count == 100 and b.stats.evicted_connections == 50
    assert b.stats.pending_dropped == 50
    assert b.process_count == 10 and b.stats.evicted_processes == 140
    assert sum(len(v) for v in b.conns.by_pid.values()) == 100


def test_pending_requests_per_connection_are_capped():
    b = builder(max_pending_per_connection=4)
    b.feed([data(1, IN, 0, b"GET / HTTP/1.1\r\n\r\n" * 10)])  # ten whole requests inside the 256-byte snapshot
    assert b.pending_count == 4 and b.stats.pending_dropped == 6


# -- TCP connect, faults, files, clock ---------------------------------------------------------------------------------


def test_connect_spans():
    b = builder()
    ok = ConnectEvent(50_000, 200, "client", 11, CLI, SRV, latency_ns=30_000)
    bad = ConnectEvent(90_000, 200, "client", 12, CLI, Endpoint("10.0.0.99", 81), latency_ns=3_000_000, error=errno.ECONNREFUSED)
    s1, s2 = b.feed([ok, bad])
    assert (s1.name, s1.kind) == ("tcp.connect", SpanKind.CLIENT)
    assert (s1.start_ns, s1.end_ns) == (OFFSET + 20_000, OFFSET + 50_000)
    assert s1.attributes["network.peer.address"] == "10.0.0.5" and s1.attributes["network.transport"] == "tcp"
    assert s1.status_code == StatusCode.UNSET
    assert s2.status_code == StatusCode.ERROR and s2.attributes["error.type"] == "ECONNREFUSED"
    assert s2.status_message == "Connection refused"


def test_faults_become_span_events():
    b = builder()
    b.feed([data(1, IN, 1_000, req())])
    b.feed([TcpFaultEvent(1_500, FaultKind.RETRANSMIT, 1, SRV, CLI, 1)])
    sp = b.feed([data(1, OUT, 2_000, resp())])[0]
    assert [(e.name, e.time_ns, e.attributes["tcp.state"]) for e in sp.events] == [("tcp.retransmit", OFFSET + 1_500, "ESTABLISHED")]
    # A fault between exchanges waits for the next span on that connection.
    b.feed([TcpFaultEvent(3_000, FaultKind.RECEIVE_RESET, 1, SRV, CLI, 7)])
    b.feed([data(1, IN, 4_000, req(), prev_bytes=10, prev_end=2_500)])
    sp2 = b.feed([data(1, OUT, 5_000, resp(), prev_bytes=10, prev_end=4_500)])[0]
    assert [e.name for e in sp2.events] == ["tcp.reset.received"]
    # No state for that socket: counted.
    b.feed([TcpFaultEvent(6_000, FaultKind.SEND_RESET, 999, SRV, CLI, 7)])
    assert b.stats.faults_orphaned == 1 and b.stats.faults_attached == 2


def test_slow_file_io_spans():
    b = builder()
    b.feed([ExecEvent(1, 400, 1, "logger", "/usr/bin/logger-daemon")])
    sp = b.feed([FileIoEvent(10_000, 60_000_000, 400, 401, FileOp.FSYNC, 3, 0, "var/log/app.log")])[0]
    assert (sp.name, sp.kind) == ("file.fsync", SpanKind.INTERNAL)
    assert sp.duration_ns == 60_000_000 - 10_000
    assert sp.attributes["file.path"] == "var/log/app.log" and sp.attributes["thread.id"] == 401
    assert sp.resource.service_name == "logger"


def test_long_comm_replaced_by_exec_name():
    b = builder()
    b.feed([ExecEvent(1, 401, 1, "inventory-servi", "/opt/app/inventory-service")])
    sp = b.feed([FileIoEvent(1, 2, 401, 401, FileOp.WRITE, 3, 10, "x")])[0]
    assert sp.resource.service_name == "inventory-service"


def test_clock_resync():
    clock = FixedClock(offset_ns=1_000, now_ns=0)
    b = SpanBuilder(SpanBuilderConfig(clock_resync=10.0, host_name="h"), clock)
    assert b.feed([ConnectEvent(100, 1, "c", 1, CLI, SRV, 10)])[0].end_ns == 1_100
    clock.offset_ns = 5_000
    clock.now_ns = 9_000_000_000
    assert b.feed([ConnectEvent(100, 1, "c", 1, CLI, SRV, 10)])[0].end_ns == 1_100  # not yet due
    clock.now_ns = 10_000_000_000
    assert b.feed([ConnectEvent(100, 1, "c", 1, CLI, SRV, 10)])[0].end_ns == 5_100


def test_system_clock_offset_matches_time_module():
    offset = SystemClock().wall_offset_ns()
    direct = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert abs(offset - direct) < 50_000_000


# -- hostile input -----------------------------------------------------------------------------------------------------

_payloads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([req(), resp(), resp(500), enc.connect("x"), enc.publish("t", b"p"), b"HTTP/1.1 200", b"GET /"]),
    st.builds(lambda a, n: a[:n], st.sampled_from([req(body=b"abc"), resp(body=b"x" * 50), enc.publish("t/t", b"x" * 40, qos=1)]),
              st.integers(0, 100)),
)
_events = st.lists(
    st.one_of(
        st.builds(lambda sock, d, ts, p, size, pb, pe, role: data(sock, d, ts, p, size=size, prev_bytes=pb, prev_end=pe, role=role),
                  st.integers(1, 4), st.sampled_from([IN, OUT]), st.integers(0, 10**6), _payloads, st.integers(0, 10**6),
                  st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from(list(Role))),
        st.builds(lambda sock, d, ts, off, p: DataMoreEvent(ts, ts + 10, sock, 100, 101, d, off, p),
                  st.integers(1, 4), st.sampled_from([IN, OUT]), st.integers(0, 10**6), st.integers(0, 300), _payloads),
        st.builds(lambda sock, ts: CloseEvent(ts, 100, 101, 7, sock, 10, ts, 0), st.integers(1, 4), st.integers(0, 10**6)),
        st.builds(lambda sock, k: TcpFaultEvent(1, k, sock, SRV, CLI, 1), st.integers(1, 6), st.sampled_from(list(FaultKind))),
        st.just(ExitEvent(5, 100, "api", 0)),
    ),
    max_size=40,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_events)
def test_hostile_event_sequences_never_raise_and_state_drains(events):
    b = builder(max_connections=3)
    b.feed(events)
    b.flush(10**15)
    assert b.stats.internal_errors == 0
    b.feed([CloseEvent(0, 100, 101, 7, s, 0, 0, 0) for s in range(1, 7)])
    assert_clean(b)


# -- bytes from real clients and servers -------------------------------------------------------------------------------


def _messages(records, index):
    """Coalesce one relayed connection's recorded segments into direction runs: what the probes call messages."""
    out: list[tuple[str, bytes]] = []
    for i, name, chunk in records:
        if i != index:
            continue
        if out and out[-1][0] == name:
            out[-1] = (name, out[-1][1] + chunk)
        else:
            out.append((name, chunk))
    return out


def _replay(b, msgs, *, server_side: bool, sock=1, step=1_000_000, **kw):
    """Turn messages into the DataEvents the probes would emit, as seen by the server or the client process."""
    spans = []
    prev_bytes = prev_end = 0
    for n, (name, raw) in enumerate(msgs):
        ingress = (name == "up") == server_side
        ts = (n + 1) * step
        spans += b.feed([data(sock, IN if ingress else OUT, ts, raw, end=ts + 1000, size=len(raw), prev_bytes=prev_bytes,
                              prev_end=prev_end, role=Role.SERVER if server_side else Role.CLIENT, **kw)])
        prev_bytes, prev_end = len(raw), ts + 1000
    spans += b.feed([CloseEvent(len(msgs) * step + step, 100, 101, 7, sock, prev_bytes, prev_end, 0)])
    return spans


def test_real_http_keep_alive_exchange():
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            body = b"missing" if self.path.startswith("/missing") else b"hello " + self.path.encode()
            self.send_response(404 if self.path.startswith("/missing") else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    relay = Relay(server.server_address[:2])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=5)
        for path, tp in (("/a?x=1", TP), ("/missing", None), ("/c", None)):
            conn.request("GET", path, headers={"traceparent": tp} if tp else {})
            conn.getresponse().read()
        conn.close()
        time.sleep(0.2)
    finally:
        server.shutdown()
        relay.close()
    msgs = _messages(relay.records, 0)
    server_spans = _replay(builder(), msgs, server_side=True)
    client_spans = _replay(builder(), msgs, server_side=False, local=CLI, remote=SRV)
    for spans, kind in ((server_spans, SpanKind.SERVER), (client_spans, SpanKind.CLIENT)):
        assert [(sp.kind, sp.attributes["url.path"], sp.attributes["http.response.status_code"]) for sp in spans] == [
            (kind, "/a", 200), (kind, "/missing", 404), (kind, "/c", 200)]
        assert spans[0].trace_id.hex() == TID and spans[0].parent_span_id.hex() == SID
        assert spans[0].attributes["url.query"] == "x=1"
        assert spans[0].attributes["server.address"] == "127.0.0.1"  # from the Host header http.client sent
    assert server_spans[1].status_code == StatusCode.UNSET and client_spans[1].status_code == StatusCode.ERROR


def test_real_paho_publish_through_mosquitto(mosquitto):
    relay = Relay(("127.0.0.1", mosquitto.port))
    try:
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pub5", protocol=paho.MQTTv5)
        pub.connect("127.0.0.1", relay.port)
        pub.loop_start()
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("traceparent", TP)]
        pub.publish("plant/press/9", b"cycle", qos=1, properties=props).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        time.sleep(0.2)
    finally:
        relay.close()
    spans = _replay(builder(), _messages(relay.records, 0), server_side=False, local=CLI, remote=BROKER, comm="python3")
    assert [(sp.name, sp.kind) for sp in spans] == [("publish plant/press/9", SpanKind.PRODUCER)]
    sp = spans[0]
    assert sp.trace_id.hex() == TID and sp.parent_span_id.hex() == SID
    assert sp.attributes["messaging.client.id"] == "pub5" and sp.attributes["messaging.message.body.size"] == 5
    assert sp.attributes["messaging.mqtt.qos"] == 1


def test_config_rejects_nonsense_with_the_key_named():
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match="max_connections"):
        SpanBuilderConfig(max_connections=0)
    with pytest.raises(ConfigError, match="response_timeout"):
        SpanBuilderConfig(response_timeout=-1)


# -- messages read in pieces: top-up records and idle-gap message starts --------------------------------------------
#
# `kernel_view` restates the rules of bpf/io.bpf.c (sock_done) so that the tests below feed the builder exactly the
# records the probes would send for a sequence of syscalls; tests/bpf/test_kernel_spans.py checks the real thing.

GAP = 5_000_000  # sources.ebpf.message_gap, the probes' default


def kernel_view(sock, syscalls, *, payload_bytes=256, gap_ns=GAP, **kw):
    """DataEvents and DataMoreEvents for syscalls [(direction, bytes, sys_enter, sys_exit)] on one connection."""
    out = []
    direction, total, last_end = None, 0, 0
    for d, chunk, ts, end in syscalls:
        if d == direction and not (gap_ns and end - last_end > gap_ns):
            offset, total, last_end = total, total + len(chunk), end
            if offset < payload_bytes:  # top-up until payload_bytes of the message are out, then counting only
                out.append(DataMoreEvent(ts, end, sock, kw.get("pid", 100), kw.get("tid", 101), d, offset,
                                         chunk[:payload_bytes - offset]))
            continue
        prev_bytes, prev_end = (total, last_end) if direction is not None else (0, 0)
        direction, total, last_end = d, len(chunk), end
        out.append(data(sock, d, ts, chunk[:payload_bytes], end=end, size=len(chunk), prev_bytes=prev_bytes,
                        prev_end=prev_end, **kw))
    return out


class Wire:
    """Syscalls on one connection, written as a client library does them, with a clock."""

    def __init__(self, t=1_000_000):
        self.t = t
        self.calls = []

    def io(self, direction, *chunks, pause=0, step=2_000):
        """Syscalls moving `chunks` one after another, `pause` ns after the previous syscall."""
        self.t += pause
        for c in chunks:
            self.calls.append((direction, c, self.t, self.t + 1_000))
            self.t += step
        return self

    def read_like_libmosquitto(self, pkt, pause=0):
        """The command byte, each remaining-length byte, then the rest: libmosquitto, paho and the broker."""
        n = 2
        while pkt[n - 1] & 0x80:
            n += 1
        return self.io(IN, pkt[:1], *[pkt[i:i + 1] for i in range(1, n)], pkt[n:], pause=pause)


def suback(packet_id=1, version=MQTT_5):
    return enc.packet(9, 0, packet_id.to_bytes(2, "big") + (b"\x00" if version == MQTT_5 else b"") + b"\x00")


def traced_publish(i, topic="plant/t", version=MQTT_5, payload=b"21.5"):
    tp = f"00-{TID[:-1]}{i:x}-{SID}-01"
    return enc.publish(topic, payload, user=[("traceparent", tp)] if version == MQTT_5 else [], version=version)


SUB = dict(role=Role.CLIENT, local=CLI, remote=BROKER, comm="mosquitto_sub")


def subscriber_session(version=MQTT_5):
    """CONNECT, CONNACK, SUBSCRIBE, SUBACK as a subscriber does them, the acks read byte by byte."""
    w = Wire()
    w.io(OUT, enc.connect("sub-1", version))
    w.read_like_libmosquitto(enc.connack(version=version), pause=300_000)
    w.io(OUT, enc.subscribe(1, [("plant/#", 0)], version), pause=100_000)
    w.read_like_libmosquitto(suback(version=version), pause=300_000)
    return w


def consumers(spans):
    return [s for s in spans if s.kind == SpanKind.CONSUMER]


def test_mqtt5_publish_read_byte_by_byte_after_a_gap():
    w = subscriber_session()
    w.read_like_libmosquitto(traced_publish(7), pause=40_000_000)
    first_read_end, last_read_end = w.calls[-3][3], w.calls[-1][3]
    b = builder()
    (rcv,) = consumers(b.feed(kernel_view(9, w.calls, **SUB)))
    assert rcv.name == "receive plant/t" and rcv.trace_id.hex() == TID[:-1] + "7" and rcv.parent_span_id.hex() == SID
    # A receive starts when the read of its first byte returned (not when it began waiting) and ends with its last.
    assert (rcv.start_ns, rcv.end_ns) == (OFFSET + first_read_end, OFFSET + last_read_end)
    a = rcv.attributes
    assert a["messaging.operation.type"] == "receive" and a["messaging.message.body.size"] == 4
    assert a["network.protocol.version"] == "5" and a["messaging.client.id"] == "sub-1"
    assert "helix.mqtt.truncated" not in a
    assert b.stats.topped_up >= 3 and b.stats.internal_errors == 0 and b.stats.unparsed == 0


def test_mqtt311_publish_read_byte_by_byte():
    w = subscriber_session(MQTT_311)
    w.read_like_libmosquitto(traced_publish(1, "line/1", MQTT_311, b"\x00\x01\x02"), pause=40_000_000)
    b = builder()
    (rcv,) = consumers(b.feed(kernel_view(9, w.calls, **SUB)))
    assert rcv.name == "receive line/1" and rcv.attributes["network.protocol.version"] == "3.1.1"
    assert rcv.attributes["messaging.message.body.size"] == 3 and rcv.attributes["helix.context_from"] == "none"


def test_three_qos0_deliveries_after_suback_each_after_a_gap():
    w = subscriber_session()
    for i in range(3):
        w.read_like_libmosquitto(traced_publish(i, f"plant/{i}"), pause=20_000_000)
    rcv = consumers(builder().feed(kernel_view(9, w.calls, **SUB)))
    assert [s.name for s in rcv] == ["receive plant/0", "receive plant/1", "receive plant/2"]
    assert [s.trace_id.hex() for s in rcv] == [TID[:-1] + str(i) for i in range(3)]


def test_three_qos0_deliveries_back_to_back_in_one_message():
    """No direction change and no gap: one message to the probes, whose top-ups carry all three packets."""
    w = subscriber_session()
    pkts = [traced_publish(i, f"p/{i}", payload=b"") for i in range(3)]
    assert len(suback()) + sum(map(len, pkts)) <= 256, "all three inside one snapshot"
    w.read_like_libmosquitto(pkts[0], pause=1_000_000)  # 1 ms after the SUBACK: the same message
    for pk in pkts[1:]:
        w.read_like_libmosquitto(pk)
    records = kernel_view(9, w.calls, **SUB)
    assert sum(1 for r in records if isinstance(r, DataEvent) and r.direction == IN) == 2  # CONNACK, SUBACK+publishes
    b = builder()
    spans = []
    for r in records:  # one at a time: each delivery is a span as soon as its last byte is in
        got = consumers(b.feed([r]))
        if got:
            assert isinstance(r, DataMoreEvent) and r.end_ns == got[0].end_ns - OFFSET
        spans += got
    assert [s.trace_id.hex() for s in spans] == [TID[:-1] + str(i) for i in range(3)]
    assert len({s.start_ns for s in spans}) == 3


def test_several_publishes_in_one_read_each_become_a_span():
    w = subscriber_session()
    w.io(IN, b"".join(traced_publish(i, payload=b"") for i in range(2)), pause=20_000_000)
    rcv = consumers(builder().feed(kernel_view(9, w.calls, **SUB)))
    assert [s.trace_id.hex() for s in rcv] == [TID[:-1] + "0", TID[:-1] + "1"]
    assert rcv[0].end_ns == rcv[1].end_ns  # one read returned both


def test_a_stream_longer_than_the_snapshot_stops_at_payload_bytes():
    w = subscriber_session()
    w.read_like_libmosquitto(traced_publish(0, payload=b"x" * 100), pause=20_000_000)
    begin = w.calls[-4][2]  # command byte, two remaining-length bytes, the rest
    w.read_like_libmosquitto(traced_publish(1, payload=b"x" * 100))  # its properties lie across byte 256
    w.read_like_libmosquitto(traced_publish(2, payload=b"x" * 100))  # beyond the snapshot: the probes send nothing
    records = kernel_view(9, w.calls, **SUB)
    assert sum(len(r.payload) for r in records if r.ts_ns >= begin) == 256
    b = builder()
    rcv = consumers(b.feed(records + [CloseEvent(10**10, 100, 101, 7, 9, 0, 0, 0)]))
    assert rcv[0].trace_id.hex() == TID[:-1] + "0" and "helix.mqtt.truncated" not in rcv[0].attributes
    # The second is cut inside its properties: a span marked truncated, without the context it could not read.
    assert len(rcv) == 2 and rcv[1].attributes["helix.mqtt.truncated"] is True
    assert rcv[1].attributes["helix.context_from"] == "none"
    assert_clean(b)


def test_broker_reading_byte_by_byte_makes_no_spans():
    w = Wire()
    w.read_like_libmosquitto(enc.connect("pub", MQTT_5))
    w.io(OUT, enc.connack(version=MQTT_5))
    w.read_like_libmosquitto(traced_publish(3), pause=10_000_000)
    b = builder()
    assert b.feed(kernel_view(8, w.calls, role=Role.SERVER, local=BROKER, remote=CLI, comm="mosquitto")) == []
    assert b.stats.broker_side == 1


def test_a_lost_top_up_stops_assembly_without_guessing():
    w = subscriber_session()
    w.read_like_libmosquitto(traced_publish(5), pause=20_000_000)
    records = kernel_view(9, w.calls, **SUB)
    del records[-2]  # the remaining-length byte of the publish never arrived (ring buffer full)
    b = builder()
    spans = b.feed(records) + b.flush(10**12)
    assert consumers(spans) == [] and b.stats.more_gaps == 1 and b.stats.internal_errors == 0


def test_top_ups_after_a_whole_http_head_are_ignored():
    w = Wire()
    s = resp(body=b"ok")
    w.io(IN, req()).io(OUT, s[:-2], s[-2:], pause=100_000)  # the head, then the body written apart
    b = builder()
    b.feed(kernel_view(1, w.calls))
    assert b.stats.late_more == 1 and b.stats.topped_up == 0


def test_last_response_of_a_connection_ends_when_its_body_is_through():
    """Head and body written apart (http.server does): the exchange leaves with the body's last syscall, exact,
    not 2 s later with an end estimated at the head, although no next message or close follows."""
    s = resp(body=b"ok")
    w = Wire().io(IN, req()).io(OUT, s[:-2], s[-2:], pause=100_000)
    b = builder()
    (sp,) = b.feed(kernel_view(1, w.calls))
    assert sp.kind == SpanKind.SERVER and sp.end_ns == OFFSET + w.calls[-1][3]
    assert "helix.end_estimated" not in sp.attributes and sp.attributes["http.response.body.size"] == 2
    assert b.stats.ended_by_length == 1 and not b.conns.waiting


def test_client_reading_the_body_after_a_pause_ends_there():
    """The client read the head, then the body in a syscall past the idle gap: a new kernel message."""
    s = resp(body=b"z" * 40)
    w = Wire().io(OUT, req()).io(IN, s[:-40], pause=200_000).io(IN, s[-40:], pause=40_000_000)
    records = kernel_view(2, w.calls, role=Role.CLIENT, local=CLI, remote=SRV, comm="client")
    assert sum(1 for r in records if isinstance(r, DataEvent) and r.direction == IN) == 2
    b = builder()
    (sp,) = b.feed(records)
    assert sp.kind == SpanKind.CLIENT and sp.end_ns == OFFSET + w.calls[-1][3]
    assert sp.attributes["http.response.body.size"] == 40


def test_response_short_of_its_length_waits_for_the_message_end():
    s = resp(body=b"q" * 100)
    w = Wire().io(IN, req()).io(OUT, s[:-100], s[-100:-10], pause=100_000)
    b = builder()
    assert b.feed(kernel_view(1, w.calls)) == []  # ten bytes of the body still to come
    (sp,) = b.feed([CloseEvent(w.t + 5_000, 100, 101, 7, 1, len(s), w.t + 4_000, 0)])
    assert sp.end_ns == OFFSET + w.t + 4_000 and b.stats.ended_by_length == 0


def test_chunked_response_is_not_ended_by_a_length():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    w = Wire().io(IN, req()).io(OUT, head, b"5\r\nhello\r\n", pause=100_000)
    b = builder()
    assert b.feed(kernel_view(1, w.calls)) == [] and b.stats.ended_by_length == 0


def test_http_head_written_in_pieces_is_assembled():
    head = req(headers=[f"traceparent: {TP}"])
    w = Wire().io(OUT, head[:16], head[16:60], head[60:])
    w.io(IN, resp(), pause=500_000)
    spans = builder().feed(kernel_view(3, w.calls, role=Role.CLIENT, local=CLI, remote=SRV, comm="client"))
    (sp,) = spans
    assert sp.kind == SpanKind.CLIENT and sp.trace_id.hex() == TID and sp.attributes["url.path"] == "/api/orders"
    assert sp.start_ns == OFFSET + w.calls[0][2] and sp.end_ns == OFFSET + w.calls[-1][3]


def test_partial_head_is_decoded_at_the_deadline_when_no_more_comes():
    b = builder(message_end_timeout=1.0)
    head = req(headers=[f"traceparent: {TP}"])
    assert b.feed([data(5, IN, 1_000, head[:30])]) == []
    assert b.conns.partials
    b.flush(1_000 + 2_000_000_000)
    assert not b.conns.partials


def test_http_body_cut_by_an_idle_gap_keeps_pairing_and_durations():
    """A slow response body: the pause inside it starts a new "message" to the probes; the exchange goes on."""
    w = Wire()
    body = b"x" * 5000
    r1 = resp(body=body)
    w.io(IN, req(target="/slow"))
    w.io(OUT, r1[:300], r1[300:2000], pause=1_000_000)
    w.io(OUT, r1[2000:], pause=30_000_000)  # 30 ms later: past the idle gap
    body_end = w.calls[-1][3]
    w.io(IN, req(target="/next"), pause=2_000_000)
    w.io(OUT, resp(404, b"no"), pause=1_000_000)
    records = kernel_view(5, w.calls, role=Role.SERVER)
    assert sum(1 for r in records if isinstance(r, DataEvent) and r.direction == OUT) == 3  # the gap split it
    b = builder()
    spans = b.feed(records)
    spans += b.feed([CloseEvent(w.t, 100, 101, 7, 5, 0, 0, 0)])
    slow, nxt = spans
    assert slow.attributes["url.path"] == "/slow" and slow.attributes["http.response.status_code"] == 200
    assert slow.end_ns == OFFSET + body_end, "the exchange ends with its body, not at the gap"
    assert slow.attributes["http.response.body.size"] == 5000
    assert nxt.attributes["url.path"] == "/next" and nxt.attributes["http.response.status_code"] == 404
    assert nxt.start_ns == OFFSET + w.calls[-2][3] and nxt.end_ns == OFFSET + w.calls[-1][3]
    assert b.stats.split_messages == 1 and b.stats.unmatched_responses == 0 and b.stats.unparsed == 0
    assert_clean(b)


def test_http_request_body_cut_by_an_idle_gap_on_the_server():
    w = Wire()
    r = req("POST", "/upload", body=b"y" * 3000)
    w.io(IN, r[:256], pause=0)
    w.io(IN, r[256:], pause=50_000_000)  # the client paused mid-body
    w.io(OUT, resp(201, b""), pause=1_000_000)
    b = builder()
    (sp,) = b.feed(kernel_view(6, w.calls, role=Role.SERVER))
    assert sp.attributes["http.response.status_code"] == 201 and sp.attributes["http.request.body.size"] == 3000
    assert sp.start_ns == OFFSET + w.calls[0][3] and sp.end_ns == OFFSET + w.calls[-1][3]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=6), min_size=3, max_size=3),
       st.sampled_from([MQTT_5, MQTT_311]))
def test_any_read_pattern_of_spaced_deliveries_gives_one_span_each(cuts, version):
    """However a client splits its reads, each delivery after an idle gap is one receive span with its context."""
    w = subscriber_session(version)
    for i, sizes in enumerate(cuts):
        pkt = traced_publish(i, f"t/{i}", version)
        chunks, pos = [], 0
        for n in sizes:
            if pos < len(pkt):
                chunks.append(pkt[pos:pos + n])
                pos += n
        if pos < len(pkt):
            chunks.append(pkt[pos:])
        w.io(IN, *chunks, pause=20_000_000)
    b = builder()
    rcv = consumers(b.feed(kernel_view(9, w.calls, **SUB)) + b.flush(10**12))
    assert [s.name for s in rcv] == [f"receive t/{i}" for i in range(3)]
    if version == MQTT_5:
        assert [s.trace_id.hex() for s in rcv] == [TID[:-1] + str(i) for i in range(3)]
    assert b.stats.internal_errors == 0 and b.stats.unparsed == 0


# -- kernel sampling --------------------------------------------------------------------------------------------------


def test_kernel_randomness_becomes_the_traces_randomness():
    from edge.sampler.consistent import ConsistentSampler, randomness

    b = builder()
    rv = 0x9A0B1C2D3E4F50
    spans = b.feed([dataclasses_replace(data(1, IN, 1000, req()), rv=rv), data(1, OUT, 5000, resp())])
    [s] = spans
    assert s.attributes["helix.context_from"] == "none" and s.parent_span_id == b""
    assert s.trace_state == "ot=rv:9a0b1c2d3e4f50"
    assert int.from_bytes(s.trace_id[9:], "big") == rv == randomness(s.trace_id, s.trace_state)
    assert ConsistentSampler(0.5).keeps(s.trace_id, s.trace_state)
    assert not ConsistentSampler(0.25).keeps(s.trace_id, s.trace_state)
    # A request with wire context keeps the wire's trace and tracestate: the kernel reports no R for those.
    [w] = b.feed([dataclasses_replace(data(2, IN, 9000, req(headers=(f"traceparent: {TP}",))), rv=rv),
                  data(2, OUT, 9500, resp())])
    assert w.trace_id.hex() == TID and w.trace_state == ""
    # Without kernel randomness nothing is added.
    [n] = b.feed([data(3, IN, 10000, req()), data(3, OUT, 10500, resp())])
    assert n.trace_state == ""


def dataclasses_replace(ev, **changes):
    import dataclasses

    return dataclasses.replace(ev, **changes)


def test_service_name_is_the_one_spans_get():
    b = builder()
    [s] = b.feed([data(1, IN, 1000, req(), pid=321, comm="inventory"), data(1, OUT, 5000, resp(), pid=321,
                                                                         comm="inventory")])
    assert b.service_name(321, "inventory") == s.resource.service_name == "inventory"
    b.feed([ExecEvent(1, 654, 1, "a-very-long-com", "/usr/bin/a-very-long-command-name")])
    assert b.service_name(654, "a-very-long-com") == "a-very-long-command-name"


def test_a_loopback_wakeup_byte_is_not_taken_for_an_mqtt_publish():
    # paho wakes its network loop through a loopback TCP socket pair by writing b"0" (0x30, a PUBLISH header
    # byte); two wakeups read at once, b"00", parse as the start of a PUBLISH of 48 bytes. No span from that.
    b = builder()
    a_end, z_end = Endpoint("127.0.0.1", 40100), Endpoint("127.0.0.1", 40101)
    out = []
    for i in range(5):
        out += b.feed([
            data(9, OUT, 1_000 + i * 10_000, b"00", role=Role.CLIENT, local=a_end, remote=z_end, prev_bytes=2 if i else 0,
                 prev_end=(i * 10_000 - 5_000) if i else 0),
            data(10, IN, 1_200 + i * 10_000, b"00", role=Role.SERVER, local=z_end, remote=a_end, prev_bytes=2 if i else 0,
                 prev_end=(i * 10_000 - 4_800) if i else 0),
        ])
    out += b.flush(10**12)
    assert [s.name for s in out] == []
    # A whole PUBLISH on a connection first seen mid-stream (no CONNECT, no broker port) is evidence enough.
    sp = b.feed([data(11, IN, 200_000, enc.publish("cmd/x", b"go"), role=Role.CLIENT, local=a_end,
                      remote=Endpoint("127.0.0.1", 40999))])
    assert [s.name for s in sp] == ["receive cmd/x"]
