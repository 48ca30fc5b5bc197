"""The gateway's doors for format 3, with hostile input: table-set uploads that are corrupt, truncated, wrongly hashed,
for another id or huge are refused with a count; batches naming a set nobody has are never exported, never stall the
gateway for long, and leave it serving (real Mosquitto, real HTTP, the OTLP peer)."""
from __future__ import annotations

import os

import aiohttp
import aiomqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench._workload import realistic_spans
from edge.demo.broker import Mosquitto
from edge.demo.otlp_peer import OtlpPeer
from uplink.wire import MEDIA_TYPE, NEEDS_TABLES_HEADER, TABLES_MEDIA_TYPE, columnar, encode_batch

from .._helpers import as_sent, gateway_config, running_gateway, until
from .test_tables import _hostile, _sets


async def test_http_table_uploads_are_verified_and_missing_sets_asked_for(otlp_peer: OtlpPeer) -> None:
    a, b = _sets(2, node="node-u")
    spans = realistic_spans(4, seed=51)
    batch = columnar.encode(spans, "node-u", 1, a)
    async with running_gateway(gateway_config(None, otlp_peer.grpc_endpoint, token="t0ken",
                                              max_table_bytes=256 * 1024)) as gw:
        base = f"http://127.0.0.1:{gw.http_port}/v1"
        auth = {"Authorization": "Bearer t0ken"}
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.post(f"{base}/batches", data=batch, headers={"Content-Type": MEDIA_TYPE}) as resp:
                assert resp.status == 409 and resp.headers[NEEDS_TABLES_HEADER] == a.id.hex()
            for what, message in _hostile(a).items():
                async with http.put(f"{base}/tables/{a.id.hex()}", data=message) as resp:
                    assert resp.status in (400, 413), what
            async with http.put(f"{base}/tables/{a.id.hex()}", data=b.to_message()) as resp:
                assert resp.status == 400  # a genuine set under another set's id
            async with http.put(f"{base}/tables/nothex", data=a.to_message()) as resp:
                assert resp.status == 400
            async with http.put(f"{base}/tables/{a.id.hex()}", data=os.urandom(300 * 1024)) as resp:
                assert resp.status == 413
            async with aiohttp.ClientSession() as anonymous:
                async with anonymous.put(f"{base}/tables/{a.id.hex()}", data=a.to_message()) as resp:
                    assert resp.status == 401
            assert gw.tables.stats.refused == len(_hostile(a)) + 3 and gw.tables.stats.uploaded == 0
            assert gw.stats.spans_exported == 0
            async with http.put(f"{base}/tables/{a.id.hex()}", data=a.to_message(),
                                headers={"Content-Type": TABLES_MEDIA_TYPE}) as resp:
                assert resp.status == 204
            async with http.post(f"{base}/batches", data=batch) as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "exported"
            async with http.get(f"http://127.0.0.1:{gw.http_port}/healthz") as resp:
                health = await resp.json()
    assert health["tables"]["uploaded"] == 1 and health["tables"]["missing"] == 1
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}


async def test_mqtt_batches_whose_set_is_nowhere_are_not_exported_and_do_not_stall(mosquitto: Mosquitto,
                                                                                   otlp_peer: OtlpPeer) -> None:
    (a,) = _sets(1, node="node-m")
    good = realistic_spans(3, seed=52)
    cfg = gateway_config(mosquitto, otlp_peer.grpc_endpoint, table_wait=0.5)
    async with running_gateway(cfg) as gw, aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        for seq in range(5):  # the first waits table_wait for the set; the others fail at once
            await pub.publish("helix/uplink/node-m", columnar.encode(good, "node-m", seq, a), qos=1)
        await pub.publish("helix/uplink/node-g", encode_batch(good, "node-g", 1, version=2), qos=1)
        await until(lambda: gw.stats.spans_exported == len(good), timeout=5, what="the decodable batch")
        assert gw.tables.stats.missing == 5 and gw.tables.stats.fetch_failures == 1
        assert gw.stats.batches_exported == 1 and gw.stats.batches_malformed == 0
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in good}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64), st.integers(0, 2000), st.sampled_from([b"HT\x01", b"HX\x03", b"HT\x02", b""]))
def test_any_bytes_at_the_table_door_are_refused(junk: bytes, cut: int, prefix: bytes) -> None:
    (a,) = _sets(1, node="node-f")
    message = a.to_message()
    cfg = gateway_config(None, "http://127.0.0.1:1")
    from uplink.gateway.tables import GatewayTables

    tables = GatewayTables(cfg)
    for data in (prefix + junk, message[:cut] + junk, prefix + message[3:cut]):
        if data == message:
            continue
        assert not tables.upload(a.id, data, "fuzz")
    assert tables.stats.refused >= 1 and len(tables.cache) == 0
