"""Table sets on the node: kept beside the spool while a spooled batch names them, published (MQTT retained, on a real
Mosquitto) before the first batch, again on a new connection, withdrawn once retired long enough, and the set in use
taken up again after a restart."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt

from bench._workload import realistic_spans
from edge.demo.broker import Mosquitto
from uplink.table_publisher import TablePublisher
from uplink.transports import MqttTransport
from uplink.wire import NO_TABLES, columnar, parse_message

from ._helpers import uplink_config


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def _sets(n: int) -> list:
    spans = realistic_spans(30, seed=21)
    return [columnar.learn(spans[i * 100:(i + 1) * 100], node_id="node-5", created_ns=i + 1) for i in range(n)]


async def _retained(broker: Mosquitto, filter_: str) -> dict[str, bytes]:
    """What the broker holds retained under `filter_` (an empty retained message is none)."""
    out: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.subscribe(filter_, qos=1)
        try:
            async with asyncio.timeout(0.5):
                async for m in c.messages:
                    out[str(m.topic)] = bytes(m.payload)  # type: ignore[arg-type]
        except TimeoutError:
            pass
    return out


async def test_sets_are_published_retained_kept_while_named_then_withdrawn(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = uplink_config(mosquitto, tables_retain=3600.0)
    transport = MqttTransport(cfg, "node-5")
    clock = Clock()
    pub = TablePublisher(cfg.tables_retain, clock)
    assert await pub.open(tmp_path / "tables") is None
    a, b = _sets(2)
    try:
        await pub.adopt(a, a.to_message())
        assert await pub.ensure(a.id, transport) and await pub.ensure(a.id, transport)
        assert pub.stats.published == 1  # once per connection
        topic = f"helix/uplink-tables/node-5/{a.id.hex()}"
        held = await _retained(mosquitto, "helix/uplink-tables/+/" + a.id.hex())
        assert parse_message(held[topic], 1 << 20, expect_id=a.id).id == a.id
        await pub.adopt(b, b.to_message())  # the node moved on; batches naming a are still spooled
        await pub.sweep([a.id, b.id], transport, force=True)
        assert (tmp_path / "tables" / f"{a.id.hex()}.hxt").exists()
        await pub.sweep([b.id], transport, force=True)  # the last batch naming a is gone
        assert (tmp_path / "tables" / f"{a.id.hex()}.retired").exists()
        assert topic in await _retained(mosquitto, "helix/uplink-tables/#")  # kept a while for redeliveries
        clock.t += 3601
        await pub.sweep([], transport, force=True)
        assert not (tmp_path / "tables" / f"{a.id.hex()}.retired").exists() and pub.stats.withdrawn == 1
        assert topic not in await _retained(mosquitto, "helix/uplink-tables/#")
        assert (tmp_path / "tables" / f"{b.id.hex()}.hxt").exists()  # the set in use stays, named or not
        # A new connection (a broker restarted without persistence) gets the set published again.
        await transport.close()
        assert await pub.ensure(b.id, transport) and await pub.ensure(a.id, transport) is False
        assert pub.stats.missing == 1 and pub.stats.published == 2
    finally:
        await transport.close()


async def test_a_restarted_node_takes_up_its_set_and_keeps_what_its_spool_names(tmp_path: Path) -> None:
    a, b = _sets(2)
    first = TablePublisher(3600.0)
    await first.open(tmp_path)
    await first.adopt(a, a.to_message())
    await first.adopt(b, b.to_message())
    again = TablePublisher(3600.0)
    restored = await again.open(tmp_path)  # a restart
    assert restored is not None and restored.id == b.id
    spans = realistic_spans(3, seed=2)
    assert (columnar.encode(spans, "node-5", 1, restored, created_ns=1)
            == columnar.encode(spans, "node-5", 1, b, created_ns=1))
    assert set(again.store.active) == {a.id, b.id}
    # A damaged record of the set in use is not fatal: the node starts cold.
    (tmp_path / f"{b.id.hex()}.hxt").write_bytes(b"HT\x01garbage")
    assert await TablePublisher(3600.0).open(tmp_path) is None


async def test_memory_only_record(tmp_path: Path) -> None:
    (a,) = _sets(1)
    pub = TablePublisher(0.0)
    await pub.open(None)
    await pub.adopt(a, a.to_message())
    assert pub.bytes == len(a.to_message()) and await pub.store.get(a.id) == a.to_message()
    assert await pub.store.get(NO_TABLES) is None
