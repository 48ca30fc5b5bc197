"""Kernel spans through TLS: the plaintext read by uprobes on OpenSSL, from real curl and nginx at their defaults.

curl (libcurl on libssl.so.3) calls nginx (libssl.so.3) over https with a self-signed certificate made here; nginx
proxies in cleartext to a Python http.server. Both TLS ends must come out as HTTP spans in the curl's trace, marked as
encrypted on the wire, and the ciphertext must not be counted as unparsed.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge.demo.broker import Mosquitto, free_port
from edge.model import SpanKind
from edge.sources.ebpf.events import DataEvent

from .conftest import Server
from .test_kernel_spans import PARENT, TRACE, kernel_spans, run_nginx  # noqa: F401  (fixture)

pytestmark = pytest.mark.bpf


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, made by the openssl command line."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def nginx_tls(tmp_path: Path, http_server: Server):
    """nginx with an `ssl` listener (its defaults otherwise) in front of http_server; yields (port, cert)."""
    cert, key = self_signed(tmp_path)
    proc, port = run_nginx(tmp_path, f"listen 127.0.0.1:{{port}} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; "
                           f"location / {{ proxy_pass http://127.0.0.1:{http_server.port}; }}")
    yield port, cert
    proc.terminate()
    proc.wait(5)


def _curl_https(url: str, cert: Path, *headers: str) -> tuple[float, str, str]:
    """Time taken, status code, and the TLS version curl says it negotiated ("1.2")."""
    args = ["curl", "-sv", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(cert)]
    for h in headers:
        args += ["-H", h]
    t0 = time.monotonic_ns()
    done = subprocess.run(args + [url], capture_output=True, text=True, check=True, timeout=20)
    took = (time.monotonic_ns() - t0) / 1e9
    version = re.search(r"SSL connection using TLSv(1\.\d)", done.stderr)
    assert version, done.stderr
    return took, done.stdout, version.group(1)


async def test_curl_https_to_nginx_tls_spans_in_the_callers_trace(kernel_spans, nginx_tls) -> None:  # noqa: F811
    port, cert = nginx_tls
    ks = await kernel_spans()
    assert ks.source.tls is not None, ks.source.tls_error
    seen: list[DataEvent] = []  # what the probes sent of the TLS connections

    class Recording:
        """The source's builder, recording what it is fed (a compiled builder's methods cannot be replaced)."""

        def __init__(self, builder: Any) -> None:
            self.builder = builder

        def feed(self, events: list) -> list:
            seen.extend(e for e in events if isinstance(e, DataEvent) and port in (e.local.port, e.remote.port))
            return self.builder.feed(events)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.builder, name)

    ks.source.builder = Recording(ks.source.builder)  # type: ignore[assignment]
    took, code, version = await asyncio.to_thread(_curl_https, f"https://127.0.0.1:{port}/path?q=tls", cert,
                                         f"traceparent: 00-{TRACE}-{PARENT}-01")
    assert code == "200"
    on_path = lambda s: s.attributes.get("url.path") == "/path" and s.trace_id.hex() == TRACE  # noqa: E731
    spans = await ks.wait_for(on_path, count=4, timeout=20)
    by = {(s.resource.service_name, s.kind): s for s in spans}
    client, server = by[("curl", SpanKind.CLIENT)], by[("nginx", SpanKind.SERVER)]
    for s in (client, server):
        assert s.name == "GET" and s.attributes["http.request.method"] == "GET"
        assert s.attributes["url.query"] == "q=tls" and s.attributes["http.response.status_code"] == 200
        assert s.parent_span_id.hex() == PARENT and s.attributes["helix.context_from"] == "wire"
        # nginx 1.22 at its defaults offers up to TLS 1.2; the probes read what was negotiated from the SSL object
        assert s.attributes["helix.tls"] is True and s.attributes["tls.protocol.version"] == version
        assert 0 < s.duration_ns <= took * 1e9
    assert client.attributes["network.peer.port"] == port
    # nginx's cleartext hop to the backend is in the same trace, and is not marked as TLS
    assert ("nginx", SpanKind.CLIENT) in by and "tls.protocol.version" not in by[("nginx", SpanKind.CLIENT)].attributes
    # the server's span nests in the client's; its end is SSL_write's return, which on a busy machine may come a
    # little after the client already read the response
    assert client.start_ns <= server.start_ns and server.end_ns <= client.end_ns + 10_000_000
    # only plaintext was sent of the TLS connections once linked: no application-data ciphertext at all; what came
    # before the SSL object existed is handshake (nginx peeks one byte to tell TLS from plain HTTP)
    assert any(e.tls for e in seen)
    before = [e for e in seen if not e.tls]
    assert all(e.payload[:1] == b"\x16" for e in before), [(e.comm, e.direction, e.size, e.payload[:8]) for e in before]
    assert {e.pid for e in seen} >= {client.attributes["process.pid"], server.attributes["process.pid"]}
    attached = ks.source.tls.status()
    assert any(lib["path"].endswith("libssl.so.3") and lib["processes"] >= 2 for lib in attached["libraries"]), attached


NODE_CLIENT = r"""
const https = require("https"), fs = require("fs");
const [port, ca, traceparent] = process.argv.slice(1);  // with -e there is no script name
https.get({host: "127.0.0.1", port: +port, path: "/path?q=node", ca: fs.readFileSync(ca), headers: {traceparent}},
  (res) => { res.resume(); res.on("end", () => { console.log(res.statusCode); }); });
"""


async def test_nodejs_https_client_started_after_the_agent(kernel_spans, nginx_tls) -> None:  # noqa: F811
    # Debian's node links OpenSSL statically (its symbols kept): attached by symbol in the executable after its exec
    port, cert = nginx_tls
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed (apt-get install nodejs)")
    ks = await kernel_spans()
    tp = f"00-{TRACE}-{PARENT}-01"
    done = await asyncio.to_thread(subprocess.run, [node, "-e", NODE_CLIENT, str(port), str(cert), tp],
                                   capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "200", done.stderr
    (client,) = await ks.wait_for(lambda s: s.kind == SpanKind.CLIENT and s.resource.service_name == "node"
                                  and s.attributes.get("url.query") == "q=node", timeout=15)
    assert client.trace_id.hex() == TRACE and client.parent_span_id.hex() == PARENT
    assert client.attributes["helix.tls"] is True and client.attributes["http.response.status_code"] == 200


PAHO_TLS = r"""
import sys, paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
role, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-{role}", protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=ca)  # mqtts:// as users configure it: the broker's CA, certificate checked
if role == "sub":
    def on_subscribe(client, userdata, mid, reason_codes, properties):
        print("ready", flush=True)
    def on_message(client, userdata, msg):
        print(msg.topic, flush=True)
        client.disconnect()
    c.on_subscribe, c.on_message = on_subscribe, on_message
    c.connect("127.0.0.1", port)
    c.subscribe("plant/+/temp", qos=1)
    c.loop_forever()
else:
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("traceparent", sys.argv[4])]
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish("plant/7/temp", b"21.5", qos=1, properties=props).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()
"""


async def test_paho_over_mqtts_to_a_mosquitto_tls_listener(kernel_spans, tmp_path: Path) -> None:  # noqa: F811
    cert, key = self_signed(tmp_path)
    tls_port = free_port()
    ks = await kernel_spans()
    tp = f"00-{TRACE}-{PARENT}-01"
    # `user root`: the broker keeps the rights to read the test's private directory instead of dropping to mosquitto
    tls = f"user root\nlistener {tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
    with Mosquitto(workdir=tmp_path, extra_conf=tls):
        sub = await asyncio.create_subprocess_exec(sys.executable, "-c", PAHO_TLS, "sub", str(tls_port), str(cert),
                                                   stdout=asyncio.subprocess.PIPE)
        assert sub.stdout is not None
        assert (await asyncio.wait_for(sub.stdout.readline(), 15)).strip() == b"ready"
        pub = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", PAHO_TLS, "pub", str(tls_port), str(cert),
                                                       tp], capture_output=True, text=True, timeout=20)
        assert pub.returncode == 0, pub.stderr
        out, _ = await asyncio.wait_for(sub.communicate(), 15)
        assert out.strip() == b"plant/7/temp"
        in_trace = lambda s: s.trace_id.hex() == TRACE and s.attributes.get(  # noqa: E731
            "messaging.destination.name") == "plant/7/temp"
        spans = await ks.wait_for(lambda s: in_trace(s) and s.kind in (SpanKind.PRODUCER, SpanKind.CONSUMER), count=2,
                                  timeout=15)
    publish = next(s for s in spans if s.kind == SpanKind.PRODUCER)
    delivery = next(s for s in spans if s.kind == SpanKind.CONSUMER)
    assert publish.attributes["messaging.client.id"] == "paho-pub" and delivery.attributes["process.pid"] == sub.pid
    for s in (publish, delivery):
        assert s.parent_span_id.hex() == PARENT and s.attributes["helix.context_from"] == "wire"
        assert s.attributes["helix.tls"] is True and s.attributes["network.peer.port"] == tls_port


HTTPS_ON_DEMAND = r"""
import http.client, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
print("ready", flush=True)
for line in sys.stdin:
    c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
    c.request("GET", "/path?q=" + line.strip(), headers={"traceparent": sys.argv[3]})
    print(c.getresponse().status, flush=True)
    c.close()
"""


async def test_a_private_libssl_replaced_on_disk(kernel_spans, nginx_tls, tmp_path: Path) -> None:  # noqa: F811
    # A process on its own copy of libssl (not the host's), which an upgrade then replaces on disk while it runs.
    port, cert = nginx_tls
    libdir = tmp_path / "lib"
    libdir.mkdir()
    host = Path(ssl_path())
    shutil.copy(host, libdir / host.name)
    env = {**os.environ, "LD_LIBRARY_PATH": str(libdir)}
    proc = subprocess.Popen([sys.executable, "-c", HTTPS_ON_DEMAND, str(port), str(cert), f"00-{TRACE}-{PARENT}-01"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdin is not None and proc.stdout.readline() == "ready\n"
        ks = await kernel_spans()
        tls = ks.source.tls
        assert tls is not None
        assert any(lib["path"] == str(libdir / host.name) for lib in tls.status()["libraries"]), tls.status()

        async def call(tag: str) -> None:
            proc.stdin.write(tag + "\n")
            proc.stdin.flush()
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "200"
            await ks.wait_for(lambda s: s.attributes.get("process.pid") == proc.pid
                              and s.attributes.get("url.query") == f"q={tag}" and s.attributes.get("helix.tls"))

        await call("before")
        # the upgrade: a new file renamed over the old one; the process keeps the old (deleted) file mapped
        (libdir / "new").write_bytes(host.read_bytes() + b"\0" * 4096)
        os.replace(libdir / "new", libdir / host.name)
        await asyncio.to_thread(tls.scan_all)
        status = tls.status()
        assert status["attach_errors"] == 0 and ks.source.builder.stats.internal_errors == 0, status
        await call("after")  # still read, through the mapping the process has
    finally:
        proc.kill()
        proc.wait(5)


def ssl_path() -> str:
    """The host's libssl.so.3 as this process maps it."""
    import ssl  # noqa: F401  (maps it)
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libssl.so" in line:
            return line.split()[-1]
    raise AssertionError("libssl is not mapped")
