"""HTTP/1.x exchanges from kernel events: pairing, timing, trace context, bodies read in pieces."""
from __future__ import annotations

import http.client
import http.server
import threading
import time

import pytest

from edge.model import Source, SpanKind, StatusCode
from edge.sources.ebpf.events import CloseEvent, DataEvent, Endpoint, Role
from edge.sources.ebpf.spans import SCOPE
from tests.edge.protocols.relay import Relay
from ._helpers import (
    OFFSET, SRV, CLI, TID, SID, TP, IN, OUT, builder, data, req, resp, assert_clean, _messages, _replay,
    kernel_view, Wire,
)


def test_each_exchange_names_its_own_host():
    # Host values are split once and remembered: alternating hosts on one keep-alive connection keep their own names.
    b = builder()
    spans = []
    prev = 0
    hosts = ["a.local:81", "b.local", "a.local:81", "[fd00::1]:8443", "b.local", ""]
    for i, host in enumerate(hosts):
        r, s = req(host=host), resp()
        spans += b.feed([data(1, IN, 10_000 * i + 1_000, r, prev_bytes=prev, prev_end=10_000 * i if i else 0)])
        spans += b.feed([data(1, OUT, 10_000 * i + 5_000, s, prev_bytes=len(r), prev_end=10_000 * i + 2_000)])
        prev = len(s)
    got = [(sp.attributes["server.address"], sp.attributes["server.port"]) for sp in spans]
    assert got == [("a.local", 81), ("b.local", 8080), ("a.local", 81), ("fd00::1", 8443), ("b.local", 8080),
                   ("10.0.0.5", 8080)]


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


def test_truncated_request_line_still_makes_a_span():
    b = builder()
    long_target = "/search?q=" + "x" * 400
    r = req(target=long_target)
    b.feed([data(1, IN, 1_000, r)])  # the snapshot holds 256 bytes: the request line is cut
    sp = b.feed([data(1, OUT, 2_000, resp(), prev_bytes=len(r), prev_end=1_500)])[0]
    assert sp.attributes["url.path"] == "/search" and sp.attributes["helix.http.request_truncated"] is True


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


def test_pending_requests_per_connection_are_capped():
    b = builder(max_pending_per_connection=4)
    b.feed([data(1, IN, 0, b"GET / HTTP/1.1\r\n\r\n" * 10)])  # ten whole requests inside the 256-byte snapshot
    assert b.pending_count == 4 and b.stats.pending_dropped == 6


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
