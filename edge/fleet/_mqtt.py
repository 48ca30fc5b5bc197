"""MQTT plumbing shared by the node side and the operator CLI: topics, a client, and publishes whose refusal is seen."""
from __future__ import annotations

from ..config.common import MqttConnection
from ..errors import HelixError
from ..net.mqtt_client import MqttClient, MqttError, Will, reason_name

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


def make_client(cfg: MqttConnection, identifier: str, will: Will | None = None, section: str = "fleet",
                timeout: float = 10.0) -> MqttClient:
    """An MQTT v5 client for a config section's broker, credentials and TLS."""
    return cfg.mqtt_client(identifier, section, keepalive=30, will=will, timeout=timeout)


async def publish_checked(client: MqttClient, topic: str, payload: bytes, retain: bool = False,
                          timeout: float = 10.0) -> None:
    """Publish at QoS 1 and raise PublishRefused if the broker's PUBACK refuses it."""
    try:
        code = await client.publish(topic, payload, qos=1, retain=retain, timeout=timeout)
    except MqttError as e:
        raise HelixError(f"publish to {topic} failed: {e}") from None
    if code >= 0x80:
        raise PublishRefused(f"the broker refused the publish to {topic}: {reason_name(code)}")
