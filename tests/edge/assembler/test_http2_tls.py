"""The assembler treats HTTP/2, gRPC and TLS kernel spans as it treats HTTP/1: wire context from the h2 headers,
connection causality — and on a multiplexed HTTP/2 connection, the stream id says which client stream a server
stream is."""
from __future__ import annotations

from edge.assembler import Assembler, AssemblerConfig
from edge.model import SpanKind, new_span_id, new_trace_id

from .test_assembler import A, B, C, D, kspan, run

GRPC = {"rpc.system": "grpc", "rpc.service": "acc.Chain", "rpc.method": "Call", "network.protocol.version": "2"}
TLS = {"helix.tls": True, "tls.protocol.name": "tls", "tls.protocol.version": "1.3"}


def stream(name: str, kind: SpanKind, start: float, end: float, sid: int, **kw: object):
    """A gRPC stream's kernel span on the connection A <-> B (client pid 1, server pid 2)."""
    client = kind == SpanKind.CLIENT
    return kspan(name, kind, start, end, pid=1 if client else 2, tid=10 if client else 20 + sid,
                 local=A if client else B, peer=B if client else A, **{**GRPC, "helix.http2.stream_id": sid}, **kw)


def test_concurrent_streams_without_context_pair_by_stream_id_not_by_time() -> None:
    # Two calls written together on one connection: by time alone, each server stream fits the other client
    # stream more tightly (stream 1's server span starts later and ends sooner than stream 3's).
    spans = [
        stream("c1", SpanKind.CLIENT, 0.0, 10.0, 1), stream("c3", SpanKind.CLIENT, 0.1, 10.1, 3),
        stream("s1", SpanKind.SERVER, 0.2, 9.8, 1), stream("s3", SpanKind.SERVER, 0.3, 9.9, 3),
    ]
    got = run(spans)
    assert got["s1"].parent_span_id == got["c1"].span_id and got["s3"].parent_span_id == got["c3"].span_id
    assert got["s1"].attributes["helix.link"] == "connection" and got["s3"].trace_id == got["c3"].trace_id


def test_a_stream_id_matches_a_client_stream_that_already_left() -> None:
    # The client span left the assembler's window before its server span arrived: the index keeps its stream id.
    a = Assembler(AssemblerConfig(window=0.5, sdk_wait=0.0))
    c1, c3 = stream("c1", SpanKind.CLIENT, 0.0, 10.0, 1), stream("c3", SpanKind.CLIENT, 0.1, 10.5, 3)
    first = a.process([c1, c3], now=0.0) + a.process([], now=0.6)
    assert {s.name for s in first} == {"c1", "c3"}
    # by time, stream 3's server span fits stream 1's client span more tightly
    late = a.process([stream("s3", SpanKind.SERVER, 0.15, 9.9, 3)], now=0.7) + a.process([], now=1.3)
    (s3,) = late
    ids = {s.name: s for s in first}
    assert s3.parent_span_id == ids["c3"].span_id and s3.trace_id == ids["c3"].trace_id


def test_grpc_metadata_context_hangs_each_server_stream_under_its_client_stream() -> None:
    # traceparent metadata read off the h2 headers on both ends, 100 streams on one connection
    spans = []
    for i in range(100):
        sid = 2 * i + 1
        ctx = (new_trace_id(), new_span_id())
        spans += [stream(f"c{sid}", SpanKind.CLIENT, i * 0.01, 10 + i * 0.01, sid, wire=ctx),
                  stream(f"s{sid}", SpanKind.SERVER, 0.5 + i * 0.01, 9 + i * 0.01, sid, wire=ctx)]
    got = run(spans)
    for i in range(100):
        c, s = got[f"c{2 * i + 1}"], got[f"s{2 * i + 1}"]
        assert s.parent_span_id == c.span_id and s.trace_id == c.trace_id
        assert s.attributes["helix.link"] == "wire+connection"


def test_the_grpc_handlers_http_call_joins_its_stream_and_the_callee_by_connection() -> None:
    # uninstrumented: client stream -> server stream (its handler thread) -> HTTP/1 call -> callee
    spans = [
        stream("c1", SpanKind.CLIENT, 0, 100, 1),
        stream("s1", SpanKind.SERVER, 1, 99, 1),
        kspan("db-call", SpanKind.CLIENT, 10, 90, pid=2, tid=21, local=C, peer=D),
        kspan("db", SpanKind.SERVER, 11, 89, pid=3, tid=30, local=D, peer=C),
    ]
    got = run(spans)
    assert got["s1"].parent_span_id == got["c1"].span_id
    assert got["db-call"].parent_span_id == got["s1"].span_id and got["db-call"].attributes["helix.link"] == "thread"
    assert got["db"].parent_span_id == got["db-call"].span_id
    assert len({s.trace_id for s in got.values()}) == 1


def test_tls_spans_join_as_cleartext_ones_do() -> None:
    # HTTPS read at the TLS library: the same connection 5-tuple, the same rules; wire context as for HTTP/1
    trace, parent = new_trace_id(), new_span_id()
    spans = [
        kspan("https-call", SpanKind.CLIENT, 0, 50, pid=1, tid=10, local=A, peer=B, wire=(trace, parent), **TLS),
        kspan("https-server", SpanKind.SERVER, 1, 49, pid=2, tid=20, local=B, peer=A, wire=(trace, parent), **TLS),
        kspan("plain-call", SpanKind.CLIENT, 5, 45, pid=2, tid=20, local=C, peer=D, **TLS),
        kspan("plain-server", SpanKind.SERVER, 6, 44, pid=3, tid=30, local=D, peer=C, **TLS),
    ]
    got = run(spans)
    assert got["https-server"].parent_span_id == got["https-call"].span_id
    assert got["https-server"].attributes["helix.link"] == "wire+connection"
    assert got["plain-call"].parent_span_id == got["https-server"].span_id
    assert got["plain-server"].parent_span_id == got["plain-call"].span_id
    assert {s.trace_id for s in got.values()} == {trace}
