"""The testbed's kernel-event recorder (bench/accuracy_events.py): a real probe set beside nothing else, a real HTTP
exchange between two processes it traces, and the events written in the format the recorded-event tests replay."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from bench.accuracy_events import EventRecorder
from edge.errors import ProbeUnavailable
from edge.sources.ebpf.events import DataEvent
from tests.bpf.conftest import bpf_unavailable
from tests.edge.sources.ebpf.spans._grpc_recording import _free_port, load

pytestmark = pytest.mark.bpf

SERVER = "import http.server as h, sys; print('ready', flush=True); " \
         "h.HTTPServer(('127.0.0.1', int(sys.argv[1])), h.SimpleHTTPRequestHandler).serve_forever()"
CLIENT = "import http.client as c, sys; k = c.HTTPConnection('127.0.0.1', int(sys.argv[1])); " \
         "k.request('GET', '/?rid=recorded'); k.getresponse().read()"


async def _record(tmp: Path) -> tuple[int, int, int, Path]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True, cwd=tmp,
                              stderr=subprocess.DEVNULL)
    recorder = EventRecorder()
    try:
        assert server.stdout is not None and "ready" in server.stdout.readline()
        client = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline(); " + CLIENT, str(port)],
                                  stdin=subprocess.PIPE, text=True)
        try:
            await recorder.start([server.pid, client.pid])
        except ProbeUnavailable as e:
            client.kill()
            bpf_unavailable(str(e))
        assert client.stdin is not None
        client.stdin.write("go\n")
        client.stdin.flush()
        await asyncio.to_thread(client.wait, 30)
        await asyncio.sleep(0.5)  # the probes wake the reader at a sixteenth of the ring, else it polls every 250 ms
        path = tmp / "client.events.jsonl.gz"
        written = recorder.write(path, {client.pid})
        return written, client.pid, server.pid, path
    finally:
        recorder.close()
        server.terminate()
        server.wait(5)


def test_the_recorder_writes_the_events_of_the_processes_asked_for(tmp_path: Path) -> None:
    written, client, server, path = asyncio.run(_record(tmp_path))
    events = load(path)
    assert written == len(events) > 0
    assert {getattr(e, "pid", None) for e in events} == {client}  # the server's events are not in the client's file
    sent = [e for e in events if isinstance(e, DataEvent) and e.payload.startswith(b"GET /?rid=recorded")]
    assert len(sent) == 1 and sent[0].tid > 0
