"""Format 3 end to end with real Mosquitto, real HTTP, the gateway and the OTLP peer: a node learns table sets from
its own spans, publishes them, and every span arrives exactly once, also when its batches were spooled across a node
restart, the node moved on to a newer set, the broker lost its retained messages, the gateway restarted with an
empty cache, or another gateway of the share group takes over."""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path

import aiomqtt

from bench._workload import realistic_spans
from bench.corpus import load_all
from edge.demo.broker import Mosquitto, free_port
from edge.demo.otlp_peer import OtlpPeer
from edge.model import Span
from uplink.client import UplinkClient
from uplink.learner import LearningPolicy
from uplink.wire import NO_TABLES

from ._helpers import as_sent, gateway_config, running_gateway, until, uplink_config

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "demo-apps-sample"
# Learn after 64 spans; a candidate may follow the first as soon as the node's traffic changes.
POLICY = LearningPolicy(interval=600.0, after=64, min_gap=0.0)


def _other_traffic(copies: int) -> list[Span]:
    """Spans of real tracers (unlike the generator's), repeated under fresh ids."""
    sample = [s for spans in load_all(SAMPLE).values() for s in spans]

    def new(k: int, old: bytes) -> bytes:
        return hashlib.blake2b(bytes([k]) + old, digest_size=len(old)).digest() if old else old

    return [replace(s, trace_id=new(k, s.trace_id), span_id=new(k, s.span_id), parent_span_id=new(k, s.parent_span_id))
            for k in range(copies) for s in sample]


async def _start(cfg: object, node_id: str) -> tuple[UplinkClient, asyncio.Task[None]]:
    client = UplinkClient(cfg, node_id)  # type: ignore[arg-type]
    client.learner.policy = POLICY
    task = asyncio.create_task(client.run())
    await client.opened.wait()
    return client, task


async def _stop(client: UplinkClient, task: asyncio.Task[None], timeout: float = 3.0) -> None:
    await client.close(timeout)
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)


async def _feed(client: UplinkClient, spans: list[Span], adopted: int) -> None:
    """Submit spans a batch at a time until the node has adopted `adopted` table sets."""
    base = client.stats.spans_spooled
    for i in range(0, len(spans), 32):
        assert client.submit(spans[i:i + 32]) == len(spans[i:i + 32])
        await until(lambda: client.stats.spans_spooled >= base + i + len(spans[i:i + 32]), what="batch spooled")
        await until(lambda: not client.learner.learning, what="learning done")
    await until(lambda: client.stats.table_sets_adopted >= adopted, what=f"{adopted} table sets adopted")


async def test_node_learns_publishes_and_the_gateway_decodes_exactly(mosquitto: Mosquitto,
                                                                    otlp_peer: OtlpPeer) -> None:
    spans = realistic_spans(40, seed=41)
    async with running_gateway(gateway_config(mosquitto, otlp_peer.grpc_endpoint)) as gw:
        client, task = await _start(uplink_config(mosquitto, batch_max_spans=32), "node-t")
        try:
            await _feed(client, spans, adopted=1)
            await until(lambda: gw.stats.spans_exported == len(spans), what="all spans exported")
        finally:
            await _stop(client, task)
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}
    assert client.learner.current.id != NO_TABLES and client.stats.table_sets_published == 1
    assert gw.tables.stats.fetched == 1 and gw.tables.stats.missing == 0 and gw.stats.batches_malformed == 0


async def test_spooled_batches_of_two_sets_survive_node_restart_lost_retained_and_gateway_turnover(
        tmp_path: Path, mosquitto: Mosquitto, otlp_peer: OtlpPeer) -> None:
    cfg = uplink_config(mosquitto, batch_max_spans=32, spool_dir=str(tmp_path), drain_rate=0.0)
    first = realistic_spans(20, seed=42)  # 220 spans
    second = _other_traffic(4)  # 316
    # No gateway yet: the broker refuses batches nobody would read, so they all stay in the node's spool.
    client, task = await _start(cfg, "node-s")
    await _feed(client, first, adopted=1)
    await _feed(client, second[:160], adopted=2)  # the node's traffic changed: it moved on to a newer set
    await _feed(client, second[160:], adopted=2)
    current = client.learner.current.id
    named = {e.table_id for e in client.spool.entries} - {NO_TABLES}
    assert len(named) >= 2 and current in named and client.stats.spans_sent == 0
    await _stop(client, task, timeout=0.2)
    assert client.stats.dropped_on_close == 0
    # The broker loses its retained messages (restarted without persistence).
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        for t in named:
            await pub.publish(f"helix/uplink-tables/node-s/{t.hex()}", b"", qos=1, retain=True)
    # The node restarts on its spool, takes up its set, and publishes every set its spool names again before their
    # batches. Two gateways of a share group, which have never seen any of them, share the batches and decode all.
    gw_cfg = gateway_config(mosquitto, otlp_peer.grpc_endpoint, share_group="g", client_id="gw-1")
    async with running_gateway(gw_cfg) as gw1, running_gateway(replace(gw_cfg, client_id="gw-2")) as gw2:
        client, task = await _start(cfg, "node-s")
        try:
            assert client.learner.current.id == current and client.stats.spool_recovered_spans == 536
            await until(lambda: gw1.stats.spans_exported + gw2.stats.spans_exported == 536, timeout=20,
                        what="spooled spans exported")
        finally:
            await _stop(client, task)
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in first + second}
    for gw in (gw1, gw2):
        assert gw.stats.batches_exported > 0 and 0 < gw.tables.stats.fetched <= len(named)
        assert gw.tables.stats.missing == 0
    # The gateways restart with empty caches: the node's next batches (naming the set in use) still decode.
    more = realistic_spans(10, seed=43)
    async with running_gateway(gw_cfg) as gw1, running_gateway(replace(gw_cfg, client_id="gw-2")) as gw2:
        client, task = await _start(cfg, "node-s")
        try:
            client.submit(more)
            await until(lambda: gw1.stats.spans_exported + gw2.stats.spans_exported == len(more), timeout=10,
                        what="spans after the restart")
        finally:
            await _stop(client, task)
    assert all((gw.tables.stats.fetched > 0) == (gw.stats.batches_exported > 0) for gw in (gw1, gw2))
    assert len(otlp_peer.spans()) == 536 + len(more)


async def test_http_node_uploads_the_set_again_to_a_restarted_gateway(tmp_path: Path, otlp_peer: OtlpPeer) -> None:
    port = free_port()
    cfg = uplink_config(transport="http", url=f"http://127.0.0.1:{port}/v1/batches", batch_max_spans=32,
                        spool_dir=str(tmp_path))
    gw_cfg = replace(gateway_config(None, otlp_peer.grpc_endpoint), http_listen=("127.0.0.1", port))
    spans = realistic_spans(30, seed=44)
    client, task = await _start(cfg, "node-h")
    try:
        async with running_gateway(gw_cfg) as gw:
            await _feed(client, spans[:200], adopted=1)
            await until(lambda: gw.stats.spans_exported == 200, what="first spans")
            assert gw.tables.stats.uploaded == 1
        # The gateway restarts and has lost its cache: it answers 409 and the node uploads the set again.
        async with running_gateway(gw_cfg) as gw:
            client.submit(spans[200:])
            await until(lambda: gw.stats.spans_exported == len(spans) - 200, timeout=10, what="spans after restart")
            assert gw.tables.stats.uploaded == 1 and gw.tables.stats.missing >= 1
    finally:
        await _stop(client, task)
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}
    assert client.stats.table_sets_published >= 2 and client.stats.dropped_no_tables == 0


async def test_mqtt_batch_is_sent_again_with_its_set_when_the_gateway_could_not_find_it(
        mosquitto: Mosquitto, otlp_peer: OtlpPeer) -> None:
    # A gateway that finds no set does not confirm the batch: the node sends it again after confirm_timeout, its set
    # published again first, instead of letting it go on the broker's PUBACK as it would for a gateway that never
    # confirms. The gateway looks for a missing set again after 30 x table_wait (here 6 s).
    cfg = uplink_config(mosquitto, batch_max_spans=32, confirm_timeout=1.0)
    gw_cfg = gateway_config(mosquitto, otlp_peer.grpc_endpoint, client_id="gw-r", table_wait=0.2)
    first, later = realistic_spans(20, seed=45), realistic_spans(6, seed=46)
    client, task = await _start(cfg, "node-r")
    try:
        async with running_gateway(gw_cfg) as gw:
            await _feed(client, first, adopted=1)
            await until(lambda: client.stats.spans_confirmed == len(first), what="first spans confirmed")
        # The broker loses the retained set while the node stays connected (so it does not publish it again), and
        # keeps the gateway's session: the next batches wait there for a gateway with an empty cache.
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            await pub.publish(f"helix/uplink-tables/node-r/{client.learner.current.id.hex()}", b"", qos=1, retain=True)
        client.submit(later)
        await until(lambda: client.stats.batches_sent == client.stats.batches_spooled, what="later batches sent")
        async with running_gateway(gw_cfg) as gw:
            await until(lambda: gw.tables.stats.missing >= 1, what="the set not found")
            await until(lambda: client.stats.spans_confirmed == len(first + later), timeout=40,
                        what="later spans confirmed after the set was published again")
            assert gw.tables.stats.fetched == 1 and client.stats.batches_resent >= 1
    finally:
        await _stop(client, task)
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in first + later}
    assert client.stats.released_unconfirmed_spans == 0 and client.stats.table_sets_published >= 2
