"""The C whole-head parser (edge/protocols/_http1_heads.c) against the Python parser it speeds up: on random, mutated
and hostile heads both give the same HttpRequest / HttpResponse (or the C one leaves the head to Python), and neither
raises; the common heads are the C parser's to answer."""
from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import accel

c_only = pytest.mark.skipif(
    not accel.c_status().compiled and os.environ.get("HELIX_REQUIRE_ACCEL") != "1",
    reason=f"C extensions not in use: {accel.c_status().detail}")


def _reference():
    """The pure-Python module with the C parser off: what every answer is compared with."""
    return accel.modules("pure")["edge.protocols.http1"]


@contextmanager
def _with_c(implementation: str):
    http1 = accel.modules(implementation)["edge.protocols.http1"]
    was_on = http1._heads is not None
    assert http1.use_c_heads(True), accel.c_status().detail
    try:
        yield http1
    finally:
        http1.use_c_heads(was_on)


def _c():
    mod = accel.c_module("edge.protocols._http1_heads")
    assert mod is not None, accel.c_status().detail
    return mod


def _plain(x):
    """Heads as comparable data across the two implementations' classes."""
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if x is None:
        return None
    fields = ("method", "target", "path", "query", "host") if hasattr(x, "method") else ("status", "reason")
    common = ("version", "headers", "truncated", "content_length", "chunked", "offset", "head_length", "length")
    return {f: getattr(x, f) for f in fields + common}


def _assert_same(data: bytes, methods=("GET", "HEAD", "CONNECT", "")) -> None:
    ref = _reference()
    assert ref._heads is None
    for implementation in accel.implementations():
        with _with_c(implementation) as http1:
            assert _plain(http1.parse_requests(data)) == _plain(ref.parse_requests(data)), data
            assert _plain(http1.parse_request(data)) == _plain(ref.parse_request(data)), data
            for m in methods:
                assert _plain(http1.parse_response(data, m)) == _plain(ref.parse_response(data, m)), (data, m)
            assert _plain(http1.parse_responses(data, list(methods))) == \
                _plain(ref.parse_responses(data, list(methods))), data
    # What the C parser answers at all is what the Python parser answers (None: Python decides).
    c = _c()
    for start in sorted({0, 1, len(data) // 2, len(data)}):
        got = c.request_head(data, start, ref.HttpRequest)
        if got is not None:
            assert _plain(got) == _plain(ref._request_at(data, start))
        for m in methods:
            got = c.response_head(data, start, m, ref.HttpResponse)
            if got is not None:
                assert _plain(got) == _plain(ref._response_at(data, start, m))


_COMMON = [
    b"GET /api/orders?id=7 HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: bench/1.0\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
    b"POST /v1/traces HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\ntracestate: a=b\r\n\r\n{}",
    b"PUT /x#frag HTTP/1.0\r\nX-B3-TraceId: 463ac35c9f6413ad\r\nX-B3-SpanId: a2fb4a1d1a96d312\r\nb3: 1-2-1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"DELETE /a?b=c#d?e HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
]
_COMMON_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 404\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
]


@c_only
def test_the_common_heads_are_parsed_in_c():
    c, ref = _c(), _reference()
    for data in _COMMON:
        got = c.request_head(data, 0, ref.HttpRequest)
        assert got is not None, data
        assert _plain(got) == _plain(ref.parse_request(data))
    for data in _COMMON_RESPONSES:
        for m in ("GET", "HEAD"):
            got = c.response_head(data, 0, m, ref.HttpResponse)
            assert got is not None, data
            assert _plain(got) == _plain(ref.parse_response(data, m))


@c_only
def test_the_rest_is_left_to_python():
    c, ref = _c(), _reference()
    for data in [b"GET / HTTP/1.1\r\nHost: a\r\n", b"GET / HTTP/1.1\nHost: a\n\n", b"CONNECT h:443 HTTP/1.1\r\n\r\n",
                 b"GET http://h/p HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nA: 1\r\n\tfold\r\n\r\n",
                 b"GET / HTTP/1.1\r\n" + b"X: v\r\n" * 100 + b"\r\n", b"\x16\x03\x01\x02\x00", b"",
                 b"GET / HTTP/1.1\r\nA: \x00\r\n\r\n"]:
        assert c.request_head(data, 0, ref.HttpRequest) is None, data
    for data in [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 200 OK\n\n", b"HTTP/1.1 20"]:
        assert c.response_head(data, 0, "", ref.HttpResponse) is None, data


@c_only
def test_bad_arguments_raise_type_errors_not_crashes():
    c, ref = _c(), _reference()
    with pytest.raises(TypeError):
        c.request_head("GET / HTTP/1.1\r\n\r\n", 0, ref.HttpRequest)
    with pytest.raises(TypeError):
        c.response_head(b"HTTP/1.1 200 OK\r\n\r\n", 0, None, ref.HttpResponse)
    assert c.request_head(b"GET / HTTP/1.1\r\n\r\n", -5, ref.HttpRequest) is None
    assert c.request_head(b"GET / HTTP/1.1\r\n\r\n", 10**6, ref.HttpRequest) is None
    assert c.chunked_body_end(b"0\r\n\r\n", 99) is None
    # bytearray and memoryview are read as they are (snapshots are bytearrays)
    data = _COMMON[0]
    assert _plain(c.request_head(bytearray(data), 0, ref.HttpRequest)) == _plain(ref.parse_request(data))
    assert _plain(c.request_head(memoryview(data), 0, ref.HttpRequest)) == _plain(ref.parse_request(data))


@c_only
@pytest.mark.parametrize("data", _COMMON + _COMMON_RESPONSES)
def test_every_cut_of_a_common_head_matches(data):
    for cut in range(len(data) + 1):
        _assert_same(data[:cut])
    _assert_same(data * 3)  # pipelined


@c_only
def test_every_listed_header_value_matches_in_whole_heads():
    # Each hostile value in a head the C parser takes (the random heads below rarely are whole and valid).
    for name in [b"Host", b"Content-Length", b"Transfer-Encoding", b"traceparent"]:
        for value in _HEADER_VALUES:
            for first in [b"GET /p?q HTTP/1.1", b"HTTP/1.1 200 OK"]:
                for data in [first + b"\r\n" + name + b": " + value + b"\r\n\r\n",
                             first + b"\r\n" + name + b":" + value + b"\r\nX: 1\r\n" + name + b": 7\r\n\r\n"
                             + b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"]:
                    _assert_same(data, methods=("GET", "HEAD"))


_HEADER_NAMES = [b"Host", b"HOST", b"content-length", b"Content-Length", b"Transfer-Encoding", b"traceparent",
                 b"tracestate", b"b3", b"X-B3-TraceId", b"X-B3-SpanId", b"X-B3-Sampled", b"X-B3-ParentSpanId",
                 b"X", b"a!#$%&'*+-.^_`|~9", b"Bad Name", b"", b"\xc3\xa9", b"Na\x00me"]
_HEADER_VALUES = [b"", b" ", b"shop.local:8080", b" 5 ", b"5", b"05", b"5,5", b"5, 5", b"5, 6", b",", b" , ",
                  b"\xa05", b"5\x85", b"\xb2", b"1" * 18, b"1" * 19, b"-1", b"+1", b"chunked", b"CHUNKED",
                  b"gzip, chunked", b"chunked, gzip", b"gzip,\xa0chunked", b"\x85chunked", b"chunked\t",
                  b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", b"caf\xc3\xa9", b"\xff\xfe",
                  b"a\tb", b"a\x00b", b"a\x7fb", b"a\rb", b"a\nb", b":::"]
_TARGETS = [b"/", b"/a?b", b"/a?b#c", b"/a#b?c", b"/?", b"/#", b"*", b"*x", b"/caf\xc3\xa9?q=\xe2\x82", b"/\xff\xfe",
            b"/\xe2\x82?x", b"http://user@h:1/p?q#f", b"h:443", b"", b"/a b", b"/\x00"]
_LINE_ENDS = [b"\r\n", b"\n", b"\r", b""]

_header = st.builds(lambda n, sep, v, end: n + sep + v + end, st.sampled_from(_HEADER_NAMES),
                    st.sampled_from([b":", b": ", b":\t", b" :", b""]), st.sampled_from(_HEADER_VALUES),
                    st.sampled_from([b"\r\n"] * 6 + _LINE_ENDS))
_fold = st.sampled_from([b" folded\r\n", b"\tmore\r\n"])
_chunked_body = st.lists(st.tuples(st.integers(0, 40), st.sampled_from([b"", b";x=1", b" ", b"\t;q"]),
                                   st.sampled_from([b"\r\n", b"\n", b"\r", b"xx"])), max_size=4).map(
    lambda chunks: b"".join(b"%x" % n + ext + b"\r\n" + b"z" * n + end for n, ext, end in chunks)
    + b"0\r\n" + b"T: 1\r\n\r\n")


@st.composite
def _heads(draw):
    if draw(st.booleans()):
        first = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS", b"CONNECT",
                                      b"TRACE", b"get", b"BREW", b"GETS"])) + b" " + draw(st.sampled_from(_TARGETS)) \
            + draw(st.sampled_from([b" HTTP/1.1", b" HTTP/1.0", b" HTTP/1.2", b" HTTP/2", b"  HTTP/1.1", b""]))
    else:
        first = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.x"])) + draw(st.sampled_from(
            [b" 200", b" 204", b" 304", b" 100", b" 101", b" 404", b" 099", b" 2000", b" 20", b" 2x0"])) \
            + draw(st.sampled_from([b"", b" OK", b" ", b" O\tK \x80\xff", b" A\x00B", b"  two  "]))
    lines = draw(st.lists(st.one_of(_header, _fold), max_size=8))
    end = draw(st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n"]))
    body = draw(st.one_of(st.binary(max_size=12), _chunked_body))
    return first + b"\r\n" + b"".join(lines) + end + body


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(head=_heads(), more=st.lists(_heads(), max_size=2),
       mutation=st.tuples(st.sampled_from(["none", "cut", "flip", "insert", "dup"]), st.integers(0, 10**6),
                          st.binary(min_size=1, max_size=6)))
@c_only
def test_random_and_mutated_heads_match(head, more, mutation):
    data = head + b"".join(more)
    op, at, blob = mutation
    at %= len(data) + 1
    if op == "cut":
        data = data[:at]
    elif op == "flip":
        data = data[:at] + blob + data[at + len(blob):]
    elif op == "insert":
        data = data[:at] + blob + data[at:]
    elif op == "dup":
        data = data[:at] + data[at:at + 40] + data[at:]
    _assert_same(data)


@c_only
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_match(data):
    _assert_same(data)
    _assert_same(b"GET /" + data)
    _assert_same(b"HTTP/1.1 200 " + data)


@c_only
def test_huge_heads_match():
    big_value = b"v" * 200_000
    for data in [
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + big_value + b"\r\nContent-Length: 3\r\n\r\nabc",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"A: 1\r\n" * 5000 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 5000 + b"0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1" + b" " * 2000 + b"\r\nx\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n",
    ]:
        _assert_same(data, methods=("GET",))


@c_only
@settings(max_examples=300, deadline=None)
@given(body=st.one_of(_chunked_body, st.binary(max_size=60)), pos=st.integers(0, 8))
def test_chunked_body_end_matches(body, pos):
    c, ref = _c(), _reference()
    pos = min(pos, len(body))
    assert c.chunked_body_end(body, pos) == ref.chunked_body_end(body, pos)
