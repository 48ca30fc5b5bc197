from __future__ import annotations

import http.client
import http.server
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import accel
from edge.protocols.http1 import (
    chunked_body_end,
    looks_like_http,
    parse_request,
    parse_requests,
    parse_response,
    parse_responses,
)
from tests.edge._implementations import IMPLEMENTATIONS

GET = b"GET /api/orders/42?expand=items&x=1 HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n"


def test_get_request_fields():
    req = parse_request(GET)
    assert req is not None
    assert (req.method, req.target, req.path, req.query, req.version) == (
        "GET", "/api/orders/42?expand=items&x=1", "/api/orders/42", "expand=items&x=1", "1.1")
    assert req.host == "shop.local:8080"
    assert req.headers["user-agent"] == "curl/8.5"
    assert not req.truncated
    assert req.head_length == len(GET)
    assert req.length == len(GET)  # no body without Content-Length or Transfer-Encoding
    assert req.body_size == 0


def test_header_names_lower_cased_first_value_wins():
    req = parse_request(b"GET / HTTP/1.0\r\nX-Thing: one\r\nx-thing: two\r\nContent-Length: 0\r\n\r\n")
    assert req is not None
    assert req.headers["x-thing"] == "one"
    assert req.version == "1.0"
    assert req.content_length == 0


def test_post_with_body_length():
    data = b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    req = parse_request(data)
    assert req is not None
    assert req.content_length == 11
    assert req.length == len(data)
    assert req.body_size == 11


def test_body_beyond_snapshot_still_has_length():
    head = b"PUT /blob HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"
    req = parse_request(head + b"x" * 50)
    assert req is not None and not req.truncated
    assert req.length == len(head) + 100000


def test_truncated_inside_headers():
    req = parse_request(GET[:60])
    assert req is not None
    assert req.truncated
    assert req.path == "/api/orders/42"
    assert req.head_length is None and req.length is None
    # The partial last line is not reported as a header.
    assert "user-agent" not in req.headers or req.headers["user-agent"] == "curl/8.5"


def test_truncated_inside_request_line():
    req = parse_request(b"GET /a/very/long/path/that/was/cu")
    assert req is not None and req.truncated
    assert req.path == "/a/very/long/path/that/was/cu"
    assert req.version == ""
    assert parse_request(b"GET /x HTTP/1.") is not None
    assert parse_request(b"GET /x FOO") is None


def test_absolute_and_authority_targets():
    req = parse_request(b"GET http://user@example.com:81/p/q?z=1 HTTP/1.1\r\n\r\n")
    assert req is not None
    assert (req.path, req.query, req.host) == ("/p/q", "z=1", "example.com:81")
    conn = parse_request(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert conn is not None and conn.path == "" and conn.host == "example.com:443"
    star = parse_request(b"OPTIONS * HTTP/1.1\r\n\r\n")
    assert star is not None and star.path == "*"


def test_bare_lf_line_endings_are_tolerated():
    req = parse_request(b"GET /lf HTTP/1.1\nHost: h\n\n")
    assert req is not None and not req.truncated and req.host == "h"


def test_obs_fold_continues_value():
    req = parse_request(b"GET / HTTP/1.1\r\nX-Long: part one\r\n  part two\r\n\r\n")
    assert req is not None and req.headers["x-long"] == "part one part two"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),  # TLS ClientHello
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 preface
        b"FETCH / HTTP/1.1\r\n\r\n",  # unknown method
        b"get / HTTP/1.1\r\n\r\n",  # methods are case-sensitive
        b"GET / HTTP/2\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",  # control byte in a value
        b"GET  HTTP/1.1\r\n\r\n",
        b"\x30\x1a\x00\x04test",  # MQTT PUBLISH
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ],
)
def test_garbage_is_rejected(data):
    assert parse_request(data) is None
    assert parse_response(data) is None
    assert parse_requests(data) == []


def test_pipelined_requests():
    r1 = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
    r2 = b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    r3 = b"GET /three HTTP/1.1\r\nHost: a\r\n\r\n"
    reqs = parse_requests(r1 + r2 + r3)
    assert [r.path for r in reqs] == ["/one", "/two", "/three"]
    assert [r.offset for r in reqs] == [0, len(r1), len(r1) + len(r2)]
    # Cut inside the third head: the third is reported truncated, the first two whole.
    cut = parse_requests((r1 + r2 + r3)[: len(r1) + len(r2) + 8])
    assert [r.path for r in cut] == ["/one", "/two", "/thr"]
    assert cut[2].truncated and not cut[1].truncated


def test_pipeline_stops_when_body_leaves_snapshot():
    r1 = b"POST /big HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"a" * 20
    assert [r.path for r in parse_requests(r1)] == ["/big"]


def test_chunked_request_walk():
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n"
    head = b"POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    nxt = b"GET /after HTTP/1.1\r\n\r\n"
    reqs = parse_requests(head + body + nxt)
    assert reqs[0].chunked and reqs[0].length == len(head) + len(body)
    assert [r.path for r in reqs] == ["/c", "/after"]


def test_chunked_body_end_edges():
    assert chunked_body_end(b"0\r\n\r\n", 0) == 5
    assert chunked_body_end(b"3\r\nabc\r\n", 0) is None  # terminator not in the snapshot
    assert chunked_body_end(b"zz\r\n", 0) is None
    assert chunked_body_end(b"-1\r\n", 0) is None
    assert chunked_body_end(b"3\r\nabcXY0\r\n\r\n", 0) is None  # missing CRLF after data


def test_response_fields_and_lengths():
    data = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot found"
    resp = parse_response(data)
    assert resp is not None
    assert (resp.status, resp.reason, resp.version) == (404, "Not Found", "1.1")
    assert resp.length == len(data) and resp.body_size == 9
    assert parse_response(b"HTTP/1.0 200\r\n\r\n").reason == ""  # type: ignore[union-attr]


def test_response_without_length_runs_to_close():
    resp = parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>")
    assert resp is not None and resp.length is None


def test_head_and_no_body_statuses():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    assert parse_response(head, "HEAD").length == len(head)  # type: ignore[union-attr]
    assert parse_response(head, "GET").length == len(head) + 1234  # type: ignore[union-attr]
    nc = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n"
    assert parse_response(nc).length == len(nc)  # type: ignore[union-attr]


def test_interim_then_final_responses():
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    resps = parse_responses(data, ["POST"])
    assert [r.status for r in resps] == [100, 201]
    assert resps[0].interim and not resps[1].interim


def test_pipelined_responses_with_head_method():
    a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"  # answers HEAD: no body follows
    b = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert [r.offset for r in parse_responses(a + b, ["HEAD", "GET"])] == [0, len(a)]


def test_truncated_status_line():
    assert parse_response(b"HTTP/1.1 50") is None
    resp = parse_response(b"HTTP/1.1 503 Service Unav")
    assert resp is not None and resp.truncated and resp.status == 503


def test_looks_like_http():
    assert looks_like_http(GET)
    assert looks_like_http(b"HTTP/1.1 200 OK\r\n")
    assert not looks_like_http(b"\x16\x03\x01")
    assert not looks_like_http(b"GETX / HTTP/1.1")


def test_parses_bytes_from_real_client_and_server():
    """Bytes a real http.client sent to a real http.server, captured on the wire by a relay."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    listener = socket.create_server(("127.0.0.1", 0))
    up, down = bytearray(), bytearray()

    def relay():
        client, _ = listener.accept()
        upstream = socket.create_connection(server.server_address[:2])
        client.settimeout(2)
        upstream.settimeout(2)
        # http.client sends the head and the body in separate writes: relay until the whole request is in.
        while b"\r\n\r\n" not in up or not up.endswith(b'{"a": 1}'):
            chunk = client.recv(65536)
            if not chunk:
                break
            up.extend(chunk)
        upstream.sendall(bytes(up))
        while len(down) < 20 or b"\r\n\r\n" not in down or not down.endswith(b'{"a": 1}'):
            chunk = upstream.recv(65536)
            if not chunk:
                break
            down.extend(chunk)
        client.sendall(bytes(down))
        client.close()
        upstream.close()

    t = threading.Thread(target=relay, daemon=True)
    t.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=5)
        conn.request("POST", "/echo?q=1", body=b'{"a": 1}', headers={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"})
        assert conn.getresponse().read() == b'{"a": 1}'
        t.join(5)
    finally:
        server.shutdown()
        listener.close()
    req = parse_request(bytes(up))
    assert req is not None and (req.method, req.path, req.query) == ("POST", "/echo", "q=1")
    assert req.headers["traceparent"].startswith("00-abab")
    assert req.length == len(up)
    resp = parse_response(bytes(down), "POST")
    assert resp is not None and resp.status == 201 and resp.length == len(down)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data):
    for fn in (parse_request, parse_response):
        fn(data)
    parse_requests(data)
    parse_responses(data, ["GET", "HEAD"])
    chunked_body_end(data, 0)


@settings(max_examples=200)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"]),
    path=st.from_regex(r"/[a-z0-9/_\-]{0,40}", fullmatch=True),
    query=st.from_regex(r"[a-z0-9=&]{0,20}", fullmatch=True),
    headers=st.dictionaries(
        st.from_regex(r"x-[a-z]{1,10}", fullmatch=True), st.from_regex(r"[ -~]{0,30}", fullmatch=True).map(str.strip), max_size=6
    ),
    body=st.binary(max_size=50),
)
def test_request_round_trip_and_every_truncation(method, path, query, headers, body):
    target = path + ("?" + query if query else "")
    head = f"{method} {target} HTTP/1.1\r\nHost: h\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    data = head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    req = parse_request(data)
    assert req is not None and not req.truncated
    assert (req.method, req.path, req.query) == (method, path, query)
    for k, v in headers.items():
        assert req.headers[k] == v
    assert req.length == len(data) and req.body_size == len(body)
    for cut in range(len(data)):
        part = parse_request(data[:cut])
        if part is not None:
            assert part.method == method
            assert target.startswith(part.target)
        assert len(parse_requests(data[:cut])) <= 1


# Heads of many shapes: the one-pattern path for whole CRLF heads must give exactly what the general path gives, and
# hand everything else to it.
_SHAPES = [
    GET,
    b"POST /p HTTP/1.0\r\nContent-Length: 3\r\nX-A:  spaced \t\r\n\r\nabc",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET http://h.local:81/x?y=1#f HTTP/1.1\r\nHost:\r\n\r\n",
    b"CONNECT db.local:5432 HTTP/1.1\r\nHost: db.local:5432\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\nHOST: b\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    b"GET /\xc3\xa9\xff HTTP/1.1\r\nX-Bin: \x80\xfe\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Fold: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n",
    b"GET /  HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.2\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 204 No Content\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 O\tK \x80\r\nA: 1\r\nA: 2\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n\tb\r\n\r\n",
]


def _http1(implementation: str):
    return accel.modules(implementation)["edge.protocols.http1"]


def _general(data: bytes, response: bool, method: str = "", implementation: str = "pure"):
    http1 = _http1(implementation)
    try:
        return http1._response_at_general(data, 0, method) if response else http1._request_at_general(data, 0)
    except Exception:  # noqa: BLE001 - parse_request/parse_response turn any exception into None
        return None


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("data", _SHAPES)
def test_whole_head_path_matches_general_path(data, implementation):
    http1 = _http1(implementation)
    response = data.startswith(b"HTTP/")
    for cut in sorted({len(data), len(data) - 1, len(data) // 2, *range(0, len(data), 7)}):
        part = data[:cut]
        for method in (["", "HEAD", "CONNECT"] if response else [""]):
            fast = http1.parse_response(part, method) if response else http1.parse_request(part)
            assert fast == _general(part, response, method, implementation), (part, method)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(max_examples=200)
@given(
    start=st.sampled_from([b"GET /x HTTP/1.1", b"POST /y?q HTTP/1.0", b"HTTP/1.1 200 OK", b"HTTP/1.0 404"]),
    lines=st.lists(st.one_of(st.from_regex(rb"[A-Za-z!~-]{1,8}:[ \t]?[ -~\t\x80\xff]{0,10}", fullmatch=True),
                             st.binary(max_size=20).filter(lambda b: b"\r\n" not in b)), max_size=6),
    ends=st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n", b""]),
    tail=st.binary(max_size=10),
)
def test_whole_head_path_matches_general_path_on_random_headers(start, lines, ends, tail, implementation):
    http1 = _http1(implementation)
    data = start + b"".join(b"\r\n" + ln for ln in lines) + ends + tail
    response = start.startswith(b"HTTP/")
    fast = http1.parse_response(data, "GET") if response else http1.parse_request(data)
    assert fast == _general(data, response, "GET", implementation)
