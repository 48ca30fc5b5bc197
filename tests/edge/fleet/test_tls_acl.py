"""Mosquitto over TLS with per-node client certificates (CN = node id) and the fleet ACL: a node cannot publish
config, cannot speak for another node, and cannot read another node's or group's config."""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.config import BrokerAddress, FleetConfig, parse_config
from edge.demo.broker import Mosquitto, free_port
from edge.errors import ConfigError
from edge.fleet._mqtt import PublishRefused, make_client, publish_checked
from edge.fleet.acl import render_acl
from edge.fleet.cli import collect_status, push
from edge.fleet.document import generate_keypair
from edge.net.mqtt_client import MqttClient

from ...pki import make_pki, tls_mosquitto

NODES = {"gw-1": "plant-3", "gw-2": "plant-4"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), [*NODES, "operator", "gateway"])


@pytest.fixture
def broker(tmp_path: Path, pki: Path) -> Iterator[tuple[Mosquitto, int]]:
    acl = tmp_path / "acl"
    acl.write_text(render_acl(NODES))
    port = free_port()
    with tls_mosquitto(tmp_path / "broker", pki, acl, port) as m:
        yield m, port


def conn(pki: Path, port: int, who: str) -> FleetConfig:
    return FleetConfig(broker=BrokerAddress("127.0.0.1", port, tls=True), ca_file=str(pki / "ca.pem"),
                       cert_file=str(pki / f"{who}.pem"), key_file=str(pki / f"{who}.key"))


async def _received(client: MqttClient, marker_topic: str, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    """Messages that arrived before the marker (the broker keeps order per session, so the marker ends the wait)."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(timeout):
        async for m in client.messages:
            if str(m.topic) == marker_topic:
                return got
            got.append((str(m.topic), bytes(m.payload)))  # type: ignore[arg-type]
    return got


async def test_node_cannot_publish_config_or_impersonate_another_node(broker, pki: Path) -> None:
    _, port = broker
    async with make_client(conn(pki, port, "operator"), "op") as op, \
            make_client(conn(pki, port, "gateway"), "gw") as gw, \
            make_client(conn(pki, port, "gw-1"), "node-gw-1") as node:
        await op.subscribe("helix/#", qos=1)
        await gw.subscribe("helix/uplink/#", qos=1)
        # Its own topics: accepted.
        await publish_checked(node, "helix/status/gw-1", b'{"node":"gw-1"}')
        await publish_checked(node, "helix/uplink/gw-1", b"batch")
        await publish_checked(node, "helix/uplink-tables/gw-1/00112233aabbccdd", b"table set", retain=True)
        # Another node's status, uplink and table sets, and any config: refused by the broker.
        for topic in ("helix/status/gw-2", "helix/uplink/gw-2", "helix/uplink-tables/gw-2/00112233aabbccdd",
                      "helix/config/node/gw-1", "helix/config/group/plant-3", "helix/config/node/gw-2"):
            with pytest.raises(PublishRefused, match="not authorized"):
                await publish_checked(node, topic, b'{"forged":true}', retain=True)
        await publish_checked(op, "helix/config/zz-marker", b"")
        seen = await _received(op, "helix/config/zz-marker")
        # The operator sees the node's own status, nothing forged (and no uplink: that is the gateway's).
        assert [t for t, _ in seen] == ["helix/status/gw-1"]
        await publish_checked(node, "helix/uplink/gw-1", b"end")
        got: list[tuple[str, bytes]] = []
        async with asyncio.timeout(5):
            async for m in gw.messages:
                got.append((str(m.topic), bytes(m.payload)))  # type: ignore[arg-type]
                if m.payload == b"end":
                    break
        assert got == [("helix/uplink/gw-1", b"batch"), ("helix/uplink/gw-1", b"end")]
        # The gateway reads a node's table sets (retained), only those the node itself published.
        await gw.subscribe("helix/uplink-tables/+/00112233aabbccdd", qos=1)
        async with asyncio.timeout(5):
            async for m in gw.messages:
                assert (str(m.topic), bytes(m.payload)) == ("helix/uplink-tables/gw-1/00112233aabbccdd", b"table set")
                break


async def test_node_reads_only_its_own_and_its_groups_config(broker, pki: Path) -> None:
    _, port = broker
    async with make_client(conn(pki, port, "operator"), "op") as op, \
            make_client(conn(pki, port, "gw-1"), "node-gw-1") as node:
        for t in ("helix/config/node/gw-1", "helix/config/group/plant-3", "helix/config/node/gw-2",
                  "helix/config/group/plant-4", "helix/status/gw-2"):
            await node.subscribe(t, qos=1)
        for t in ("helix/config/node/gw-2", "helix/config/group/plant-4", "helix/config/node/gw-1",
                  "helix/config/group/plant-3"):
            await publish_checked(op, t, t.encode())
        await publish_checked(op, "helix/config/node/gw-1", b"end")  # order is kept: this one ends the wait
        got: list[str] = []
        async with asyncio.timeout(5):
            async for m in node.messages:
                if m.payload == b"end":
                    break
                got.append(str(m.topic))
        assert sorted(got) == ["helix/config/group/plant-3", "helix/config/node/gw-1"]


async def test_agent_over_tls_with_client_certificate_takes_signed_config(broker, pki: Path, tmp_path: Path) -> None:
    _, port = broker
    priv, pub = generate_keypair(tmp_path / "op.key")
    tls = {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "gw-1.pem"), "key_file": str(pki / "gw-1.key")}
    url = f"mqtts://127.0.0.1:{port}"
    cfg = parse_config({
        "node": {"id": "gw-1", "group": "plant-3"},
        "sources": {"mqtt": {"broker": url, **tls}, "otlp": {"grpc_listen": "", "http_listen": ""},
                    "ebpf": {"enabled": False}},
        "metrics": {"listen": "", "export_interval": 0},
        "uplink": {"broker": url, "spool_dir": "", **tls},
        "fleet": {"enabled": True, "broker": url, "trusted_keys": [str(pub)], "state_dir": "", **tls},
    })
    agent = Agent(cfg)
    stop = asyncio.Event()
    runner = asyncio.create_task(agent.run(stop))
    operator = conn(pki, port, "operator")
    try:
        await asyncio.wait_for(agent.started.wait(), 15)
        await asyncio.wait_for(agent.fleet.connected.wait(), 15)
        await asyncio.wait_for(agent.mqtt.ready.wait(), 15)  # the SDK source connected with its certificate too
        doc_file = tmp_path / "doc.toml"
        doc_file.write_text("[sampler]\nratio = 0.125\n")
        await push(operator, doc_file, priv, "group/plant-3")
        async with asyncio.timeout(15):
            while agent.sampler.ratio != 0.125:
                await asyncio.sleep(0.1)
        nodes = await collect_status(operator, wait=1.0)
        assert nodes["gw-1"]["config_version"]["group"] == 1
        # A node's certificate cannot push config, even a validly signed document.
        with pytest.raises(PublishRefused):
            await push(conn(pki, port, "gw-1"), doc_file, priv, "group/plant-3")
    finally:
        stop.set()
        await asyncio.wait_for(runner, 15)


def test_tls_settings_name_the_missing_file(tmp_path: Path) -> None:
    cfg = FleetConfig(broker=BrokerAddress("h", 8883, tls=True), ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="fleet.ca_file"):
        cfg.mqtt_ssl("fleet")
    assert dataclasses.replace(cfg, broker=BrokerAddress("h", 1883)).mqtt_ssl("fleet") is None


def test_acl_refuses_names_that_are_not_topic_levels() -> None:
    with pytest.raises(ValueError):
        render_acl({"gw/1": "g"})
    text = render_acl({"gw-1": "plant-3"})
    assert "pattern write helix/status/%u" in text and "user gw-1\ntopic read helix/config/group/plant-3" in text

