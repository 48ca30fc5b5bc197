"""The configuration sections of the SDK span source ([sources.mqtt]) and the OTLP receivers ([sources.otlp])."""
from __future__ import annotations

from dataclasses import dataclass

from ..config.common import MqttConnection
from ..config.reader import Section, boolean, listen_or_off, setting, size, topic_filters

__all__ = ["MqttSourceConfig", "OtlpSourceConfig"]


@dataclass(slots=True, frozen=True)
class MqttSourceConfig(MqttConnection):
    """Lightweight-SDK spans arriving as CBOR over MQTT."""

    enabled: bool = setting(True, boolean)
    topics: tuple[str, ...] = setting(("helix/sdk/+/spans",), topic_filters)
    max_payload: int = setting(256 * 1024, size(64, 256 * 1024 * 1024))


@dataclass(slots=True, frozen=True)
class OtlpSourceConfig(Section):
    """OTLP receivers for local OpenTelemetry SDKs; loopback only unless configured otherwise."""

    http_listen: tuple[str, int] | None = setting(("127.0.0.1", 4318), listen_or_off)
    grpc_listen: tuple[str, int] | None = setting(("127.0.0.1", 4317), listen_or_off)
    max_request: int = setting(4 * 1024 * 1024, size(1024, 64 * 1024 * 1024))
