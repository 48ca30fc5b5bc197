"""The node side of fleet operation: take signed config documents off retained topics, apply them, report status.

One task per agent (`FleetNode.run`). It subscribes to its group's and its own config topic, verifies each
document (signature by a trusted key, target, version above any seen before, valid once merged over the local
file), applies it live through `ConfigApplier`, and rolls back when a new uplink target stays unreachable for
`fleet.grace`. Every outcome, and the agent's health every `fleet.status_interval`, goes to the retained
`helix/status/<node-id>`; the connection's last will sets it to offline.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from ..config import Config
from ..errors import ConfigError, HelixError, describe
from ..net.mqtt_client import MqttClient, MqttError, Will
from ..net.retry import RateLimitedLog
from ._mqtt import group_topic, make_client, node_topic, publish_checked, status_topic
from .apply import ApplyResult, ConfigApplier
from .document import DocumentError, load_public_key, verify_document
from .merge import effective_config

__all__ = ["FleetNode", "FleetStats", "health_summary"]

log = logging.getLogger(__name__)

_KINDS = ("group", "node")


@dataclass(slots=True)
class FleetStats:
    """Documents applied, refused and rolled back; connections made."""

    applied: int = 0
    refused: int = 0
    rolled_back: int = 0
    connects: int = 0
    status_published: int = 0
    poison: int = 0  # messages whose handling failed unexpectedly (counted in `refused` too)


@dataclass(slots=True)
class _Seen:
    version: int = 0
    digest: str = ""
    outcome: str = ""  # applied | refused | rolled_back


def health_summary(agent: Any) -> dict[str, Any]:
    """The few counters an operator scans across a fleet (from `agent.status()`)."""
    try:
        st = agent.status()
    except Exception as e:  # noqa: BLE001 - a status that cannot be read must not stop status reports
        return {"error": str(e)}
    up = st.get("uplink") or {}
    gov = st.get("governor") or {}
    return {
        "spans_accepted": sum((st.get("inbox") or {}).get("accepted", {}).values()),
        "spans_dropped": sum((st.get("inbox") or {}).get("dropped_full", {}).values())
                         + sum(v for k, v in up.items() if k.startswith("dropped_") and isinstance(v, int)),
        "uplink_sent": up.get("spans_sent", 0),
        "uplink_failures": up.get("send_failures", 0),
        "spooled_batches": up.get("spooled_batches", 0),
        "kernel": (st.get("kernel") or {}).get("state", ""),
        "rss": gov.get("rss", 0) if isinstance(gov, dict) else 0,
    }


class FleetNode:
    """Runs next to an Agent: `await run()` until cancelled; `stop()` publishes offline and disconnects."""

    def __init__(self, agent: Any, applier: ConfigApplier | None = None) -> None:
        self.agent = agent
        self.local: Config = agent.cfg  # the local file: base of every merge, and the rollback of last resort
        self.cfg = agent.cfg.fleet
        self.node_id = agent.cfg.node.id
        self.group = agent.cfg.node.group
        self.trusted = [load_public_key(k) for k in self.cfg.trusted_keys]
        self.applier = applier or ConfigApplier(agent)
        self.stats = FleetStats()
        self.layers: dict[str, dict[str, Any] | None] = {"group": None, "node": None}
        self.applied: dict[str, tuple[int, str]] = {}  # kind -> (version, digest) in effect now
        self.seen: dict[str, _Seen] = {k: _Seen() for k in _KINDS}
        self.config_state = "local"  # local | applied | verifying | refused | rolled_back
        self.last_error = ""
        self.restart_needed: list[str] = []
        self.connected = asyncio.Event()
        self._client: MqttClient | None = None
        self._lock = asyncio.Lock()
        self._warn = RateLimitedLog(log, 60.0)
        self._state_file = Path(self.cfg.state_dir) / f"{self.node_id}.json" if self.cfg.state_dir else None
        self._load_state()

    # -------------------------------------------------------------------------------------------- state

    def _load_state(self) -> None:
        if self._state_file is None:
            return
        try:
            data = json.loads(self._state_file.read_text())
            for kind in _KINDS:
                s = data.get(kind) or {}
                self.seen[kind] = _Seen(int(s.get("version", 0)), str(s.get("digest", "")), str(s.get("outcome", "")))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("fleet state %s unreadable (%s); starting from version 0", self._state_file, e)

    def _save_state(self) -> None:
        if self._state_file is None:
            return
        data = {k: {"version": s.version, "digest": s.digest, "outcome": s.outcome} for k, s in self.seen.items()}
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._state_file)
        except OSError as e:
            log.warning("cannot save fleet state to %s: %s (older documents may be accepted after a restart)",
                        self._state_file, e.strerror or e)

    def config_version(self) -> dict[str, int]:
        """Versions of the group and node documents in effect (0 = none)."""
        return {k: self.applied.get(k, (0, ""))[0] for k in _KINDS}

    def status(self, state: str = "online") -> dict[str, Any]:
        """The status document published on helix/status/<node-id>."""
        return {"node": self.node_id, "group": self.group, "state": state, "config_version": self.config_version(),
                "config_state": self.config_state, "last_error": self.last_error,
                "restart_needed": self.restart_needed, "health": health_summary(self.agent), "ts": int(time.time())}

    # -------------------------------------------------------------------------------------------- documents

    async def handle(self, topic: str, payload: bytes) -> None:
        """Verify and apply one document received on `topic` (the retained message of a config topic)."""
        kind = "group" if topic == group_topic(self.group) else "node" if topic == node_topic(self.node_id) else ""
        if not kind:
            return
        if not payload:
            log.info("fleet: %s document removed; the config in effect stays until a newer one", kind)
            return
        digest = hashlib.sha256(payload).hexdigest()
        async with self._lock:
            if self.applied.get(kind, (0, ""))[1] == digest:
                return  # the same document again (reconnect)
            target = f"{kind}/{self.group if kind == 'group' else self.node_id}"
            try:
                doc = verify_document(payload, self.trusted, target, self.cfg.max_document)
            except DocumentError as e:
                await self._refuse(kind, None, digest, str(e))
                return
            seen = self.seen[kind]
            if doc.version < seen.version or (doc.version == seen.version and digest != seen.digest):
                await self._refuse(kind, None, digest,
                                   f"{kind} version {doc.version} is not newer than version {seen.version} seen before")
                return
            if doc.version == seen.version and seen.outcome != "applied":
                return  # refused or rolled back before, and already reported
            await self._apply(kind, doc.version, digest, doc.config)

    async def _apply(self, kind: str, version: int, digest: str, config: dict[str, Any]) -> None:
        layers = dict(self.layers)
        layers[kind] = config
        try:
            new = effective_config(self.local, layers["group"], layers["node"])
        except ConfigError as e:
            await self._refuse(kind, version, digest, f"{kind} v{version} invalid: {e}")
            return
        previous = self.agent.cfg
        try:
            result: ApplyResult = await self.applier.apply(new)
        except HelixError as e:
            await self._refuse(kind, version, digest, f"{kind} v{version} not applied: {e}")
            return
        if result.uplink_changed:
            self.config_state = "verifying"
            await self.publish_status()
            if not await self.applier.wait_uplink(self.cfg.grace):
                why = self.applier.last_probe_error or "no answer"
                await self.applier.apply(previous)
                self.stats.rolled_back += 1
                self.seen[kind] = _Seen(version, digest, "rolled_back")
                self._save_state()
                self.config_state = "rolled_back"
                self.last_error = (f"{kind} v{version}: uplink not reached within {self.cfg.grace:g}s ({why}); "
                                   f"rolled back to the last good config {self.config_version()}")
                log.error("fleet: %s", self.last_error)
                await self.publish_status()
                return
        self.layers = layers
        self.applied[kind] = (version, digest)
        self.seen[kind] = _Seen(version, digest, "applied")
        self._save_state()
        self.stats.applied += 1
        self.config_state = "applied"
        self.last_error = ""
        self.restart_needed = sorted(set(result.restart_needed))
        log.info("fleet: applied %s config v%d%s", kind, version,
                 f" (restart needed for {', '.join(self.restart_needed)})" if self.restart_needed else "")
        await self.publish_status()

    async def _refuse(self, kind: str, version: int | None, digest: str, why: str) -> None:
        self.stats.refused += 1
        if version is not None:
            # A verified document that failed is remembered, so its retained copy is not re-reported on reconnect.
            self.seen[kind] = _Seen(version, digest, "refused")
            self._save_state()
        self.config_state = "refused"
        self.last_error = why
        log.warning("fleet: refused %s document: %s", kind, why)
        await self.publish_status()

    async def _poison(self, topic: str, e: Exception) -> None:
        self.stats.refused += 1
        self.stats.poison += 1
        self.config_state = "refused"
        self.last_error = f"a message on {topic} could not be handled ({type(e).__name__}); ignored"
        self._warn.warning("fleet: %s: %s", self.last_error, describe(str(e), 200))
        with contextlib.suppress(Exception):
            await self.publish_status()

    # -------------------------------------------------------------------------------------------- MQTT

    async def publish_status(self, state: str = "online") -> None:
        """Publish the status document (retained); quietly skipped while disconnected."""
        client = self._client
        if client is None:
            return
        try:
            await publish_checked(client, status_topic(self.node_id), json.dumps(self.status(state)).encode(),
                                  retain=True, timeout=5.0)
            self.stats.status_published += 1
        except HelixError as e:
            log.warning("fleet: status not published: %s", e)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.status_interval)
            await self.publish_status()

    async def run(self) -> None:
        """Connect, subscribe and handle documents until cancelled; reconnects with backoff."""
        backoff = 0.5
        will = Will(status_topic(self.node_id), json.dumps(
            {"node": self.node_id, "group": self.group, "state": "offline", "ts": int(time.time())}).encode(),
            qos=1, retain=True)
        while True:
            try:
                client = make_client(self.cfg, f"helix-fleet-{self.node_id}", will=will)
                async with client:
                    self._client = client
                    self.stats.connects += 1
                    await publish_checked(client, status_topic(self.node_id), json.dumps(self.status()).encode(),
                                          retain=True)
                    await client.subscribe(group_topic(self.group), qos=1)
                    await client.subscribe(node_topic(self.node_id), qos=1)
                    self.connected.set()
                    backoff = 0.5
                    log.info("fleet: connected to %s as %s (group %s)", self.cfg.broker, self.node_id, self.group)
                    beat = asyncio.create_task(self._heartbeat())
                    try:
                        async for message in client.messages:
                            # Acknowledged when read; a document that breaks handling is counted and reported, so a
                            # retained one cannot stop the node at every connect.
                            try:
                                await self.handle(message.topic, message.payload)
                            except (MqttError, asyncio.CancelledError):
                                raise
                            except Exception as e:  # noqa: BLE001 - see above
                                await self._poison(message.topic, e)
                    finally:
                        beat.cancel()
            except (MqttError, HelixError) as e:
                self._client = None
                self.connected.clear()
                log.warning("fleet: broker %s: %s; retrying in %.1fs", self.cfg.broker, e, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 60.0)
            finally:
                self._client = None

    async def stop(self) -> None:
        """Say offline (a clean disconnect does not send the will); call before cancelling `run`."""
        await self.publish_status("offline")
