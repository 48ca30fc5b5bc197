"""The configuration section of remote configuration ([fleet])."""
from __future__ import annotations

from dataclasses import dataclass

from ..config.common import MqttConnection
from ..config.reader import boolean, duration, setting, size, str_list, string
from ..errors import ConfigError

__all__ = ["FleetConfig"]


@dataclass(slots=True, frozen=True)
class FleetConfig(MqttConnection):
    """Remote configuration: signed documents on retained MQTT topics (docs/fleet.md). `cert_file` is the per-node
    client certificate, CN = node id: the broker's ACLs key on it."""

    enabled: bool = setting(False, boolean)
    # Operator Ed25519 public keys: file paths or base64 of the 32 raw bytes.
    trusted_keys: tuple[str, ...] = setting((), str_list)
    grace: float = setting(60.0, duration(1.0, 3600.0))  # a new uplink target not reached within this is rolled back
    status_interval: float = setting(30.0, duration(1.0, 3600.0))  # how often health goes to helix/status/<node-id>
    # Highest versions seen, so a replayed older document is refused; "" = memory.
    state_dir: str = setting("/var/lib/helix/fleet", string)
    max_document: int = setting(256 * 1024, size(1024, 16 * 1024 * 1024))

    def validate(self) -> None:
        if self.enabled and not self.trusted_keys:
            raise ConfigError("fleet.trusted_keys", "fleet.enabled needs at least one operator public key to check documents")
