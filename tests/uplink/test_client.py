"""The uplink client: batching rules, bounded queue, retry until acknowledged."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from bench._workload import realistic_spans
from edge.codec.otlp import spans_from_request
from edge.demo.broker import Mosquitto, free_port
from edge.demo.otlp_peer import OtlpPeer
from uplink.client import UplinkClient

from ._helpers import as_sent, gateway_config, running_client, running_gateway, until, uplink_config


def test_queue_full_drops_are_counted() -> None:
    client = UplinkClient(uplink_config(queue_max_bytes=64 * 1024), "n")
    spans = realistic_spans(40, seed=1)
    accepted = client.submit(spans)
    assert 0 < accepted < len(spans)
    assert client.stats.dropped_queue_full == len(spans) - accepted
    assert client.stats.spans_accepted == accepted and client.stats.queued_spans == accepted
    assert client.stats.queued_bytes <= 64 * 1024


async def test_batches_cut_by_count_and_age(mosquitto: Mosquitto, otlp_peer: OtlpPeer) -> None:
    spans = realistic_spans(6, seed=2)  # 66 spans
    async with running_gateway(gateway_config(mosquitto, otlp_peer.grpc_endpoint)) as gw, \
            running_client(uplink_config(mosquitto, batch_max_spans=20, batch_max_age=1.0)) as client:
        client.submit(spans)
        await until(lambda: client.stats.batches_sent == 3, what="three full batches")
        assert client.stats.spans_sent == 60  # the remaining 6 wait for batch_max_age
        await until(lambda: client.stats.batches_sent == 4, what="the aged batch")
        await until(lambda: gw.stats.spans_exported == len(spans))
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}


async def test_batches_cut_by_bytes() -> None:
    spans = realistic_spans(5, seed=3)
    cfg = uplink_config(transport="http", url=f"http://127.0.0.1:{free_port()}/v1/batches", batch_max_bytes=4096)
    client = UplinkClient(cfg, "n")
    client.submit(spans)
    cut = client._take_batch()
    assert 1 <= len(cut) < len(spans) and cut == spans[:len(cut)]
    assert sum(s.approx_size() for s in cut) <= 4096


async def test_link_down_keeps_spans_until_the_gateway_appears(otlp_peer: OtlpPeer) -> None:
    port = free_port()
    spans = realistic_spans(3, seed=4)
    cfg = uplink_config(transport="http", url=f"http://127.0.0.1:{port}/v1/batches")
    async with running_client(cfg) as client:
        client.submit(spans)
        await until(lambda: client.stats.send_failures >= 2, what="failed sends")
        assert client.stats.spans_sent == 0 and client.stats.spooled_spans == len(spans)
        gcfg = replace(gateway_config(None, otlp_peer.grpc_endpoint), http_listen=("127.0.0.1", port))
        async with running_gateway(gcfg) as gw:
            await until(lambda: gw.stats.spans_exported == len(spans), timeout=5, what="delivery after link up")
            await until(lambda: client.stats.spooled_bytes == 0, what="spool emptied")
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}


async def test_close_flushes_what_is_queued(mosquitto: Mosquitto, otlp_peer: OtlpPeer) -> None:
    spans = realistic_spans(2, seed=5)
    async with running_gateway(gateway_config(mosquitto, otlp_peer.grpc_endpoint)) as gw:
        client = UplinkClient(uplink_config(mosquitto, batch_max_age=60.0), "n")
        task = asyncio.create_task(client.run())
        client.submit(spans)
        await asyncio.sleep(0.1)
        assert client.stats.batches_sent == 0
        await client.close(3.0)
        await task
        assert client.stats.spans_sent == len(spans) and client.stats.dropped_on_close == 0
        await until(lambda: gw.stats.spans_exported == len(spans))


async def test_close_gives_up_and_counts_when_nothing_acknowledges() -> None:
    # Memory-only spool: what is not acknowledged at close is lost, and counted.
    client = UplinkClient(uplink_config(transport="http", url=f"http://127.0.0.1:{free_port()}/v1/batches"), "n")
    task = asyncio.create_task(client.run())
    client.submit(realistic_spans(1, seed=6))
    await asyncio.sleep(0.2)
    await client.close(0.3)
    await asyncio.wait_for(asyncio.shield(task), 2) if not task.done() else None
    assert client.stats.dropped_on_close == 11 and client.stats.spans_sent == 0


async def test_disk_spool_keeps_what_close_could_not_send(tmp_path: Path, otlp_peer: OtlpPeer) -> None:
    port = free_port()
    spans = realistic_spans(4, seed=7)
    cfg = uplink_config(transport="http", url=f"http://127.0.0.1:{port}/v1/batches", spool_dir=str(tmp_path),
                        batch_max_spans=10)
    first = UplinkClient(cfg, "node-a")
    task = asyncio.create_task(first.run())
    first.submit(spans)
    await first.close(0.5)
    await asyncio.wait_for(asyncio.shield(task), 2) if not task.done() else None
    assert first.stats.dropped_on_close == 0 and first.stats.spans_sent == 0
    assert first.stats.spans_spooled == len(spans) and first.stats.spooled_batches == 5
    assert len(list((tmp_path / "node-a").glob("*.hxb"))) == 5
    # The next run of the same node resumes from the spool, oldest first, once a gateway is there.
    gcfg = replace(gateway_config(None, otlp_peer.grpc_endpoint), http_listen=("127.0.0.1", port))
    async with running_gateway(gcfg) as gw, running_client(cfg, "node-a") as second:
        await until(lambda: gw.stats.spans_exported == len(spans), what="spooled spans after restart")
        assert second.stats.spool_recovered_spans == len(spans) and second.stats.spans_sent == len(spans)
        await until(lambda: second.stats.spooled_batches == 0, what="spool emptied")
    assert list((tmp_path / "node-a").glob("*.hxb")) == []
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}
    # One OTLP request per batch, in spool order (inside a request OTLP groups spans by resource).
    got = [{s.span_id for s in spans_from_request(req)} for req in otlp_peer.requests]
    assert got == [{s.span_id for s in spans[i:i + 10]} for i in range(0, len(spans), 10)], "oldest batch first"


async def test_drain_after_an_outage_is_rate_limited(tmp_path: Path, otlp_peer: OtlpPeer) -> None:
    # 20 batches wait in the spool; at drain_rate 10/s they may not leave faster than one per 100 ms.
    port = free_port()
    spans = realistic_spans(20, seed=8)  # 220 spans -> 20 batches of 11
    cfg = uplink_config(transport="http", url=f"http://127.0.0.1:{port}/v1/batches", spool_dir=str(tmp_path),
                        batch_max_spans=11, drain_rate=10.0)
    gcfg = replace(gateway_config(None, otlp_peer.grpc_endpoint), http_listen=("127.0.0.1", port))
    async with running_client(cfg, "node-r") as client:
        client.submit(spans)
        await until(lambda: client.stats.batches_spooled == 20 and client.stats.send_failures >= 1, what="spooled")
        async with running_gateway(gcfg) as gw:
            times: list[float] = []
            seen = 0
            while gw.stats.spans_exported < len(spans):
                if gw.stats.batches_exported != seen:
                    seen = gw.stats.batches_exported
                    times.append(time.monotonic())
                await asyncio.sleep(0.005)
                assert len(times) < 100
    assert len(otlp_peer.spans()) == len(spans)
    # Arrival gaps may stretch (slow machine) but never shrink below the pace, up to scheduling noise.
    assert times[-1] - times[0] >= (len(times) - 1) * 0.1 * 0.9
    for a, b in zip(times, times[10:]):
        assert b - a >= 10 * 0.1 * 0.9, "more than drain_rate batches arrived within one second"


async def test_full_spool_evicts_oldest_and_counts(tmp_path: Path) -> None:
    cfg = uplink_config(transport="http", url=f"http://127.0.0.1:{free_port()}/v1/batches", spool_dir=str(tmp_path),
                        batch_max_spans=11, spool_max_bytes=8 * 1024, drain_rate=0.0, spool_full="evict")
    spans = realistic_spans(60, seed=9)
    async with running_client(cfg, "node-f") as client:
        for i in range(0, len(spans), 11):
            client.submit(spans[i:i + 11])
            await until(lambda: client.stats.batches_spooled == i // 11 + 1, what="batch spooled")
        st = client.stats
        assert st.spool_evicted_batches > 0 and st.spool_evicted_spans == st.spool_evicted_batches * 11
        assert st.spooled_bytes <= 8 * 1024
        assert st.spooled_spans + st.spool_evicted_spans == len(spans)
        files = sorted((tmp_path / "node-f").glob("*.hxb"))
        # Eviction took the oldest: the newest batch is still there; the batch on the wire is never evicted.
        assert len(files) == st.spooled_batches
        newest = max(int(f.name.split("-")[0]) for f in files)
        assert newest == client.spool.entries[-1].seq


async def test_reconfigure_swaps_the_transport_only_for_a_new_target(mosquitto: Mosquitto, otlp_peer: OtlpPeer) -> None:
    spans = realistic_spans(3, seed=12)
    async with running_gateway(gateway_config(mosquitto, otlp_peer.grpc_endpoint)) as gw, \
            running_client(uplink_config(batch_max_spans=5)) as client:  # a broker nobody listens on
        client.submit(spans)
        await until(lambda: client.stats.send_failures > 0, what="sends failing to the dead broker")
        dead = client._transport
        assert client.reconfigure(replace(client.cfg, batch_max_spans=11)) is False  # limits only: same transport
        assert client._transport is dead and client.cfg.batch_max_spans == 11
        assert client.reconfigure(uplink_config(mosquitto, batch_max_spans=11)) is True
        assert client._transport is not dead
        # What waited in the spool for the dead broker leaves on the new transport, nothing lost or doubled.
        await until(lambda: gw.stats.spans_exported == len(spans), timeout=10, what="spans through the new broker")
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}
