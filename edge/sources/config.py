"""The configuration sections of the SDK span source ([sources.mqtt]) and the OTLP receivers ([sources.otlp])."""
from __future__ import annotations

from dataclasses import dataclass

from ..config.common import MqttConnection
from ..config.reader import Section, boolean, duration, listen_or_off, setting, size, string, topic_filters
from ..errors import ConfigError

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
    # Durable mode (docs/reliability.md): success is answered only once the request is fsynced to the accepted log
    # under `durable_dir`/<node id>; off by default (it costs a commit delay and an fsync per group of requests).
    durable: bool = setting(False, boolean)
    durable_dir: str = setting("/var/lib/helix/accepted", string)
    durable_max_bytes: int = setting(16 * 1024 * 1024, size(64 * 1024, 64 * 1024 * 1024 * 1024))
    durable_commit_delay: float = setting(0.002, duration(0.0, 0.1))

    def validate(self) -> None:
        """Durable mode needs a directory, and a log that holds at least one request."""
        if self.durable and not self.durable_dir:
            raise ConfigError("sources.otlp.durable_dir", "durable mode needs a directory for the accepted log")
        if self.durable and self.durable_max_bytes < 2 * self.max_request:
            raise ConfigError("sources.otlp.durable_max_bytes", f"must be at least twice sources.otlp.max_request "
                              f"({self.max_request} bytes), or the largest request could never be logged")
