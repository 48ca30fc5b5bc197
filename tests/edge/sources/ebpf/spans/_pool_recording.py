"""Kernel events of the testbed's thread-pool services under load, recorded once and replayed by test_pool_recorded.py.

bench/accuracy_service.py's `pool` (ThreadPoolExecutor, scenario 5) or `handoff` (4 threads on a queue.Queue, the
request thread waiting on an Event, scenario 5c) service behind `db`, without SDKs: k keep-alive client threads call
it with a rid in the query; its worker calls db with that rid as `prid`, so each call's true request is known from
the bytes alone. The pool service's events are kept. Record (root, probes loaded):

    .venv/bin/python -m tests.edge.sources.ebpf.spans._pool_recording pool|handoff OUT.jsonl.gz [CALLS] [CLIENTS]
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from ._grpc_recording import CLIENT, _free_port, record_services


async def _record(mode: str, path: Path, calls: int, clients: int) -> None:
    root = Path(__file__).resolve().parents[5]
    service = str(root / "bench" / "accuracy_service.py")
    db, pool = _free_port(), _free_port()
    commands = [[sys.executable, service, *args, "--oracle", "/dev/null"] for args in (
        ["--name", "db", "--mode", "http", "--port", str(db)],
        ["--name", "pool", "--mode", mode, "--port", str(pool), "--call", f"http://127.0.0.1:{db}/db"])]
    await record_services(path, commands, (1,),
                          [sys.executable, "-c", CLIENT, str(pool), str(calls), str(clients), "/pool", "0.02"])


if __name__ == "__main__":
    asyncio.run(_record(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 400,
                        int(sys.argv[4]) if len(sys.argv) > 4 else 4))
