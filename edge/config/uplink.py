"""The configuration sections of the uplink: the node side ([uplink]) and the central gateway ([gateway]).

They sit here, below the uplink's code: the one configuration file is composed in edge/config, and uplink/ builds on
edge's base layer, never the other way round.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .common import MqttConnection
from .reader import (boolean, duration, http_url, listen_or_off, node_name, number, one_of, setting, size, str_map,
                     string, topic_filter, whole)

__all__ = ["UplinkConfig", "GatewayConfig"]


def topic_template(value: object, key: str) -> str:
    """A topic filter holding `{table_id}` once, as a whole level (where each table set is published)."""
    text = topic_filter(value, key)
    if text.count("{table_id}") != 1 or "{table_id}" not in text.split("/"):
        raise ConfigError(key, f"must hold {{table_id}} once, as a whole topic level, got {text!r}")
    return text


def table_topic(value: object, key: str) -> str:
    """`topic_template` without wildcards: the topic a node publishes a table set on."""
    text = topic_template(value, key)
    if "+" in text or "#" in text:
        raise ConfigError(key, f"is where this node publishes: no wildcards, got {text!r}")
    return text


def node_topic_filter(value: Any, key: str) -> str:
    """An MQTT topic filter with exactly one `+` level, the node id, and no `#`: the broker's ACL binds that level to
    the node that publishes, which is how the gateway knows who sent a batch."""
    s = topic_filter(value, key)
    if s.split("/").count("+") != 1 or "#" in s:
        raise ConfigError(key, f"must have exactly one '+' level (the node id) and no '#', e.g. 'helix/uplink/+'; "
                               f"got {s!r}")
    return s


def node_token_map(value: Any, key: str) -> dict[str, str]:
    """Node id -> bearer token, each token a node's own."""
    tokens = str_map(value, key)
    for node, token in tokens.items():
        node_name(node, f"{key}.{node}")
        if len(token) < 16:
            raise ConfigError(f"{key}.{node}", "a token must be at least 16 characters (e.g. `openssl rand -hex 16`)")
    if len(set(tokens.values())) != len(tokens):
        raise ConfigError(key, "two nodes share a token: each node needs its own, or the gateway cannot tell them apart")
    return tokens


@dataclass(slots=True, frozen=True)
class UplinkConfig(MqttConnection):
    """How batches leave the node. The TLS files serve mqtts:// and https:// alike (mTLS to the gateway)."""

    transport: str = setting("mqtt", one_of("mqtt", "http"))
    topic: str = setting("helix/uplink/{node_id}", string)
    qos: int = setting(1, whole(0, 1))
    url: str = setting("http://127.0.0.1:4380/v1/batches", http_url)
    token: str = setting("", string)
    batch_max_spans: int = setting(512, whole(1, 100_000))
    batch_max_bytes: int = setting(256 * 1024, size(1024, 64 * 1024 * 1024))
    batch_max_age: float = setting(2.0, duration(0.01, 3600.0))
    zstd_level: int = setting(3, whole(1, 19))
    queue_max_bytes: int = setting(8 * 1024 * 1024, size(64 * 1024, 1024**3))
    send_timeout: float = setting(10.0, duration(0.1, 300.0))
    retry_max_backoff: float = setting(30.0, duration(0.01, 3600.0))
    spool_dir: str = setting("/var/lib/helix/spool", string)  # "" keeps batches in memory only (lost on a crash)
    spool_max_bytes: int = setting(64 * 1024 * 1024, size(64 * 1024, 1024**4))
    # Batches per second at most, so a spool backlog does not storm the gateway; 0 = no limit.
    drain_rate: float = setting(20.0, number(0.0, 100_000.0))
    # Batch format version: 4 (columnar, with tables learned from the node's own spans; hex, UUID, decimal, IPv4 texts
    # in binary form), 3 (the same for gateways older than format 4) or 2 (the shipped dictionary).
    format: int = setting(4, whole(2, 4))
    # Formats 3 and 4: how often a new table set is learned from the recent spans (0: never, batches carry all
    # they need); sooner when the bytes per span grow. A set is published only when it saves more than its message
    # costs.
    learn_interval: float = setting(600.0, duration(0.0, 7 * 86400.0))
    learn_after: int = setting(256, whole(16, 1_000_000))  # spans seen before the first table set is learned
    learn_memory: int = setting(1024 * 1024, size(64 * 1024, 1024**3))  # recent spans kept to learn from
    # Where table sets are published (MQTT retained), and how long one stays after the last batch naming it left.
    tables_topic: str = setting("helix/uplink-tables/{node_id}/{table_id}", table_topic)
    tables_retain: float = setting(86400.0, duration(0.0, 365 * 86400.0))
    # MQTT: where the gateway confirms each exported batch; a batch stays spooled until then. "" = the broker's
    # PUBACK is enough (what nodes did before gateways confirmed).
    ack_topic: str = setting("helix/uplink-ack/{node_id}", string)
    # No confirmation for this long: a batch is sent again, or, when no gateway confirmed anything meanwhile (an
    # older gateway, or none running), the broker's PUBACK is taken as enough (docs/reliability.md).
    confirm_timeout: float = setting(300.0, duration(1.0, 86400.0))
    # A full spool refuses new batches (the receivers answer busy) or evicts its oldest batches (counted).
    spool_full: str = setting("refuse", one_of("refuse", "evict"))

    def topic_for(self, node_id: str) -> str:
        """The uplink topic with `{node_id}` filled in."""
        return self.topic.replace("{node_id}", node_id)

    def tables_topic_for(self, node_id: str, table_id: bytes) -> str:
        """The topic of one published table set."""
        return self.tables_topic.replace("{node_id}", node_id).replace("{table_id}", table_id.hex())

    def ack_topic_for(self, node_id: str) -> str:
        """The topic gateways confirm this node's batches on ("" when confirmations are off)."""
        return self.ack_topic.replace("{node_id}", node_id)


@dataclass(slots=True, frozen=True)
class GatewayConfig(MqttConnection):
    """The central gateway: where batches come from and where OTLP goes."""

    mqtt_enabled: bool = setting(True, boolean)
    topic: str = setting("helix/uplink/+", node_topic_filter)
    share_group: str = setting("", string)
    # Where to confirm a node's exported batches ("" = never; nodes then fall back to the broker's PUBACK).
    ack_topic: str = setting("helix/uplink-ack/{node_id}", string)
    http_listen: tuple[str, int] | None = setting(("127.0.0.1", 4380), listen_or_off)
    token: str = setting("", string)  # one token for every node: cannot tell nodes apart (see node_tokens)
    node_tokens: dict[str, str] = setting(conv=node_token_map, factory=dict)  # node id -> that node's token
    # HTTPS on http_listen; with http_client_ca_file a client certificate is required and its CN is the node id.
    http_cert_file: str = setting("", string)
    http_key_file: str = setting("", string)
    http_client_ca_file: str = setting("", string)
    export_protocol: str = setting("grpc", one_of("grpc", "http"))
    export_endpoint: str = setting("http://127.0.0.1:4317", http_url)
    export_headers: dict[str, str] = setting(conv=str_map, factory=dict)
    export_timeout: float = setting(10.0, duration(0.1, 300.0))
    retry_max_elapsed: float = setting(300.0, duration(0.0, 86400.0))
    max_batch_bytes: int = setting(8 * 1024 * 1024, size(1024, 256 * 1024 * 1024))
    max_batch_spans: int = setting(65536, whole(1, 10_000_000))
    # Resident memory the gateway keeps within: batches wait (MQTT) or are answered 503 (HTTP) when decoding them
    # would go over, and one that could never fit is refused (docs/security.md).
    memory_limit: int = setting(256 * 1024 * 1024, size(64 * 1024 * 1024, 64 * 1024**3))
    dedup_window: int = setting(65536, whole(0, 10_000_000))
    # The batches already exported, kept across restarts under <state_dir>/<client id>/; "" = in memory only.
    state_dir: str = setting("/var/lib/helix/gateway", string)
    # MQTT client id of this instance; "" = helix-gw-<hostname>. Must be unique per instance.
    client_id: str = setting("", string)
    session_expiry: float = setting(3600.0, duration(0.0, 30 * 86400.0))  # how long the broker keeps our queue
    # Table sets that format-3 batches refer to: fetched from the nodes' retained topics, cached by id (LRU).
    tables_topic: str = setting("helix/uplink-tables/+/{table_id}", topic_template)
    table_cache_sets: int = setting(1024, whole(1, 10_000_000))
    table_cache_bytes: int = setting(16 * 1024 * 1024, size(1024 * 1024, 1024**4))  # at most memory_limit / 16
    # A batch waits this long for its table set: a retained message arrives within milliseconds of the subscription
    # when it exists, and the MQTT intake waits meanwhile, so a batch naming a made-up set costs no more than this.
    table_wait: float = setting(2.0, duration(0.0, 3600.0))
    max_table_bytes: int = setting(1024 * 1024, size(64 * 1024, 64 * 1024 * 1024))  # of one set, decompressed

    def mqtt_client_id(self) -> str:
        """The fixed MQTT client id, so a restarted instance resumes its persistent session."""
        return self.client_id or f"helix-gw-{socket.gethostname().split('.')[0] or 'gateway'}"

    def subscription(self) -> str:
        """The MQTT subscription, as a shared subscription when a group is set."""
        return f"$share/{self.share_group}/{self.topic}" if self.share_group else self.topic

    def tables_filter(self, table_id: bytes) -> str:
        """The MQTT topic filter under which any node publishes the table set `table_id`."""
        return self.tables_topic.replace("{table_id}", table_id.hex())

    def node_of_topic(self, topic: str) -> str | None:
        """The node id a topic names (the level under the `+` of `topic`), or None if the topic does not match."""
        pattern, levels = self.topic.split("/"), topic.split("/")
        if len(pattern) != len(levels):
            return None
        node = None
        for want, got in zip(pattern, levels):
            if want == "+":
                node = got
            elif want != got:
                return None
        return node or None

    def validate(self) -> None:
        """HTTPS needs both the certificate and its key; a client CA needs HTTPS."""
        if bool(self.http_cert_file) != bool(self.http_key_file):
            raise ConfigError("gateway.http_key_file" if self.http_cert_file else "gateway.http_cert_file",
                              "HTTPS needs both gateway.http_cert_file and gateway.http_key_file")
        if self.http_client_ca_file and not self.http_cert_file:
            raise ConfigError("gateway.http_client_ca_file", "client certificates need HTTPS: set "
                              "gateway.http_cert_file and gateway.http_key_file too")
