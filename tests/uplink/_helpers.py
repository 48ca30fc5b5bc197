"""Helpers shared by the uplink tests: running a gateway and a client, polling, comparing spans."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

from edge.config import BrokerAddress, GatewayConfig, UplinkConfig
from edge.demo.broker import Mosquitto
from edge.model import Source, Span
from uplink.client import UplinkClient
from uplink.gateway import Gateway


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
