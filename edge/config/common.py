"""Settings several sections share: an MQTT broker connection with its credentials and TLS, written once.

The SDK span source, the uplink, the gateway and fleet each connect to a broker: their sections derive from
`MqttConnection`, so the keys (`broker`, `username`, `password`, `ca_file`, `cert_file`, `key_file`), their
defaults, their checks and the way a client is made from them are the same everywhere.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..net.tls import TlsSettings
from .reader import Section, setting, string

if TYPE_CHECKING:
    import ssl

    from ..net.mqtt_client import MqttClient

__all__ = ["BrokerAddress", "MqttConnection"]

log = logging.getLogger(__name__)
_warned: set[str] = set()


@dataclass(slots=True, frozen=True)
class BrokerAddress:
    """An MQTT broker given as mqtt://host:port or mqtts://host:port."""

    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, value: Any, key: str) -> BrokerAddress:
        """Parse a broker URL."""
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a broker URL such as 'mqtt://127.0.0.1:1883', got {value!r}")
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(key, f"expected a broker URL such as 'mqtt://127.0.0.1:1883' or 'mqtts://host:8883', got {value!r}")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise ConfigError(key, f"the port in {value!r} is not a number from 0 to 65535") from None
        return cls(parts.hostname, port, parts.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(slots=True, frozen=True)
class MqttConnection(Section):
    """A broker, the credentials to log in, and the TLS files for mqtts://."""

    broker: BrokerAddress = setting(BrokerAddress("127.0.0.1", 1883), BrokerAddress.parse)
    username: str = setting("", string)
    password: str = setting("", string)
    ca_file: str = setting("", string)  # TLS: CA bundle to trust; "" = the system store
    cert_file: str = setting("", string)  # TLS client certificate (PEM) for brokers that authenticate by certificate
    key_file: str = setting("", string)

    def tls(self, section: str) -> TlsSettings:
        """The TLS files of this section (`section` names it in errors, e.g. "uplink")."""
        return TlsSettings(self.ca_file, self.cert_file, self.key_file, section)

    def mqtt_ssl(self, section: str) -> ssl.SSLContext | None:
        """The SSLContext to reach the broker; None for mqtt:// (said once when TLS files are set anyway)."""
        tls = self.tls(section)
        if self.broker.tls:
            return tls.context()
        if tls.configured and section not in _warned:
            _warned.add(section)
            log.warning("%s: ca_file/cert_file are set but broker %s is not mqtts://; connecting without TLS",
                        section or "mqtt", self.broker)
        return None

    def mqtt_client(self, client_id: str, section: str, **options: Any) -> MqttClient:
        """An MQTT 5 client for this broker, logged in and with TLS as configured; `options` go to MqttClient."""
        from ..net.mqtt_client import MqttClient  # here: reading a config must not load asyncio

        return MqttClient(self.broker.host, self.broker.port, client_id, username=self.username or None,
                          password=self.password or None, ssl=self.mqtt_ssl(section), **options)
