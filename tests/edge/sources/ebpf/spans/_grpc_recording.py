"""Kernel events of a real grpcio server under load, recorded once and replayed by test_grpc_recorded.py.

The recording is of bench/accuracy_service.py's gRPC service (grpcio at its defaults: a ThreadPoolExecutor of 10,
h2c) serving a grpcio client whose 4 threads share one channel, each call with its rid as metadata, and each handler
calling bench's HTTP `db` service with that rid as `prid`: the calls' true requests are known from the bytes alone.
Only the gRPC server's events are kept. Re-record (root, probes loaded):

    .venv/bin/python -m tests.edge.sources.ebpf.spans._grpc_recording tests/edge/sources/ebpf/spans/grpc_pool.jsonl.gz
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import gzip
import json
import socket
import subprocess
import sys
import typing
from pathlib import Path

from edge.sources.ebpf import events as ev_mod
from edge.sources.ebpf.events import Endpoint, KernelEvent

_TYPES = {t.__name__: t for t in (ev_mod.DataEvent, ev_mod.DataMoreEvent, ev_mod.H2Event, ev_mod.CloseEvent,
                                  ev_mod.ConnectEvent, ev_mod.WakeupEvent, ev_mod.TurnEvent, ev_mod.ExitEvent)}


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


def load(path: Path) -> list[KernelEvent]:
    """The events written by dump()."""
    out: list[KernelEvent] = []
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            cls = _TYPES[row.pop("type")]
            hints = typing.get_type_hints(cls)
            kw = {}
            for name, v in row.items():
                hint = hints[name]
                if isinstance(v, dict):
                    v = base64.b64decode(v["b64"])
                elif hint is Endpoint:
                    v = Endpoint(v[0], v[1])
                elif isinstance(hint, type) and issubclass(hint, enum.Enum):
                    v = hint(v)
                kw[name] = v
            out.append(cls(**kw))
    return out


_CLIENT = r"""
import sys, threading, time, uuid, grpc
target, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stub = grpc.insecure_channel(target).unary_unary("/acc.Chain/Call")
def run():
    for _ in range(n // k):
        rid = uuid.uuid4().hex[:12]
        stub(b"call", metadata=[("oracle-rid", rid), ("oracle-prid", "root"), ("oracle-trace", rid)], timeout=10)
        time.sleep(0.02)
ts = [threading.Thread(target=run) for _ in range(k)]
[t.start() for t in ts]
[t.join() for t in ts]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _record(path: Path, calls: int, clients: int) -> None:
    from edge.sources.ebpf.loader import KernelEventStream, ProbeSet, ProbeSettings
    root = Path(__file__).resolve().parents[5]
    service = str(root / "bench" / "accuracy_service.py")
    db_port, rpc_port = _free_port(), _free_port()
    procs = []
    try:
        for args in (["--name", "db", "--mode", "http", "--port", str(db_port)],
                     ["--name", "rpc", "--mode", "grpc", "--port", str(rpc_port),
                      "--call", f"http://127.0.0.1:{db_port}/db"]):
            p = subprocess.Popen([sys.executable, service, *args, "--oracle", "/dev/null"], stdout=subprocess.PIPE,
                                 stdin=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None
            p.stdout.readline()
        rpc = procs[1].pid
        events: list[KernelEvent] = []
        with ProbeSet(ProbeSettings()) as probes:
            probes.set_allowed_pids([rpc, procs[0].pid])
            stream = KernelEventStream(probes, events.extend)
            stream.start()
            await asyncio.to_thread(subprocess.run, [sys.executable, "-c", _CLIENT, f"127.0.0.1:{rpc_port}",
                                                     str(calls), str(clients)], check=True, timeout=120)
            for _ in range(20):
                await asyncio.sleep(0.1)
                stream.poll()
            stream.close()
        dump([e for e in events if getattr(e, "pid", None) == rpc], path)
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)


if __name__ == "__main__":
    asyncio.run(_record(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200,
                        int(sys.argv[3]) if len(sys.argv) > 3 else 4))
