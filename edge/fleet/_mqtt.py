"""MQTT plumbing shared by the node side and the operator CLI: topics, a client, and publishes whose refusal is seen."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiomqtt

from ..errors import HelixError
from ..mqtt_tls import tls_params

__all__ = ["group_topic", "node_topic", "status_topic", "STATUS_FILTER", "make_client", "publish_checked",
           "PublishRefused"]

STATUS_FILTER = "helix/status/+"


def group_topic(group: str) -> str:
    """Retained config document of a group."""
    return f"helix/config/group/{group}"


def node_topic(node_id: str) -> str:
    """Retained config document of one node (overrides its group's)."""
    return f"helix/config/node/{node_id}"


def status_topic(node_id: str) -> str:
    """Retained status of one node (its last will marks it offline)."""
    return f"helix/status/{node_id}"


class PublishRefused(HelixError):
    """The broker answered a publish with a refusal (not authorised, quota exceeded...)."""


def make_client(cfg: Any, identifier: str, will: aiomqtt.Will | None = None, section: str = "fleet",
                timeout: float = 10.0) -> aiomqtt.Client:
    """An MQTT v5 client for a config section with broker, username, password and TLS keys."""
    client = aiomqtt.Client(cfg.broker.host, cfg.broker.port, identifier=identifier,
                            username=cfg.username or None, password=cfg.password or None,
                            protocol=aiomqtt.ProtocolVersion.V5, will=will, timeout=timeout,
                            tls_params=tls_params(cfg, section), keepalive=30,
                            logger=logging.getLogger(__name__ + ".mqtt"))
    # aiomqtt returns from publish() on any PUBACK; the reason code (0x87 not authorised) is only seen by paho.
    paho = client._client
    acknowledged = paho.on_publish
    refusals: dict[int, str] = {}
    client._helix_refusals = refusals  # type: ignore[attr-defined]

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if getattr(reason, "value", 0) >= 0x80:
            refusals[mid] = str(reason)
        acknowledged(c, userdata, mid, reason, properties)

    paho.on_publish = on_publish
    return client


async def publish_checked(client: aiomqtt.Client, topic: str, payload: bytes, retain: bool = False,
                          timeout: float = 10.0) -> None:
    """Publish at QoS 1 and raise PublishRefused if the broker's PUBACK refuses it."""
    refusals: dict[int, str] = getattr(client, "_helix_refusals", {})
    before = set(refusals)
    try:
        await client.publish(topic, payload, qos=1, retain=retain, timeout=timeout)
    except aiomqtt.MqttError as e:
        raise HelixError(f"publish to {topic} failed: {e}") from None
    await asyncio.sleep(0)
    new = set(refusals) - before
    if new:
        reason = refusals.pop(new.pop())
        raise PublishRefused(f"the broker refused the publish to {topic}: {reason}")
