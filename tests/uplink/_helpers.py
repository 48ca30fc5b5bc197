"""Helpers shared by the uplink tests: running a gateway and a client, polling, comparing spans."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path

import zstandard

from bench._workload import realistic_spans
from edge.config import BrokerAddress, GatewayConfig, UplinkConfig
from edge.demo.broker import Mosquitto
from edge.model import Source, Span
from uplink.client import UplinkClient
from uplink.gateway import Gateway
from uplink.wire import batch_v2, columnar
from uplink.wire.frame import NO_TABLES, SPANS_HEADER, SPANS_MAGIC, TABLES_HEADER


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `cond` until true, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def gateway_config(broker: Mosquitto | None, endpoint: str, protocol: str = "grpc", **kw: object) -> GatewayConfig:
    return GatewayConfig(
        mqtt_enabled=broker is not None,
        broker=BrokerAddress("127.0.0.1", broker.port) if broker else BrokerAddress("127.0.0.1", 1),
        http_listen=("127.0.0.1", 0), export_protocol=protocol, export_endpoint=endpoint,
        export_timeout=2.0, retry_max_elapsed=20.0, **{"state_dir": "", **kw},  # type: ignore[arg-type]
    )


def uplink_config(broker: Mosquitto | None = None, **kw: object) -> UplinkConfig:
    base = UplinkConfig(broker=BrokerAddress("127.0.0.1", broker.port) if broker else BrokerAddress("127.0.0.1", 1),
                        batch_max_age=0.05, send_timeout=2.0, retry_max_backoff=0.5, spool_dir="")
    return replace(base, **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def running_gateway(cfg: GatewayConfig) -> AsyncIterator[Gateway]:
    gw = Gateway(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        await asyncio.wait_for(gw.ready.wait(), 5)
        yield gw
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def running_client(cfg: UplinkConfig, node_id: str = "node-1") -> AsyncIterator[UplinkClient]:
    client = UplinkClient(cfg, node_id)
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        await client.close(3.0)
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)


def as_sent(spans: list[Span]) -> dict[bytes, Span]:
    """Spans as the OTLP peer decodes them, with `helix.source` folded back into `source`."""
    out: dict[bytes, Span] = {}
    for s in spans:
        src = s.attributes.pop("helix.source", None)
        if isinstance(src, str):
            s.source = Source(src)
        assert s.span_id not in out, f"span {s.span_id.hex()} arrived twice"
        out[s.span_id] = s
    return out


def repeated_text_spans(n: int, text: str, in_name: bool) -> list[Span]:
    """`n` copies of one span that all use one long `text` (as their name, or as an attribute value): a batch holds
    it once, by reference, and compresses the copies to a few bytes each, but an OTLP request copies it n times."""
    one = realistic_spans(1, seed=90)[0]
    use = {"name": text, "attributes": {}} if in_name else {"attributes": {"db.statement": text}}
    return [replace(one, events=(), links=(), **use) for _ in range(n)]  # type: ignore[arg-type]


def expanding_batch(n: int, text: str, version: int, node_id: str = "n", seq: int = 1) -> bytes:
    """A batch of `repeated_text_spans` (format 2: the text as their name, 3: as an attribute value), compressed apart
    from the shared compressors, which a body this large would grow."""
    spans = repeated_text_spans(n, text, in_name=version == 2)
    if version == 2:
        header, raw = SPANS_HEADER.pack(SPANS_MAGIC, 2, 0), batch_v2.body(spans, node_id, seq)
    else:
        header, raw = TABLES_HEADER.pack(SPANS_MAGIC, 3, NO_TABLES), columnar.body(spans, node_id, seq)
    return header + zstandard.ZstdCompressor(write_content_size=True).compress(raw)


def just_under_expansion(n: int, version: int) -> bytes:
    """An `expanding_batch` of `n` spans with the longest shared text the decoders still let through: its spans count
    just under the expansion bound (declared size x 24), the most a batch can take once decoded."""
    from uplink.gateway.budget import expansion_limit
    from uplink.wire import ExpansionExceeded, declared_size, decode_batch

    def fits(length: int) -> bool:
        data = expanding_batch(n, "t" * length, version)
        try:
            decode_batch(data, 64 << 20, lambda _id: None, 1 << 20, expansion_limit(declared_size(data)))
        except ExpansionExceeded:
            return False
        return True

    lo, hi = 16, 1 << 16
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return expanding_batch(n, "t" * lo, version)


ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def gateway_process(conf: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`helix gateway --config conf` as its own process, logging to `log_path`; stopped with SIGTERM (then SIGKILL)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "gateway", "--config", str(conf), "--log-level", "info"],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def vm_hwm(pid: int) -> int:
    """A process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
