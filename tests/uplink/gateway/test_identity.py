"""A node cannot speak for another: the gateway takes the node from the transport (the MQTT topic the broker's ACL
binds to the node's certificate; over HTTP the node's own token or client certificate), refuses a batch claiming
another node, and deduplicates by (proven node, seq), so one node's forged sequence numbers never shadow another's.
Real Mosquitto with per-node certificates and the ACL `helix fleet acl` writes."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from bench._workload import realistic_spans
from edge.config import BrokerAddress, FleetConfig
from edge.demo.broker import free_port
from edge.demo.otlp_peer import OtlpPeer
from edge.fleet._mqtt import PublishRefused, make_client, publish_checked
from edge.fleet.acl import render_acl
from uplink.confirm import Settled, decode_confirm, encode_confirm
from uplink.wire import MEDIA_TYPE, encode_batch

from ...pki import make_pki, tls_mosquitto
from .._helpers import as_sent, gateway_config, running_client, running_gateway, until, uplink_config

NODES = {"gw-1": "plant-3", "gw-2": "plant-3"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), [*NODES, "gateway"])


@pytest.fixture
def broker(tmp_path: Path, pki: Path) -> Iterator[BrokerAddress]:
    """The broker's TLS listener (its plain one is for its own start-up probe)."""
    acl = tmp_path / "acl"
    acl.write_text(render_acl(NODES))
    port = free_port()
    with tls_mosquitto(tmp_path / "broker", pki, acl, port):
        yield BrokerAddress("127.0.0.1", port, tls=True)


def _tls(pki: Path, who: str) -> dict[str, str]:
    return {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / f"{who}.pem"), "key_file": str(pki / f"{who}.key")}


def _as(pki: Path, broker: BrokerAddress, who: str) -> FleetConfig:
    return FleetConfig(broker=broker, **_tls(pki, who))


async def test_a_node_cannot_speak_for_another_or_shadow_its_batches(broker: BrokerAddress, pki: Path,
                                                                     otlp_peer: OtlpPeer) -> None:
    gcfg = replace(gateway_config(None, otlp_peer.grpc_endpoint), mqtt_enabled=True,
                   broker=broker, **_tls(pki, "gateway"))
    forged = realistic_spans(2, seed=31)
    real = realistic_spans(30, seed=32)
    seqs = list(range(1_000, 1_030))  # node gw-2's next sequence numbers, as an attacker would guess them
    async with running_gateway(gcfg) as gw, make_client(_as(pki, broker, "gw-1"), "attacker") as a, \
            make_client(_as(pki, broker, "gw-2"), "victim") as b:
        await a.subscribe("helix/uplink-ack/gw-1", qos=1)
        await a.subscribe("helix/uplink-ack/gw-2", qos=1)  # granted, but the ACL lets nothing through
        # gw-1, on its own topic, sends batches that claim to be gw-2's: refused, never exported, and gw-1 is told.
        for seq in seqs:
            await publish_checked(a, "helix/uplink/gw-1", encode_batch(forged, "gw-2", seq))
        await until(lambda: gw.stats.batches_wrong_node == len(seqs), timeout=10, what="every forged batch refused")
        # On gw-2's topic the broker refuses it outright; and no node may write confirmations.
        for topic in ("helix/uplink/gw-2", "helix/uplink-ack/gw-2", "helix/uplink-ack/gw-1"):
            with pytest.raises(PublishRefused, match="not authorized"):
                await publish_checked(a, topic, encode_confirm([(seqs[0], Settled.EXPORTED)]))
        # gw-2's own batches with those very sequence numbers: all exported, none taken for a duplicate.
        for i, seq in enumerate(seqs):
            await publish_checked(b, "helix/uplink/gw-2", encode_batch(real[i * 11:(i + 1) * 11], "gw-2", seq))
        await until(lambda: gw.stats.spans_exported == len(real), timeout=10, what="gw-2's spans exported")
        assert gw.stats.batches_duplicate == 0 and gw.stats.batches_exported == len(seqs)
        await until(lambda: gw.confirmer.sent == 2 * len(seqs) and gw.confirmer.pending == 0, timeout=10,
                    what="confirmations sent")
        refused: list[tuple[int, Settled]] = []
        async with asyncio.timeout(10):
            async for m in a.messages:
                assert m.topic == "helix/uplink-ack/gw-1", f"gw-1 read {m.topic}"
                refused += decode_confirm(m.payload)
                if len(refused) == len(seqs):
                    break
        assert refused == [(seq, Settled.REFUSED) for seq in seqs]
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in real}


async def test_a_node_over_tls_gets_its_batches_confirmed(broker: BrokerAddress, pki: Path, otlp_peer: OtlpPeer) -> None:
    # The ACL `helix fleet acl` writes lets the node read its confirmations and the gateway write them.
    gcfg = replace(gateway_config(None, otlp_peer.grpc_endpoint), mqtt_enabled=True,
                   broker=broker, **_tls(pki, "gateway"))
    spans = realistic_spans(5, seed=33)
    ucfg = replace(uplink_config(batch_max_spans=11, **_tls(pki, "gw-2")), broker=broker)
    async with running_gateway(gcfg) as gw, running_client(ucfg, "gw-2") as client:
        client.submit(spans)
        await until(lambda: client.stats.batches_confirmed == 5 and client.stats.spooled_batches == 0, timeout=10,
                    what="every batch confirmed")
        assert gw.stats.batches_wrong_node == 0 and client.stats.confirm_fallback == 0
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}


async def _post(url: str, body: bytes, token: str = "", ssl: object = None) -> tuple[int, str]:
    headers = {"Content-Type": MEDIA_TYPE, **({"Authorization": f"Bearer {token}"} if token else {})}
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers, ssl=ssl) as resp:
        return resp.status, await resp.text()


async def test_http_node_tokens_prove_the_node(otlp_peer: OtlpPeer) -> None:
    tokens = {"n-1": "a" * 32, "n-2": "b" * 32}
    spans = realistic_spans(2, seed=34)
    async with running_gateway(gateway_config(None, otlp_peer.grpc_endpoint, node_tokens=tokens)) as gw:
        url = f"http://127.0.0.1:{gw.http_port}/v1/batches"
        status, text = await _post(url, encode_batch(spans, "n-2", 5), tokens["n-1"])
        assert status == 403 and "proves node 'n-1'" in text  # n-1's token, n-2's batch
        assert (await _post(url, encode_batch(spans, "n-2", 5), "c" * 32))[0] == 401
        assert (await _post(url, encode_batch(spans, "n-2", 5)))[0] == 401
        status, text = await _post(url, encode_batch(spans, "n-2", 5), tokens["n-2"])
        assert status == 200 and '"exported"' in text  # (n-2, 5) was not shadowed by n-1's attempt
        assert gw.stats.batches_wrong_node == 1 and gw.stats.requests_unauthorized == 2
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}


async def test_a_shared_token_or_none_proves_no_node_and_the_gateway_says_so(otlp_peer: OtlpPeer,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with running_gateway(gateway_config(None, otlp_peer.grpc_endpoint, token="s" * 20)):
        pass
    async with running_gateway(gateway_config(None, otlp_peer.grpc_endpoint)):
        pass
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "gateway.token is shared by every node" in said and "HTTP uplink without authentication" in said


async def test_https_client_certificate_proves_the_node(pki: Path, otlp_peer: OtlpPeer) -> None:
    gcfg = gateway_config(None, otlp_peer.grpc_endpoint, http_cert_file=str(pki / "server.pem"),
                          http_key_file=str(pki / "server.key"), http_client_ca_file=str(pki / "ca.pem"))
    spans = realistic_spans(3, seed=35)
    async with running_gateway(gcfg) as gw:
        url = f"https://127.0.0.1:{gw.http_port}/v1/batches"
        # The node's own uplink over HTTPS with its certificate (uplink.cert_file): delivered, as itself.
        ucfg = uplink_config(transport="http", url=url, batch_max_spans=11, **_tls(pki, "gw-1"))
        async with running_client(ucfg, "gw-1") as client:
            client.submit(spans)
            await until(lambda: client.stats.batches_confirmed == 3 and client.stats.spooled_batches == 0,
                        timeout=10, what="batches over HTTPS")
        ctx = replace(ucfg).tls("uplink").context()
        status, text = await _post(url, encode_batch(spans, "gw-2", 9), ssl=ctx)
        assert status == 403 and "client certificate proves node 'gw-1'" in text
        # Without a client certificate the TLS handshake itself fails.
        bare = replace(ucfg, cert_file="", key_file="").tls("uplink").context()
        with pytest.raises(aiohttp.ClientError):
            await _post(url, encode_batch(spans, "gw-1", 10), ssl=bare)
        assert gw.stats.batches_wrong_node == 1
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}


def test_the_acl_lets_only_gateways_write_confirmations_and_only_their_node_read_them() -> None:
    text = render_acl({"gw-1": "plant-3"})
    assert "pattern read helix/uplink-ack/%u" in text and "pattern write helix/uplink/%u" in text
    gateway = text[text.index("user gateway"):].split("\n\n")[0]
    assert "topic write helix/uplink-ack/#" in gateway
    assert "helix/uplink-ack" not in text[text.index("user operator"):].split("\n\n")[0]
