"""The gateway's table sets: a bounded LRU cache, fetched from retained topics on a real Mosquitto, every message
verified; hostile messages (corrupt, truncated, wrong hash, another id, huge) are refused and counted."""
from __future__ import annotations

import asyncio
import hashlib
import time

import aiomqtt
import pytest
import zstandard

from bench._workload import realistic_spans
from edge.demo.broker import Mosquitto
from uplink.gateway.tables import GatewayTables, MqttTableSource, TableCache
from uplink.wire import UnknownTableSet, columnar
from uplink.wire.tables import TABLES_MAGIC

from .._helpers import gateway_config

MAX = 1 << 24


def _sets(n: int, node: str = "node-5") -> list:
    spans = realistic_spans(30, seed=31)
    return [columnar.learn(spans[i * 60:(i + 1) * 60], node_id=node, created_ns=i + 1) for i in range(n)]


def _hostile(tables: object) -> dict[str, bytes]:
    good = tables.to_message()  # type: ignore[attr-defined]
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    content = b"\x9f" + b"\x00" * 10  # CBOR that is no table set, under a correct digest
    digest = hashlib.blake2b(content, digest_size=32).digest()
    forged = TABLES_MAGIC + b"\x01" + digest + zstandard.ZstdCompressor(write_content_size=True).compress(content)
    bomb = TABLES_MAGIC + b"\x01" + bytes(32) + zstandard.ZstdCompressor(write_content_size=True).compress(bytes(8 << 20))
    return {"corrupt": bytes(flipped), "truncated": good[: len(good) // 3], "wrong hash": good[:3] + bytes(32) + good[35:],
            "not a table set": forged, "huge": bomb, "garbage": b"\x00" * 100, "empty header": b"HT"}


def test_cache_evicts_least_recently_used_by_count_and_bytes() -> None:
    a, b, c = _sets(3)
    cache = TableCache(max_sets=2, max_bytes=1 << 30)
    cache.put(a)
    cache.put(b)
    assert cache.get(a.id) is a  # a is now the most recently used
    cache.put(c)
    assert cache.get(b.id) is None and cache.get(a.id) is a and cache.get(c.id) is c and cache.evicted == 1
    small = TableCache(max_sets=100, max_bytes=a.gateway_bytes() + 1)
    small.put(a)
    small.put(b)
    assert len(small) == 1 and small.get(b.id) is b and small.bytes <= small.max_bytes + b.gateway_bytes()
    huge = TableCache(max_sets=100, max_bytes=1)
    huge.put(a)
    assert huge.get(a.id) is a  # the newest set always stays: the batch that needs it is being decoded


def test_uploads_are_verified_against_their_id() -> None:
    a, b = _sets(2)
    tables = GatewayTables(gateway_config(None, "http://127.0.0.1:1", max_table_bytes=1 << 20))
    for what, message in _hostile(a).items():
        assert not tables.upload(a.id, message, "test"), what
    assert not tables.upload(a.id, b.to_message(), "test")  # a genuine set, but not the one named
    assert tables.stats.refused == len(_hostile(a)) + 1 and tables.stats.uploaded == 0 and not tables.cache.get(a.id)
    assert tables.upload(a.id, a.to_message(), "test") and tables.cache.get(a.id).id == a.id
    assert tables.stats.cached_sets == 1 and tables.stats.cached_bytes > 0


async def test_a_batch_whose_set_is_not_held_is_not_decoded() -> None:
    (a,) = _sets(1)
    spans = realistic_spans(3, seed=9)
    data = columnar.encode(spans, "node-5", 1, a)
    tables = GatewayTables(gateway_config(None, "http://127.0.0.1:1"))
    with pytest.raises(UnknownTableSet) as e:
        await tables.decode(data, MAX, 1 << 16, fetch=True)  # no source to fetch from (an HTTP-only gateway)
    assert e.value.table_id == a.id and tables.stats.missing == 1
    tables.upload(a.id, a.to_message(), "test")
    assert (await tables.decode(data, MAX, 1 << 16, fetch=False)).spans == spans


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_fetch_from_retained_topics_refuses_hostile_messages(mosquitto: Mosquitto) -> None:
    a, b = _sets(2)
    cfg = gateway_config(mosquitto, "http://127.0.0.1:1", table_wait=1.0)
    clock = Clock()
    tables = GatewayTables(cfg, MqttTableSource(cfg), clock)
    hostile = [*_hostile(a).values(), b.to_message()]
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        # Other nodes publish junk, and a genuine set of their own, under a's id: only a's content can be a.
        for i, message in enumerate(hostile):
            await pub.publish(f"helix/uplink-tables/evil-{i}/{a.id.hex()}", message, qos=1, retain=True)
    data = columnar.encode(realistic_spans(2, seed=3), "node-5", 1, a)
    t0 = time.monotonic()
    with pytest.raises(UnknownTableSet):
        await tables.decode(data, MAX, 1 << 16, fetch=True)
    assert 1.0 <= time.monotonic() - t0 < 5  # waited for the set, in vain
    assert tables.stats.refused == len(hostile) and tables.stats.fetch_failures == 1 and tables.stats.missing == 1
    t0 = time.monotonic()
    with pytest.raises(UnknownTableSet):
        await tables.decode(data, MAX, 1 << 16, fetch=True)
    assert time.monotonic() - t0 < 0.2 and tables.stats.fetch_failures == 1  # not looked for again so soon
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:  # the node (re)publishes its set
        await pub.publish(f"helix/uplink-tables/node-5/{a.id.hex()}", a.to_message(), qos=1, retain=True)
    clock.t += 61
    assert len((await tables.decode(data, MAX, 1 << 16, fetch=True)).spans) == 22
    assert tables.stats.fetched == 1 and tables.cache.get(a.id) is not None


async def test_concurrent_batches_fetch_a_set_once(mosquitto: Mosquitto) -> None:
    (a,) = _sets(1)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        await pub.publish(f"helix/uplink-tables/node-5/{a.id.hex()}", a.to_message(), qos=1, retain=True)
    cfg = gateway_config(mosquitto, "http://127.0.0.1:1")
    tables = GatewayTables(cfg, MqttTableSource(cfg))
    found = await asyncio.gather(*(tables.find(a.id) for _ in range(5)))
    assert all(f is not None and f.id == a.id for f in found) and tables.stats.fetched == 1
