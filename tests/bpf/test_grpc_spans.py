"""Kernel spans of gRPC calls over HTTP/2 in cleartext (h2c) between a real grpcio client and server at their defaults.

Neither process is instrumented: the client's metadata carries the trace context, as an SDK upstream would have put
it. Python's grpcio links BoringSSL statically and without symbols, so its TLS cannot be read by the probes (doctor
names such processes); these calls are in cleartext.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from edge.model import SpanKind, StatusCode

from .conftest import ScriptServer
from .test_kernel_spans import PARENT, TRACE, kernel_spans  # noqa: F401  (fixture)

pytestmark = pytest.mark.bpf

# Generic handlers (no generated stubs): Say echoes, or fails with NOT_FOUND on b"fail"; Count streams n replies;
# Many answers OK or INVALID_ARGUMENT by the parity of its request, so that a wrong pairing shows.
GRPC_SERVER = r"""
import concurrent.futures, grpc
def say(req, ctx):
    if req == b"fail":
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return req
def count(req, ctx):
    for i in range(int(req)):
        yield b"%d" % i
def many(req, ctx):
    if int(req) % 2:
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "odd")
    return req
handlers = {"Say": grpc.unary_unary_rpc_method_handler(say), "Count": grpc.unary_stream_rpc_method_handler(count),
            "Many": grpc.unary_unary_rpc_method_handler(many)}
server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=10))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("helix.test.Echo", handlers),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
"""

GRPC_CLIENT = r"""
import sys, grpc
trace, parent, target = sys.argv[1:4]
with grpc.insecure_channel(target) as ch:
    say = ch.unary_unary("/helix.test.Echo/Say")
    assert say(b"hello", metadata=(("traceparent", f"00-{trace}-{parent}-01"),)) == b"hello"
    try:
        say(b"fail")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND
    count = ch.unary_stream("/helix.test.Echo/Count")
    assert len(list(count(b"5", metadata=(("traceparent", f"00-{trace[:-4]}5555-{parent}-01"),)))) == 5
    many = ch.unary_unary("/helix.test.Echo/Many")
    calls = [many.future(b"%d" % i, metadata=(("traceparent", f"00-{i:032x}-{parent}-01"),)) for i in range(1, 101)]
    for i, c in enumerate(calls, 1):
        try:
            c.result()
            assert i % 2 == 0
        except grpc.RpcError as e:
            assert i % 2 and e.code() == grpc.StatusCode.INVALID_ARGUMENT
print("ok", flush=True)
"""


async def test_grpcio_calls_over_h2c(kernel_spans) -> None:  # noqa: F811
    ks = await kernel_spans()
    server = ScriptServer(GRPC_SERVER)
    try:
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", GRPC_CLIENT, TRACE, PARENT,
                                                        f"127.0.0.1:{server.port}"],
                                       capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
        grpc_spans = lambda s: s.attributes.get("rpc.system") == "grpc" and s.attributes.get(  # noqa: E731
            "server.port") == server.port
        # Say x2, Count, Many x100: on each side
        spans = await ks.wait_for(grpc_spans, count=2 * 103, timeout=30)
        # grpcio's own TLS (BoringSSL inside cygrpc, no symbols) is out of the probes' reach: named, not missed
        assert ks.source.tls is not None
        tls = ks.source.tls

        def named() -> bool:
            # (with " beside OpenSSL read" when the process also maps libssl, as Python's ssl module brings it)
            return any(f"python ({server.pid})" in names for stack, names in tls.unreadable().items()
                       if stack.startswith("BoringSSL (static, no symbols)"))

        # The server may map cygrpc after its exec was scanned: the periodic rescan (tls_rescan) names it then.
        deadline = time.monotonic() + ks.source.cfg.tls_rescan + 10
        while not named() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert named(), tls.unreadable()
    finally:
        server.stop()
    by_kind = {k: [s for s in spans if s.kind == k] for k in (SpanKind.CLIENT, SpanKind.SERVER)}
    for kind, side in by_kind.items():
        pids = {s.attributes["process.pid"] for s in side}
        assert pids == {server.pid} if kind == SpanKind.SERVER else server.pid not in pids
        say = [s for s in side if s.attributes["rpc.method"] == "Say"]
        assert len(say) == 2, [s.attributes for s in say]
        ok, = [s for s in say if s.attributes["rpc.grpc.status_code"] == 0]
        failed, = [s for s in say if s.attributes["rpc.grpc.status_code"] == 5]
        assert ok.name == "helix.test.Echo/Say" and ok.attributes["rpc.service"] == "helix.test.Echo"
        assert ok.trace_id.hex() == TRACE and ok.parent_span_id.hex() == PARENT
        assert ok.attributes["helix.context_from"] == "wire" and ok.status_code == StatusCode.UNSET
        assert ok.attributes["network.protocol.version"] == "2" and "helix.http2.partial" not in ok.attributes
        # NOT_FOUND is the caller's error, not the server's (RPC semantic conventions)
        if kind == SpanKind.CLIENT:
            assert failed.status_code == StatusCode.ERROR and failed.attributes["error.type"] == "NOT_FOUND"
            assert failed.status_message == "no such thing"
        else:
            assert failed.status_code == StatusCode.UNSET and "error.type" not in failed.attributes
        stream, = [s for s in side if s.attributes["rpc.method"] == "Count"]
        assert stream.trace_id.hex() == TRACE[:-4] + "5555" and stream.attributes["rpc.grpc.status_code"] == 0
        assert stream.attributes["http.response.body.size"] >= 5 * 6  # five length-prefixed messages
        many = [s for s in side if s.attributes["rpc.method"] == "Many"]
        assert len(many) == 100
        # each call's status belongs to its own request: paired by stream id across 100 concurrent streams
        for s in many:
            i = int(s.trace_id.hex(), 16)
            assert s.attributes["rpc.grpc.status_code"] == (3 if i % 2 else 0), (i, s.attributes)
        assert len({s.attributes["helix.http2.stream_id"] for s in many}) == 100
