"""The span builder's state under memory pressure, on real traffic: a keep-alive connection with a request still
waiting for its response keeps its state through the governor's shrinking and drop steps, so its span is made."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from .test_kernel_spans import kernel_spans  # noqa: F401 - the fixture

pytestmark = pytest.mark.bpf

SERVER = r"""
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as servers answer HTTP/1.1 clients by default
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(1.5)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""

# One keep-alive connection used first, then 80 others (answered, left open). Its slow request is read, then the others
# each make another request while it waits: the kept-alive connection with its exchange open is the least recently
# used of all when the test squeezes the state.
CLIENT = r"""
import http.client, sys, threading, time
port = int(sys.argv[1])
sys.stdin.readline()  # the probes are up
keep = http.client.HTTPConnection("127.0.0.1", port)
keep.request("GET", "/first"); keep.getresponse().read()
others = []
for i in range(80):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", f"/other{i}"); c.getresponse().read()
    others.append(c)
print("ready", flush=True)
sys.stdin.readline()
def slow():
    keep.request("GET", "/slow"); keep.getresponse().read()
t = threading.Thread(target=slow)
t.start()
time.sleep(0.2)
for i, c in enumerate(others):
    c.request("GET", f"/again{i}"); c.getresponse().read()
print("busy", flush=True)
t.join()
print("done", flush=True)
"""


async def test_an_open_exchange_keeps_its_state_through_the_shrinking_and_drop_steps(kernel_spans) -> None:  # noqa: F811
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        ks = await kernel_spans(pids=(server.pid, client.pid))
        assert client.stdout is not None and client.stdin is not None
        client.stdin.write("start\n")
        client.stdin.flush()
        assert await asyncio.to_thread(client.stdout.readline) == "ready\n"
        await ks.wait_for(lambda s: s.attributes.get("url.path") == "/other79", count=2)
        client.stdin.write("go\n")
        client.stdin.flush()
        # The slow request read, its response still to come, every other connection used since: the governor's
        # steps at pressure, as a node tracing many more processes would take them.
        assert await asyncio.to_thread(client.stdout.readline) == "busy\n"
        await ks.wait_for(lambda s: s.attributes.get("url.path") == "/again79", count=2)
        assert ks.source.stream is not None
        ks.source.stream.poll()
        state = ks.source.state
        held = state.bytes
        state.set_bound(1)
        state.drop_all()
        assert state.bytes == held and state.evicted == {"idle": 0, "active": 0, "open": 0}
        assert await asyncio.to_thread(client.stdout.readline) == "done\n"
        slow = await ks.wait_for(lambda s: s.attributes.get("url.path") == "/slow", count=2)
        assert {s.kind.name for s in slow} == {"SERVER", "CLIENT"}
        assert ks.source.builder.stats.pending_dropped == 0
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()
                p.wait()
