"""Node -> broker/HTTP -> gateway -> OTLP peer, with real mosquitto, real gRPC and HTTP servers."""
from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import aiohttp
import aiomqtt
import cbor2
import pytest
import zstandard

from bench._workload import realistic_spans
from edge.config import Config
from edge.demo.broker import Mosquitto
from edge.demo.otlp_peer import OtlpPeer, Refusal
from uplink.gateway import serve_gateway
from uplink.wire import MEDIA_TYPE, encode_batch

from .._helpers import as_sent, gateway_config, repeated_text_spans, running_client, running_gateway, until, \
    uplink_config


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_spans_arrive_exactly_over_mqtt(mosquitto: Mosquitto, otlp_peer: OtlpPeer, protocol: str) -> None:
    endpoint = otlp_peer.grpc_endpoint if protocol == "grpc" else otlp_peer.http_endpoint
    spans = realistic_spans(30, seed=11)
    async with running_gateway(gateway_config(mosquitto, endpoint, protocol)) as gw, \
            running_client(uplink_config(mosquitto, batch_max_spans=100)) as client:
        assert client.submit(spans) == len(spans)
        await until(lambda: gw.stats.spans_exported == len(spans), what="all spans exported")
    got = as_sent(otlp_peer.spans())
    assert got == {s.span_id: s for s in spans}  # ids, parents, names, attributes, times, resource, scope, source
    assert client.stats.batches_sent == 4 and client.stats.spans_sent == len(spans)
    assert gw.stats.batches_exported == 4 and gw.stats.spans_dropped == 0


async def test_http_uplink_with_token(otlp_peer: OtlpPeer) -> None:
    spans = realistic_spans(5, seed=2)
    async with running_gateway(gateway_config(None, otlp_peer.grpc_endpoint, token="s3cret")) as gw:
        url = f"http://127.0.0.1:{gw.http_port}/v1/batches"
        async with running_client(uplink_config(transport="http", url=url, token="s3cret")) as client:
            client.submit(spans)
            await until(lambda: gw.stats.spans_exported == len(spans), what="spans over HTTP")
        assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}
        async with aiohttp.ClientSession() as http:
            body = encode_batch(spans, "intruder", 1)
            async with http.post(url, data=body, headers={"Content-Type": MEDIA_TYPE}) as resp:
                assert resp.status == 401
            async with http.post(url, data=body, headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
            async with http.post(url, data=b"garbage", headers={"Authorization": "Bearer s3cret"}) as resp:
                assert resp.status == 400 and "not a Helix uplink batch" in await resp.text()
            async with http.get(f"http://127.0.0.1:{gw.http_port}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["gateway"]["requests_unauthorized"] == 2
    assert gw.stats.batches_malformed == 1 and len(otlp_peer.spans()) == len(spans)


async def test_http_uplink_keeps_batch_while_backend_down(otlp_peer: OtlpPeer) -> None:
    # The backend refuses long enough that the gateway answers 503; the node must keep and resend the batch.
    otlp_peer.refuse(6, Refusal("UNAVAILABLE"))
    spans = realistic_spans(4, seed=9)
    async with running_gateway(gateway_config(None, otlp_peer.grpc_endpoint)) as gw:
        url = f"http://127.0.0.1:{gw.http_port}/v1/batches"
        async with running_client(uplink_config(transport="http", url=url)) as client:
            client.submit(spans)
            await until(lambda: gw.stats.spans_exported == len(spans), timeout=15, what="spans after the outage")
            assert client.stats.send_failures >= 1 and gw.stats.batches_deferred >= 1
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}


async def test_unavailable_backend_then_ok_delivers_exactly_once(mosquitto: Mosquitto, otlp_peer: OtlpPeer) -> None:
    otlp_peer.refuse(3, Refusal("UNAVAILABLE"))
    spans = realistic_spans(8, seed=4)
    async with running_gateway(gateway_config(mosquitto, otlp_peer.grpc_endpoint)) as gw, \
            running_client(uplink_config(mosquitto)) as client:
        client.submit(spans)
        await until(lambda: gw.stats.spans_exported == len(spans), what="spans after refusals")
    assert otlp_peer.attempts == 4
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}  # as_sent fails on a duplicate


async def test_malformed_batches_are_counted_and_good_ones_still_flow(mosquitto: Mosquitto, otlp_peer: OtlpPeer) -> None:
    cfg = gateway_config(mosquitto, otlp_peer.grpc_endpoint, max_batch_bytes=256 * 1024)
    bad_shape = b"HX\x01" + bytes(4) + zstandard.ZstdCompressor().compress(cbor2.dumps({"spans": [1, 2, 3]}))
    bomb = b"HX\x01" + bytes(4) + zstandard.ZstdCompressor(level=19).compress(bytes(32 * 1024 * 1024))
    oversized = encode_batch([], "n", 1) + os.urandom(300 * 1024)
    spans = realistic_spans(3, seed=5)
    async with running_gateway(cfg) as gw, aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        for payload in (os.urandom(500), bad_shape, bomb, oversized, b""):
            await pub.publish("helix/uplink/evil", payload, qos=1)
        await pub.publish("helix/uplink/good", encode_batch(spans, "good", 1), qos=1)
        await until(lambda: gw.stats.spans_exported == len(spans), what="the good batch")
    # The bomb declares 32 MiB: refused as oversized before a byte is inflated.
    assert gw.stats.batches_malformed == 3 and gw.stats.batches_oversized == 2
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}


@pytest.mark.parametrize("mqtt", [True, False])
async def test_a_batch_expanding_past_its_reservation_is_refused_and_its_node_forgets_it(
        mosquitto: Mosquitto, otlp_peer: OtlpPeer, mqtt: bool) -> None:
    # A node's own client (format 3, the default) sends 300 spans sharing one 20 KB name: ~30 KB inflated, 6 MB as
    # OTLP. The gateway refuses it for good, so the node is told and forgets it instead of sending it forever.
    hostile = repeated_text_spans(300, "q" * 20_000, in_name=True)
    spans = realistic_spans(3, seed=7)
    ucfg = uplink_config(mosquitto if mqtt else None, batch_max_spans=300, batch_max_bytes=16 << 20,
                         queue_max_bytes=32 << 20)  # one batch of them all
    async with running_gateway(gateway_config(mosquitto, otlp_peer.grpc_endpoint)) as gw:
        if not mqtt:
            ucfg = replace(ucfg, transport="http", url=f"http://127.0.0.1:{gw.http_port}/v1/batches")
        async with running_client(ucfg, "n-e") as client:
            client.submit(hostile)
            await until(lambda: client.stats.dropped_rejected == len(hostile) and client.stats.spooled_batches == 0,
                        timeout=15, what="the node told the batch is refused")
            client.submit(spans)
            await until(lambda: gw.stats.spans_exported == len(spans), timeout=15, what="the next batch")
    assert gw.stats.batches_expanding == 1 and gw.stats.batches_oversized == 0 and gw.stats.batches_exported == 1
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}


async def test_duplicate_batch_is_exported_once(mosquitto: Mosquitto, otlp_peer: OtlpPeer) -> None:
    spans = realistic_spans(2, seed=6)
    data = encode_batch(spans, "node-9", 77)
    async with running_gateway(gateway_config(mosquitto, otlp_peer.grpc_endpoint)) as gw:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            await pub.publish("helix/uplink/node-9", data, qos=1)
            await until(lambda: gw.stats.batches_exported == 1)
            await pub.publish("helix/uplink/node-9", data, qos=1)
            await until(lambda: gw.stats.batches_duplicate == 1, what="duplicate over MQTT")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{gw.http_port}/v1/batches", data=data) as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "duplicate"
            other = encode_batch(spans[:1], "node-9", 78)
            async with http.post(f"http://127.0.0.1:{gw.http_port}/v1/batches", data=other) as resp:
                assert (await resp.json())["status"] == "exported"
    assert gw.stats.batches_duplicate == 2
    assert len(otlp_peer.spans()) == len(spans) + 1


async def test_broker_restart_client_and_gateway_reconnect(mosquitto: Mosquitto, otlp_peer: OtlpPeer) -> None:
    first, later = realistic_spans(3, seed=7), realistic_spans(3, seed=8)
    async with running_gateway(gateway_config(mosquitto, otlp_peer.grpc_endpoint)) as gw, \
            running_client(uplink_config(mosquitto)) as client:
        client.submit(first)
        await until(lambda: gw.stats.spans_exported == len(first), what="spans before the restart")
        await asyncio.to_thread(mosquitto.restart)
        # Without a persistent session, a message published before the gateway resubscribes has no reader.
        await until(lambda: gw.stats.mqtt_subscriptions == 2, timeout=10, what="gateway resubscribed")
        client.submit(later)
        await until(lambda: gw.stats.spans_exported == len(first) + len(later), timeout=10, what="spans after restart")
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in first + later}


async def test_serve_gateway_runs_from_a_config(otlp_peer: OtlpPeer, mosquitto: Mosquitto) -> None:
    cfg = Config(gateway=gateway_config(mosquitto, otlp_peer.http_endpoint, "http"))
    stop = asyncio.Event()
    task = asyncio.create_task(serve_gateway(cfg, stop))
    spans = realistic_spans(2, seed=1)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        # Publish until the gateway's subscription picks one up; each copy has the same seq, so it is exported once.
        data = encode_batch(spans, "n", 1)
        for _ in range(100):
            await pub.publish("helix/uplink/n", data, qos=1)
            if otlp_peer.requests:
                break
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 15)  # it says DISCONNECT and waits for the broker (2 s each, more on a busy machine)
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}


async def test_three_gateways_share_the_load(mosquitto: Mosquitto, otlp_peer: OtlpPeer) -> None:
    base = gateway_config(mosquitto, otlp_peer.grpc_endpoint, share_group="helix")
    cfgs = [replace(base, client_id=f"gw-{i}", http_listen=None) for i in range(3)]
    spans = realistic_spans(60, seed=31)  # 660 spans -> 30 batches of 22
    async with running_gateway(cfgs[0]) as g0, running_gateway(cfgs[1]) as g1, running_gateway(cfgs[2]) as g2:
        gateways = (g0, g1, g2)
        async with running_client(uplink_config(mosquitto, batch_max_spans=22, drain_rate=0.0), "node-s") as client:
            client.submit(spans)
            await until(lambda: sum(g.stats.spans_exported for g in gateways) == len(spans), timeout=15,
                        what="all spans through the share group")
    per_gateway = [g.stats.batches_exported for g in gateways]
    assert all(n > 0 for n in per_gateway), f"batches per gateway: {per_gateway}"
    assert sum(per_gateway) == 30 and sum(g.stats.batches_duplicate for g in gateways) == 0
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}  # as_sent fails on a duplicate
