"""Fleet operation: signed configuration documents over MQTT, live apply with rollback, node status (docs/fleet.md).

Modules: `document` (format, Ed25519 sign/verify, keys), `merge` (local file + group + node layers), `apply`
(`ConfigApplier`), `node` (`FleetNode`, the agent task), `acl` (Mosquitto ACL), `cli` (`helix fleet`).
Nothing is imported here, so `helix --help` does not load the crypto library.
"""
from __future__ import annotations

__all__: list[str] = []
