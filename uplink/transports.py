"""How an uplink batch leaves the node: over MQTT (QoS 1, the broker's PUBACK) or HTTP POST to the gateway.

A transport sends one encoded batch and returns once the far side acknowledged it, else raises SendError;
`permanent` says that resending the same bytes can never succeed.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Protocol

from edge.config.uplink import UplinkConfig
from edge.errors import UplinkError
from edge.net.mqtt_client import MqttClient, MqttError, reason_name
from edge.net.retry import parse_retry_after

from .wire import MEDIA_TYPE

__all__ = ["Transport", "SendError", "MqttTransport", "HttpTransport", "make_transport"]

log = logging.getLogger(__name__)

_NO_MATCHING_SUBSCRIBERS = 0x10


class SendError(UplinkError):
    """A batch was not acknowledged; `permanent` means resending the same bytes can never succeed."""

    def __init__(self, message: str, retry_after_s: float | None = None, permanent: bool = False) -> None:
        self.retry_after_s = retry_after_s
        self.permanent = permanent
        super().__init__(message)


class Transport(Protocol):
    """Delivers one encoded batch and returns once the far side acknowledged it, else raises SendError."""

    async def send(self, payload: bytes) -> None: ...

    async def close(self) -> None: ...


class MqttTransport:
    """MQTT v5 publisher that (re)connects lazily; QoS 1 waits for the broker's PUBACK and reads its reason code."""

    def __init__(self, cfg: UplinkConfig, node_id: str) -> None:
        self._cfg = cfg
        self._node_id = node_id
        self._topic = cfg.topic_for(node_id)
        self._client: MqttClient | None = None

    async def _connect(self) -> MqttClient:
        cfg = self._cfg
        # A random suffix: two processes with one node id (a restart overlapping the old one) must not take over
        # each other's connection; the session is clean either way.
        client = cfg.mqtt_client(f"helix-uplink-{self._node_id}-{random.getrandbits(24):06x}", "uplink",
                                 timeout=cfg.send_timeout)
        try:
            await client.connect()
        except MqttError as e:
            raise SendError(f"uplink broker unreachable at {cfg.broker}: {e}") from None
        log.info("uplink connected to broker %s topic=%s", cfg.broker, self._topic)
        self._client = client
        return client

    async def send(self, payload: bytes) -> None:
        """Publish one batch."""
        client = self._client or await self._connect()
        try:
            code = await client.publish(self._topic, payload, qos=self._cfg.qos, timeout=self._cfg.send_timeout)
        except MqttError as e:
            await self.close()
            raise SendError(f"uplink broker unreachable at {self._cfg.broker}: publish failed: {e}") from None
        # A refusal (not authorised, quota exceeded) or "no matching subscribers" (no gateway session would ever
        # see it) must keep the batch in the spool.
        if code >= 0x80 or code == _NO_MATCHING_SUBSCRIBERS:
            raise SendError(f"uplink broker {self._cfg.broker} did not take the batch on {self._topic}: "
                            f"{reason_name(code)} (is a gateway subscribed, and may this node publish there?)")

    async def close(self) -> None:
        """Disconnect (quietly: the connection may already be gone)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.disconnect(), 2.0)
            except Exception:  # noqa: BLE001 - a broken connection cannot be closed cleanly; it is dropped anyway
                pass


class HttpTransport:
    """HTTP POST of the batch bytes to the gateway's /v1/batches; honours Retry-After on 429/503."""

    def __init__(self, cfg: UplinkConfig) -> None:
        import aiohttp  # imported here so an MQTT-only node never loads it

        self._aiohttp = aiohttp
        self._cfg = cfg
        self._session: Any = None
        self._headers = {"Content-Type": MEDIA_TYPE}
        if cfg.token:
            self._headers["Authorization"] = f"Bearer {cfg.token}"

    async def send(self, payload: bytes) -> None:
        """POST one batch."""
        aiohttp = self._aiohttp
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._cfg.send_timeout))
        url = self._cfg.url
        try:
            async with self._session.post(url, data=payload, headers=self._headers) as resp:
                text = (await resp.content.read(512)).decode("utf-8", "replace").strip()
                if 200 <= resp.status < 300:
                    return
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise SendError(f"uplink gateway unreachable at {url}: {e or type(e).__name__}") from None
        # 400/413/415: the gateway can never take these bytes; anything else may heal (auth fixed, backend back).
        raise SendError(f"uplink gateway at {url} answered {resp.status}: {text[:200]}", retry_after,
                        permanent=resp.status in (400, 413, 415))

    async def close(self) -> None:
        """Close the HTTP session."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def make_transport(cfg: UplinkConfig, node_id: str) -> Transport:
    """The transport named by `cfg.transport`."""
    if cfg.transport == "http":
        return HttpTransport(cfg)
    return MqttTransport(cfg, node_id)
