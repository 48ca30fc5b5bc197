"""Kernel events of real event-loop servers under load, recorded once and replayed by test_loop_recorded.py.

The recording is of the services scenarios 9 and 10 of bench/accuracy.py run, without SDKs: 8 client threads call
`loop` (keep-alive, a rid in the query, 5 ms between a client's requests as the testbed does); loop (aiohttp on one
asyncio thread, bench/accuracy_service.py, or a plain Node.js http server, bench/accuracy_node.js, both at their
defaults) makes 1 to 3 concurrent calls per request to `db` (ThreadingHTTPServer) with the rid as `prid`. So each
call's true request is known from the bytes alone. The events of loop are kept. Re-record (root, probes loaded):

    .venv/bin/python -m tests.edge.sources.ebpf.spans._loop_recording aiohttp \
        tests/edge/sources/ebpf/spans/aiohttp_fanout.jsonl.gz [requests]
    .venv/bin/python -m tests.edge.sources.ebpf.spans._loop_recording node \
        tests/edge/sources/ebpf/spans/node_fanout.jsonl.gz [requests]
    .venv/bin/python -m tests.edge.sources.ebpf.spans._loop_recording aiohttp-tasks \
        tests/edge/sources/ebpf/spans/aiohttp_tasks.jsonl.gz [requests]   # with the Python task-context probes
    .venv/bin/python -m tests.edge.sources.ebpf.spans._loop_recording asyncio-tasks /tmp/asyncio.jsonl.gz 300 8 \
        ~/.pyenv/versions/3.13.0/bin/python3.13   # the standard-library asyncio service, on another interpreter

Each prints the requests served and its calls' (rule, verdict) counts.
"""
from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from edge.model import SpanKind
from edge.sources.ebpf.spans.causes import CAUSE, CAUSE_VIA

from ._grpc_recording import CLIENT, _free_port, record_services


def _query(s: Any, key: str) -> str:
    return parse_qs(str(s.attributes.get("url.query", ""))).get(key, [""])[0]


def judge(spans: list[Any]) -> tuple[int, Counter[tuple[str, str]]]:
    """The requests served (with a rid), and (via, right|wrong|none) for each call: whether the request it names is the
    one whose rid its query carries as `prid`."""
    served = {s.span_id: _query(s, "rid") for s in spans if s.kind == SpanKind.SERVER and _query(s, "rid")}
    out: Counter[tuple[str, str]] = Counter()
    for c in spans:
        if c.kind != SpanKind.CLIENT or not _query(c, "prid"):
            continue
        cause = c.attributes.get(CAUSE)
        verdict = "none" if cause is None else "right" if served.get(cause) == _query(c, "prid") else "wrong"
        out[(str(c.attributes.get(CAUSE_VIA, "")), verdict)] += 1
    return len(served), out


async def _record(kind: str, path: Path, requests: int, clients: int, python_contexts: bool = False,
                  interpreter: str = sys.executable, tls_dir: Path | None = None) -> None:
    """Record `loop` of `kind` (aiohttp, asyncio: the standard-library one, node), run by `interpreter`; with
    `tls_dir` (asyncio), its calls go over HTTPS to a `db` serving the certificate there, the TLS probes attached."""
    root = Path(__file__).resolve().parents[5]
    service = str(root / "bench" / "accuracy_service.py")
    db, loop = _free_port(), _free_port()
    call = f"{'https' if tls_dir else 'http'}://127.0.0.1:{db}/db"
    tls_args = ["--tls", str(tls_dir)] if tls_dir else []
    if kind == "node":
        node = shutil.which("node") or shutil.which("nodejs")
        assert node, "Node.js not installed"
        loop_cmd = [node, str(root / "bench" / "accuracy_node.js"), "--name", "loop", "--oracle", "/dev/null",
                    "--port", str(loop), "--call", call]
    else:
        loop_cmd = [interpreter, service, "--name", "loop", "--mode", kind, "--port", str(loop), "--call",
                    call, "--oracle", "/dev/null", *tls_args]
    db_cmd = [sys.executable, service, "--name", "db", "--mode", "http", "--port", str(db), "--oracle", "/dev/null",
              *tls_args]
    await record_services(path, [db_cmd, loop_cmd], (1,),
                          [sys.executable, "-c", CLIENT, str(loop), str(requests), str(clients), "/loop", "0.005"],
                          python_contexts, tls=tls_dir is not None)


def _report(path: Path) -> None:
    """Print the requests served and each call's (rule, verdict) count of a recording, as the agent builds it."""
    from edge.sources.ebpf.spans import SpanBuilder, SpanBuilderConfig

    from ._grpc_recording import feed_as_agent, load
    served, got = judge(feed_as_agent(SpanBuilder(SpanBuilderConfig()), load(path)))
    print(served, "requests served;", ", ".join(f"{via or '-'} {verdict} {n}" for (via, verdict), n in
                                                 sorted(got.items())))


if __name__ == "__main__":
    # `aiohttp-tasks`, `asyncio-tasks`: with the Python task-context probes attached (aiohttp_tasks.jsonl.gz);
    # a fifth argument names the interpreter that runs `loop` (aiohttp, asyncio), e.g. pyenv's python3.13; a sixth a
    # directory with cert.pem and key.pem: asyncio's calls then go over HTTPS.
    asyncio.run(_record(sys.argv[1].removesuffix("-tasks"), Path(sys.argv[2]),
                        int(sys.argv[3]) if len(sys.argv) > 3 else 200, int(sys.argv[4]) if len(sys.argv) > 4 else 8,
                        sys.argv[1].endswith("-tasks"), sys.argv[5] if len(sys.argv) > 5 else sys.executable,
                        Path(sys.argv[6]) if len(sys.argv) > 6 else None))
    _report(Path(sys.argv[2]))
