"""HTTP/2 and gRPC spans from conversations made by python-hyper's h2, as the probes would send them."""
from __future__ import annotations

from edge.model import SpanKind, StatusCode
from edge.protocols import http2 as p
from edge.sources.ebpf.events import CloseEvent, Direction

from ._h2 import Conversation, frame_events, grpc_message, message_events
from ._helpers import SID, TID, TP, assert_clean, builder


def _close(b, sock=7):
    return b.feed([CloseEvent(10**12, 100, 101, 7, sock, 0, 0, 0)])


def test_grpc_unary_client_and_server_in_frame_mode():
    c = Conversation()
    sid = c.request("/helix.demo.Orders/Get", headers=(("traceparent", TP),), body=grpc_message(b"x" * 40))
    c.flush()
    c.respond(sid, body=grpc_message(b"y" * 300))
    c.flush()
    for server_side, kind in ((False, SpanKind.CLIENT), (True, SpanKind.SERVER)):
        b = builder()
        out = b.feed(frame_events(c.calls, server_side=server_side))
        assert len(out) == 1, out
        s = out[0]
        assert s.kind == kind and s.name == "helix.demo.Orders/Get"
        assert s.attributes["rpc.system"] == "grpc" and s.attributes["rpc.method"] == "Get"
        assert s.attributes["rpc.service"] == "helix.demo.Orders" and s.attributes["rpc.grpc.status_code"] == 0
        assert s.attributes["network.protocol.version"] == "2" and "helix.http2.partial" not in s.attributes
        assert s.trace_id.hex() == TID and s.parent_span_id.hex() == SID
        assert s.status_code == StatusCode.UNSET
        _close(b)
        assert_clean(b)


def test_grpc_error_status_and_frames_split_across_calls():
    c = Conversation()
    sid = c.request("/pkg.Svc/Fail", body=grpc_message(b"q"))
    c.flush()
    c.respond(sid, grpc_status=5)
    c.flush()
    b = builder()
    out = b.feed(frame_events(c.calls, split=7))  # frames straddling records
    assert len(out) == 1
    assert out[0].attributes["rpc.grpc.status_code"] == 5 and out[0].status_code == StatusCode.ERROR
    assert out[0].attributes["error.type"] == "NOT_FOUND" and out[0].status_message == "oh no"


def test_hundred_concurrent_streams_pair_by_stream_id():
    c = Conversation()
    sids = [c.request(f"/pkg.Svc/M{i}", body=grpc_message(bytes([i]))) for i in range(100)]
    c.flush()
    for i, sid in enumerate(reversed(sids)):
        c.respond(sid, grpc_status=i % 3)
        c.flush()
    b = builder()
    out = b.feed(frame_events(c.calls))
    assert len(out) == 100
    by_method = {s.attributes["rpc.method"]: s for s in out}
    for i, sid in enumerate(reversed(sids)):
        s = by_method[f"M{sids.index(sid)}"]
        assert s.attributes["helix.http2.stream_id"] == sid and s.attributes["rpc.grpc.status_code"] == i % 3
    _close(b)
    assert_clean(b)


def test_plain_http2_get_with_b3():
    c = Conversation()
    sid = c.request("/status?x=1", headers=(("x-b3-traceid", TID), ("x-b3-spanid", SID), ("x-b3-sampled", "1")),
                    grpc=False)
    c.flush()
    c.respond(sid, status=503, body=b"down", grpc_status=None)
    c.flush()
    out = builder().feed(frame_events(c.calls))
    assert len(out) == 1
    s = out[0]
    assert s.name == "GET" and s.attributes["url.path"] == "/status" and s.attributes["url.query"] == "x=1"
    assert s.attributes["http.response.status_code"] == 503 and s.status_code == StatusCode.ERROR
    assert s.trace_id.hex() == TID and "rpc.system" not in s.attributes


def test_joined_mid_stream_never_guesses_dynamic_entries():
    c = Conversation()
    first = c.request("/pkg.Svc/A", headers=(("x-tenant", "acme"),), body=grpc_message(b"1"))
    c.flush()
    c.respond(first)
    c.flush()
    n = len(c.calls)
    second = c.request("/pkg.Svc/A", headers=(("x-tenant", "acme"),), body=grpc_message(b"2"))
    c.flush()
    c.respond(second)
    c.flush()
    # the agent starts after the first call: no preface, no start flag, the dynamic entries unknown
    b = builder(capture_headers=("x-tenant",))
    out = b.feed(frame_events(c.calls[n:], start=False))
    assert len(out) == 1
    s = out[0]
    assert s.attributes["helix.http2.partial"] is True and s.attributes["helix.http2.unknown_fields"] > 0
    assert "rpc.grpc.request.metadata.x-tenant" not in s.attributes  # indexed from a slot never seen
    # from the start, the same field is known
    b = builder(capture_headers=("x-tenant",))
    out = b.feed(frame_events(c.calls))
    assert [s.attributes["rpc.grpc.request.metadata.x-tenant"] for s in out] == [["acme"], ["acme"]]
    assert all("helix.http2.partial" not in s.attributes for s in out)


def test_message_mode_snapshots():
    c = Conversation()
    sid = c.request("/pkg.Svc/Snap", headers=(("traceparent", TP),), body=grpc_message(b"z"))
    c.flush()
    c.respond(sid)
    c.flush()
    b = builder(payload_bytes=4096)
    out = b.feed(message_events(c.calls, payload_bytes=4096))
    out += b.flush(10**12)
    out += _close(b)
    spans = [s for s in out if s.attributes.get("rpc.method") == "Snap"]
    assert len(spans) == 1 and spans[0].trace_id.hex() == TID
    assert b.stats.h2_snapshots > 0


def test_hpack_dynamic_table_and_garbage():
    import hpack
    enc = hpack.Encoder()
    dec = p.HeaderDecoder(complete=True)
    for _ in range(3):
        block = dec.decode(enc.encode([(":method", "GET"), ("x-long-header", "v" * 50)]))
        assert block.get("x-long-header") == "v" * 50 and not block.partial
    bad = dec.decode(b"\xff\xff\xff\xff\xff\xff")
    assert bad.partial and not dec.complete
    assert p.plausible_frames(b"GET / HTTP/1.1\r\n\r\n") == 0


def test_unknown_direction_of_first_frames_is_not_a_crash():
    b = builder()
    noise = bytes(range(256))
    from ._helpers import data
    out = b.feed([data(3, Direction.INGRESS, 1000, noise)])
    assert out == [] and b.stats.internal_errors == 0


def test_calls_made_while_serving_a_stream_name_it_as_their_cause():
    # A server thread that read a gRPC request and calls out before it answers: the call was made for that stream.
    from edge.sources.ebpf.spans.causes import CAUSE, CAUSE_VIA

    from .test_causes import call
    c = Conversation()
    sid = c.request("/pkg.Svc/Do", body=grpc_message(b"q"))
    c.flush()
    n = len(c.calls)
    c.respond(sid, body=grpc_message(b"r"))
    c.flush()
    evs = frame_events(c.calls, server_side=True)
    b = builder()
    assert b.feed(evs[:n]) == []
    (out_call,) = call(b, 10, evs[n - 1].end_ns + 1_000, evs[n - 1].tid)
    (srv,) = [s for s in b.feed(evs[n:]) if s.kind == SpanKind.SERVER]
    assert out_call.attributes[CAUSE] == srv.span_id and out_call.attributes[CAUSE_VIA] == "thread"
    # answered: the thread no longer works for it (serving none in a process reading streams, its call waits for the
    # response it may write, then names none)
    assert call(b, 11, evs[-1].end_ns + 1_000, evs[n - 1].tid) == []
    (later,) = b.flush(2**62)
    assert CAUSE not in later.attributes


def test_server_connection_joined_mid_stream_turns_elimination_off_for_its_process():
    """Requests read before the agent saw the connection are not known: `elimination` could name another open
    request for a worker's call made for one of them (causes.py)."""
    c = Conversation()
    first = c.request("/pkg.Svc/A", body=grpc_message(b"1"))
    c.flush()
    c.respond(first)
    c.flush()
    n = len(c.calls)
    second = c.request("/pkg.Svc/A", body=grpc_message(b"2"))
    c.flush()
    c.respond(second)
    c.flush()
    b = builder()
    b.feed(frame_events(c.calls, server_side=True))
    assert b.causes.elimination_allowed(100)
    b = builder()
    b.feed(frame_events(c.calls[n:], server_side=True, start=False))
    assert not b.causes.elimination_allowed(100)
    b = builder()
    b.feed(frame_events(c.calls[n:], start=False))  # a client's connection: its own requests are all it sent
    assert b.causes.elimination_allowed(100)
