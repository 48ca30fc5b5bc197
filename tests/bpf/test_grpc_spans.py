"""Kernel spans of gRPC calls over HTTP/2, between real clients and servers at their defaults: grpcio on both ends in
cleartext (h2c), and over TLS a grpc-js server on Node.js with a grpc-js or a grpcio client.

Neither process is instrumented: the client's metadata carries the trace context, as an SDK upstream would have put
it. Node.js links OpenSSL statically with its symbols; Python's grpcio links BoringSSL statically without symbols, and
its TLS calls are located from how gRPC core makes them (edge/sources/ebpf/boringssl_calls.py).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge.model import SpanKind, StatusCode
from edge.sources.ebpf.tls_libs import GRPC_BORINGSSL

from ..pki import make_pki
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
        # grpcio's own BoringSSL (inside cygrpc, no symbols) is found and attached, by the periodic rescan
        # (tls_rescan) when the server mapped cygrpc after its exec was scanned
        await attached_grpc_boringssl(ks, server.pid)
    finally:
        server.stop()
    by_kind = {k: [s for s in spans if s.kind == k] for k in (SpanKind.CLIENT, SpanKind.SERVER)}
    for kind, side in by_kind.items():
        pids = {s.attributes["process.pid"] for s in side}
        assert pids == {server.pid} if kind == SpanKind.SERVER else server.pid not in pids
        check_grpc_side(side, kind)


# gRPC over TLS that the probes can read: the official grpc-js on Node.js, whose OpenSSL is linked statically with its
# symbols (attached by symbol in the node executable). Pinned; scripts/setup.sh installs it into .cache/grpc-js.
GRPC_JS = "@grpc/grpc-js@1.14.7"
GRPC_JS_DIR = Path(__file__).resolve().parents[2] / ".cache" / "grpc-js" / "node_modules"

# The same three methods as GRPC_SERVER, with raw bytes as messages (no generated code); TLS with the test's
# certificate, everything else at grpc-js's defaults.
GRPC_JS_SERVICE = r"""
const grpc = require("@grpc/grpc-js"), fs = require("fs");
const id = (b) => b;
const method = (name, responseStream) => ({path: `/helix.test.Echo/${name}`, requestStream: false, responseStream,
  requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id});
const service = {Say: method("Say", false), Count: method("Count", true), Many: method("Many", false)};
"""

GRPC_JS_SERVER = GRPC_JS_SERVICE + r"""
const [cert, key] = process.argv.slice(1);
const server = new grpc.Server();
server.addService(service, {
  Say: (call, cb) => call.request.toString() === "fail"
    ? cb({code: grpc.status.NOT_FOUND, details: "no such thing"}) : cb(null, call.request),
  Count: (call) => { for (let i = 0; i < +call.request.toString(); i++) call.write(Buffer.from(`${i}`)); call.end(); },
  Many: (call, cb) => +call.request.toString() % 2
    ? cb({code: grpc.status.INVALID_ARGUMENT, details: "odd"}) : cb(null, call.request),
});
const creds = grpc.ServerCredentials.createSsl(null, [{cert_chain: fs.readFileSync(cert),
                                                       private_key: fs.readFileSync(key)}], false);
server.bindAsync("127.0.0.1:0", creds, (err, port) => { if (err) throw err; console.log(port); });
"""

GRPC_JS_CLIENT = GRPC_JS_SERVICE + r"""
const [trace, parent, target, ca] = process.argv.slice(1);
const Client = grpc.makeGenericClientConstructor(service, "Echo");
const client = new Client(target, grpc.credentials.createSsl(fs.readFileSync(ca)));
const md = (tp) => { const m = new grpc.Metadata(); m.add("traceparent", tp); return m; };
const unary = (name, req, m) => new Promise((ok) => client[name](Buffer.from(req), m, (err, res) => ok(err || res)));
(async () => {
  if ((await unary("Say", "hello", md(`00-${trace}-${parent}-01`))).toString() !== "hello") throw "Say";
  if ((await unary("Say", "fail", new grpc.Metadata())).code !== grpc.status.NOT_FOUND) throw "fail";
  const got = await new Promise((ok, bad) => { const n = [];
    const s = client.Count(Buffer.from("5"), md(`00-${trace.slice(0, -4)}5555-${parent}-01`));
    s.on("data", (d) => n.push(d)); s.on("end", () => ok(n.length)); s.on("error", bad); });
  if (got !== 5) throw "Count";
  const many = await Promise.all(Array.from({length: 100}, (_, k) =>
    unary("Many", `${k + 1}`, md(`00-${(k + 1).toString(16).padStart(32, "0")}-${parent}-01`))));
  many.forEach((r, k) => {
    if ((k + 1) % 2 ? r.code !== grpc.status.INVALID_ARGUMENT : r.code !== undefined) throw k; });
  client.close();
  console.log("ok");
})().catch((e) => { console.error(e); process.exit(1); });
"""

# grpcio over TLS at its defaults; it says when it has loaded grpc and waits for a line before calling, so that the
# calls come after the agent found its BoringSSL (the periodic rescan, as for any library loaded after exec).
GRPCIO_TLS_CLIENT = GRPC_CLIENT.replace("grpc.insecure_channel(target)", "grpc.secure_channel(target, "
                                        "grpc.ssl_channel_credentials(open(sys.argv[4], 'rb').read()))").replace(
    "trace, parent, target = sys.argv[1:4]\n",
    "trace, parent, target = sys.argv[1:4]\nprint('ready', flush=True)\nsys.stdin.readline()\n")
assert "ready" in GRPCIO_TLS_CLIENT and "secure_channel" in GRPCIO_TLS_CLIENT


async def attached_grpc_boringssl(ks: Any, pid: int) -> None:
    """Wait until the probes are attached to the BoringSSL inside the grpcio that process `pid` runs."""
    tls = ks.source.tls
    assert tls is not None, ks.source.tls_error
    deadline = time.monotonic() + ks.source.cfg.tls_rescan + 20
    while not any(pid in f.pids and f.stack == GRPC_BORINGSSL for f in list(tls.files.values())):
        assert time.monotonic() < deadline, tls.status()
        await asyncio.sleep(0.2)


def grpc_js() -> dict[str, str]:
    """The environment that lets `node` find grpc-js (fails when scripts/setup.sh has not installed it)."""
    if shutil.which("node") is None:
        pytest.fail("Node.js is not installed (apt-get install nodejs)")
    package = GRPC_JS_DIR / "@grpc" / "grpc-js" / "package.json"
    if not package.exists() or json.loads(package.read_text())["version"] != GRPC_JS.rsplit("@", 1)[1]:
        pytest.fail(f"{GRPC_JS} is not in {GRPC_JS_DIR} (scripts/setup.sh installs it)")
    return {**os.environ, "NODE_PATH": str(GRPC_JS_DIR)}


def check_grpc_side(side: list, kind: SpanKind) -> None:
    """The spans of one side of the calls GRPC_CLIENT/GRPC_JS_CLIENT make, each with its method, status and trace."""
    say = [s for s in side if s.attributes["rpc.method"] == "Say"]
    assert len(say) == 2, [s.attributes for s in say]
    ok, = [s for s in say if s.attributes["rpc.grpc.status_code"] == 0]
    failed, = [s for s in say if s.attributes["rpc.grpc.status_code"] == 5]
    assert ok.name == "helix.test.Echo/Say" and ok.attributes["rpc.service"] == "helix.test.Echo"
    assert ok.trace_id.hex() == TRACE and ok.parent_span_id.hex() == PARENT
    assert ok.attributes["helix.context_from"] == "wire" and ok.status_code == StatusCode.UNSET
    assert ok.attributes["network.protocol.version"] == "2" and "helix.http2.partial" not in ok.attributes
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
    for s in many:  # each call's status belongs to its own request: paired by stream id across 100 streams
        i = int(s.trace_id.hex(), 16)
        assert s.attributes["rpc.grpc.status_code"] == (3 if i % 2 else 0), (i, s.attributes)
    assert len({s.attributes["helix.http2.stream_id"] for s in many}) == 100


@pytest.mark.parametrize("client", ["grpc-js", "grpcio"])
async def test_grpc_calls_over_tls_to_a_grpc_js_server(kernel_spans, tmp_path: Path, client: str) -> None:  # noqa: F811
    # Both ends at their defaults. grpc-js's TLS is Node's OpenSSL (symbols kept); grpcio's is gRPC core's BoringSSL
    # without symbols, its calls located (boringssl_calls.py): each side's spans come from the probes.
    env = grpc_js()
    pki = make_pki(tmp_path, ())
    ks = await kernel_spans()
    server = subprocess.Popen(["node", "-e", GRPC_JS_SERVER, str(pki / "server.pem"), str(pki / "server.key")],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        port = int(await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 30))
        args = [TRACE, PARENT, f"127.0.0.1:{port}", str(pki / "ca.pem")]
        if client == "grpcio":
            caller = subprocess.Popen([sys.executable, "-c", GRPCIO_TLS_CLIENT, *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert caller.stdout is not None and caller.stdin is not None
            assert (await asyncio.to_thread(caller.stdout.readline)) == "ready\n"
            await attached_grpc_boringssl(ks, caller.pid)
            out, err = await asyncio.to_thread(caller.communicate, "go\n", 60)
        else:
            caller = subprocess.Popen(["node", "-e", GRPC_JS_CLIENT, *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env)
            out, err = await asyncio.to_thread(caller.communicate, None, 60)
        assert caller.returncode == 0 and out.strip() == "ok", err
        sides = (SpanKind.CLIENT, SpanKind.SERVER)
        grpc_spans = lambda s: s.attributes.get("rpc.system") == "grpc" and s.attributes.get(  # noqa: E731
            "server.port") == port and s.kind in sides
        spans = await ks.wait_for(grpc_spans, count=103 * len(sides), timeout=30)
    finally:
        server.terminate()
        server.wait(5)
    for kind in sides:
        side = [s for s in spans if s.kind == kind]
        pids = {s.attributes["process.pid"] for s in side}
        assert pids == ({server.pid} if kind == SpanKind.SERVER else {caller.pid}), pids
        # marked as encrypted on the wire, with the version both ends negotiate at their defaults, read from the SSL
        # object where OpenSSL keeps it; BoringSSL's first field is no version: none rather than a wrong one
        version = None if kind == SpanKind.CLIENT and client == "grpcio" else "1.3"
        assert all(s.attributes["helix.tls"] is True and s.attributes.get("tls.protocol.version") == version
                   for s in side), [s.attributes for s in side]
        check_grpc_side(side, kind)
