"""Kernel events of a real grpcio server under load, recorded once and replayed by test_grpc_recorded.py.

The recording is of bench/accuracy_service.py's services as scenario 12 of bench/accuracy.py runs them, without SDKs:
4 client threads call `front` (ThreadingHTTPServer, keep-alive) with a rid in the query; front calls `rpc` through
one grpcio channel (concurrent calls are streams of one HTTP/2 connection) with the rid as `oracle-prid` metadata and
its own as `oracle-rid`; rpc (grpcio at its defaults: a ThreadPoolExecutor of 10, h2c) calls `db` over HTTP with
that rid as `prid`. So each call's true request is known from the bytes alone. The events of front and rpc are kept. Re-record (root, probes loaded):

    .venv/bin/python -m tests.edge.sources.ebpf.spans._grpc_recording tests/edge/sources/ebpf/spans/grpc_pool.jsonl.gz

grpc_pool_loaded.jsonl.gz was recorded the same way while the machine's two cores ran other work (load average 6-7).
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import gzip
import json
import os
import socket
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

from edge.sources.ebpf import events as ev_mod
from edge.sources.ebpf.events import Endpoint, KernelEvent

_TYPES = {t.__name__: t for t in (ev_mod.DataEvent, ev_mod.DataMoreEvent, ev_mod.H2Event, ev_mod.CloseEvent,
                                  ev_mod.ConnectEvent, ev_mod.WakeupEvent, ev_mod.TurnEvent, ev_mod.ExitEvent,
                                  ev_mod.PyContextEvent)}


def _plain(v: object) -> object:
    if isinstance(v, (bytes, bytearray)):
        return {"b64": base64.b64encode(v).decode()}
    if isinstance(v, Endpoint):
        return [v.addr, v.port]
    if isinstance(v, enum.Enum):
        return v.value
    return v


def dump(events: list[KernelEvent], path: Path) -> None:
    """Write events as gzipped JSON lines."""
    with gzip.open(path, "wt") as f:
        for e in events:
            row = {"type": type(e).__name__}
            row.update({fl.name: _plain(getattr(e, fl.name)) for fl in dataclasses.fields(e)})
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def load(path: Path, events: types.ModuleType = ev_mod) -> list[KernelEvent]:
    """The events written by dump(), as classes of `events` (one implementation's events module, edge/accel.py)."""
    out: list[KernelEvent] = []
    classes = {name: getattr(events, name) for name in _TYPES}
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            cls = classes[row.pop("type")]
            hints = typing.get_type_hints(_TYPES[cls.__name__])
            kw = {}
            for name, v in row.items():
                hint = hints[name]
                if isinstance(v, dict):
                    v = base64.b64decode(v["b64"])
                elif isinstance(v, list) and name == "contexts":
                    v = tuple(v)
                elif hint is Endpoint:
                    v = Endpoint(v[0], v[1])
                elif isinstance(hint, type) and issubclass(hint, enum.Enum):
                    v = hint(v)
                kw[name] = v
            out.append(cls(**kw))
    return out


_FLUSH_NS = 1_000_000_000  # the agent flushes the span builder once a second


def feed_as_agent(builder: Any, events: list[KernelEvent]) -> list[Any]:
    """The spans `builder` (either implementation's SpanBuilder) makes of `events`, flushed once a second of their
    time as the agent does, then to the end."""
    out: list[Any] = []
    batch: list[KernelEvent] = []
    flushed: int | None = None
    for ev in events:
        batch.append(ev)
        at = int(getattr(ev, "ts_ns", 0))
        if flushed is None:
            flushed = at
        elif at - flushed >= _FLUSH_NS:
            out += builder.feed(batch) + builder.flush(at)
            batch, flushed = [], at
    return out + builder.feed(batch) + builder.flush(2**62)


# The load generator: k keep-alive clients, n requests in all, each with a rid in the query, `pause` s apart.
CLIENT = r"""
import sys, threading, time, uuid, http.client
port, n, k, path, pause = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
def run():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n // k):
        rid = uuid.uuid4().hex[:12]
        conn.request("GET", f"{path}?rid={rid}&trace={rid}")
        conn.getresponse().read()
        time.sleep(pause)
ts = [threading.Thread(target=run) for _ in range(k)]
[t.start() for t in ts]
[t.join() for t in ts]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def record_services(path: Path, commands: list[list[str]], keep: tuple[int, ...], client: list[str],
                          python_contexts: bool = False, tls: bool = False) -> None:
    """Start `commands` (each prints a line once ready), run `client` while the probes trace them (with the Python
    task-context probes and the TLS probes if asked), and write the events of the processes at the indexes `keep` to
    `path`."""
    from edge.sources.ebpf.loader import KernelEventStream, ProbeSet, ProbeSettings
    from edge.sources.ebpf.py_attach import PyContextAttacher
    from edge.sources.ebpf.tls_attach import TlsAttacher
    procs = []
    try:
        for cmd in commands:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None
            p.stdout.readline()
        pids = {procs[i].pid for i in keep}
        events: list[KernelEvent] = []
        with ProbeSet(ProbeSettings()) as probes:
            probes.set_allowed_pids([p.pid for p in procs])
            stream = KernelEventStream(probes, events.extend)
            stream.start()
            contexts = PyContextAttacher(probes, os.getpid(), frozenset(p.pid for p in procs))
            if python_contexts:
                contexts.start()
            tls_probes = TlsAttacher(probes, os.getpid(), frozenset(p.pid for p in procs))
            if tls:
                tls_probes.start()
            await asyncio.to_thread(subprocess.run, client, check=True, timeout=300)
            for _ in range(20):
                await asyncio.sleep(0.1)
                stream.poll()
            stream.close()
            contexts.close()
            tls_probes.close()
        dump([e for e in events if getattr(e, "pid", None) in pids], path)
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)


async def _record(path: Path, calls: int, clients: int) -> None:
    root = Path(__file__).resolve().parents[5]
    service = str(root / "bench" / "accuracy_service.py")
    db, rpc, front = _free_port(), _free_port(), _free_port()
    commands = [[sys.executable, service, *args, "--oracle", "/dev/null"] for args in (
        ["--name", "db", "--mode", "http", "--port", str(db)],
        ["--name", "rpc", "--mode", "grpc", "--port", str(rpc), "--call", f"http://127.0.0.1:{db}/db"],
        ["--name", "front", "--mode", "http", "--port", str(front), "--call", f"grpc://127.0.0.1:{rpc}/rpc"])]
    await record_services(path, commands, (1, 2),
                          [sys.executable, "-c", CLIENT, str(front), str(calls), str(clients), "/front", "0.02"])


if __name__ == "__main__":
    asyncio.run(_record(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200,
                        int(sys.argv[3]) if len(sys.argv) > 3 else 4))
