"""How an uplink batch leaves the node: over MQTT (QoS 1, the broker's PUBACK) or HTTP POST to the gateway.

A transport sends one encoded batch and returns once the far side took it, else raises SendError; `permanent` says
that resending the same bytes can never succeed. `send` returns True when the batch is settled end to end (HTTP: the
gateway answers after its export), False when a gateway's confirmation is still to come (MQTT: the broker's PUBACK
only says the broker holds it; confirmations arrive on the node's ack topic, uplink/confirm.py). A transport also
publishes the table sets that format-3 batches refer to: MQTT retained on the node's table topic, HTTP PUT to the
gateway (docs/uplink-format-v3.md).
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

from edge.config.uplink import UplinkConfig
from edge.errors import DecodeError, UplinkError
from edge.net.mqtt_client import MqttClient, MqttError, reason_name
from edge.net.retry import Throttle, parse_retry_after

from .confirm import Settled, decode_confirm
from .wire import MEDIA_TYPE, NEEDS_TABLES_HEADER, TABLES_MEDIA_TYPE

__all__ = ["Transport", "SendError", "MqttTransport", "HttpTransport", "make_transport", "OnConfirm", "OnLost"]

# A gateway confirmed these (seq, outcome) pairs.
OnConfirm = Callable[[list[tuple[int, Settled]]], None]
# The connection that batches awaiting confirmation went over is gone: the broker may have lost them.
OnLost = Callable[[], None]

log = logging.getLogger(__name__)

_NO_MATCHING_SUBSCRIBERS = 0x10


class SendError(UplinkError):
    """A batch was not acknowledged; `permanent` means resending the same bytes can never succeed."""

    def __init__(self, message: str, retry_after_s: float | None = None, permanent: bool = False,
                 needs_tables: bytes | None = None) -> None:
        self.retry_after_s = retry_after_s
        self.permanent = permanent
        self.needs_tables = needs_tables  # the gateway must be given this table set first
        super().__init__(message)


class Transport(Protocol):
    """Delivers one encoded batch; True when settled end to end, False when a confirmation is to follow."""

    @property
    def connections(self) -> int:
        """Connections made so far: what was published on an earlier one may be gone (a broker restarted)."""
        ...

    async def send(self, payload: bytes) -> bool: ...

    async def publish_tables(self, table_id: bytes, message: bytes) -> None:
        """Make a table set's message available to the gateways; SendError if it was not taken."""
        ...

    async def unpublish_tables(self, table_id: bytes) -> None:
        """Withdraw a table set no batch will name again (a no-op where nothing stays published)."""
        ...

    async def close(self) -> None: ...


class MqttTransport:
    """MQTT v5 publisher that (re)connects lazily; QoS 1 waits for the broker's PUBACK and reads its reason code.

    With an ack topic it also subscribes there and passes each gateway confirmation to `on_confirm`; when the
    connection breaks it calls `on_lost`. A broker that refuses the subscription (an ACL from before confirmations)
    leaves the node on PUBACKs alone, said in the log.
    """

    def __init__(self, cfg: UplinkConfig, node_id: str, on_confirm: OnConfirm | None = None,
                 on_lost: OnLost | None = None) -> None:
        self._cfg = cfg
        self._node_id = node_id
        self._topic = cfg.topic_for(node_id)
        self._ack_topic = cfg.ack_topic_for(node_id) if on_confirm is not None else ""
        self._on_confirm = on_confirm
        self._on_lost = on_lost
        self._client: MqttClient | None = None
        self._listener: asyncio.Task[None] | None = None
        self.confirming = False  # confirmations are subscribed to on the current connection
        self.bad_confirms = 0
        self._throttle = Throttle()
        self.connections = 0

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
        self.confirming = False
        if self._ack_topic:
            try:
                await client.subscribe(self._ack_topic, qos=1)
                self.confirming = True
            except MqttError as e:
                if not client.connected:
                    await _quietly_disconnect(client)
                    raise SendError(f"uplink broker unreachable at {cfg.broker}: {e}") from None
                log.warning("uplink: %s; batches leave the spool on the broker's PUBACK alone, and a broker that "
                            "crashes loses what it had not saved (fix: let this node read %s, `helix fleet acl`)",
                            e, self._ack_topic)
        log.info("uplink connected to broker %s topic=%s%s", cfg.broker, self._topic,
                 f" confirmations on {self._ack_topic}" if self.confirming else "")
        self._client = client
        self.connections += 1
        self._listener = asyncio.ensure_future(self._listen(client))
        return client

    async def _listen(self, client: MqttClient) -> None:
        """Read confirmations until the connection ends; then report it lost."""
        try:
            async for message in client.messages:
                if message.topic != self._ack_topic or self._on_confirm is None:
                    continue
                try:
                    pairs = decode_confirm(message.payload)
                except DecodeError as e:
                    self.bad_confirms += 1
                    if self._throttle.ready("confirm"):
                        log.warning("uplink: ignored a confirmation on %s: %s", message.topic, e)
                    continue
                self._on_confirm(pairs)
        except MqttError:
            pass
        finally:
            if self._client is client:
                self._client = None
                await _quietly_disconnect(client)
            if self._on_lost is not None:
                self._on_lost()

    async def _publish(self, topic: str, payload: bytes, what: str, qos: int, retain: bool = False) -> int:
        client = self._client or await self._connect()
        try:
            return await client.publish(topic, payload, qos=qos, retain=retain, timeout=self._cfg.send_timeout)
        except MqttError as e:
            await self.close()
            raise SendError(f"uplink broker unreachable at {self._cfg.broker}: publishing {what} failed: {e}") from None

    async def send(self, payload: bytes) -> bool:
        """Publish one batch; True when the PUBACK is all there will be (no confirmations on this connection)."""
        code = await self._publish(self._topic, payload, "a batch", self._cfg.qos)
        # A refusal (not authorised, quota exceeded) or "no matching subscribers" (no gateway session would ever
        # see it) must keep the batch in the spool.
        if code >= 0x80 or code == _NO_MATCHING_SUBSCRIBERS:
            raise SendError(f"uplink broker {self._cfg.broker} did not take the batch on {self._topic}: "
                            f"{reason_name(code)} (is a gateway subscribed, and may this node publish there?)")
        return not (self.confirming and self._cfg.qos > 0)

    async def publish_tables(self, table_id: bytes, message: bytes) -> None:
        """Publish a table set retained on its topic (a gateway subscribes when it meets the id); "no matching
        subscribers" is expected: the broker keeps a retained message for the subscriptions to come."""
        topic = self._cfg.tables_topic_for(self._node_id, table_id)
        code = await self._publish(topic, message, f"table set {table_id.hex()}", 1, retain=True)
        if code >= 0x80:
            raise SendError(f"uplink broker {self._cfg.broker} did not take table set {table_id.hex()} on {topic}: "
                            f"{reason_name(code)} (may this node publish there?)")

    async def unpublish_tables(self, table_id: bytes) -> None:
        """Clear the retained message of a table set (an empty retained publish)."""
        topic = self._cfg.tables_topic_for(self._node_id, table_id)
        code = await self._publish(topic, b"", f"the end of table set {table_id.hex()}", 1, retain=True)
        if code >= 0x80:
            raise SendError(f"uplink broker {self._cfg.broker} refused clearing {topic}: {reason_name(code)}")

    async def close(self) -> None:
        """Disconnect (quietly: the connection may already be gone)."""
        client, self._client = self._client, None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
        if client is not None:
            await _quietly_disconnect(client)


async def _quietly_disconnect(client: MqttClient) -> None:
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
        # https:// with the uplink's TLS files: the CA to trust and, for gateways that identify nodes by
        # certificate, this node's client certificate.
        self._ssl = cfg.tls("uplink").context() if cfg.url.startswith("https://") else None
        self.connections = 1  # a gateway that lacks a table set says so (409): nothing to redo per connection

    async def send(self, payload: bytes) -> bool:
        """POST one batch; the gateway answers 2xx once it settled it, so this is the end-to-end confirmation."""
        status, text, headers = await self._request("POST", self._cfg.url, payload, MEDIA_TYPE)
        if 200 <= status < 300:
            return True
        url = self._cfg.url
        needs = headers.get(NEEDS_TABLES_HEADER, "")
        if status == 409 and needs:
            try:
                table_id = bytes.fromhex(needs)
            except ValueError:
                table_id = b""
            raise SendError(f"uplink gateway at {url} needs table set {needs[:16]} first", needs_tables=table_id)
        # 400/413/415: the gateway can never take these bytes; anything else may heal (auth fixed, backend back).
        raise SendError(f"uplink gateway at {url} answered {status}: {text[:200]}",
                        parse_retry_after(headers.get("Retry-After")), permanent=status in (400, 413, 415))

    async def publish_tables(self, table_id: bytes, message: bytes) -> None:
        """PUT a table set to the gateway (`<url>/../tables/<id>`); it verifies the hash and caches it."""
        url = self.tables_url(table_id)
        status, text, _ = await self._request("PUT", url, message, TABLES_MEDIA_TYPE)
        if not 200 <= status < 300:
            raise SendError(f"uplink gateway at {url} refused table set {table_id.hex()}: {status} {text[:200]}",
                            permanent=status in (400, 413, 415))

    async def unpublish_tables(self, table_id: bytes) -> None:
        """Nothing stays published over HTTP: gateways keep table sets in a cache of their own."""

    def tables_url(self, table_id: bytes) -> str:
        """Where a table set is uploaded: `tables/<id>` beside the batches URL (…/v1/batches -> …/v1/tables/<id>)."""
        from urllib.parse import urljoin

        return urljoin(self._cfg.url, f"tables/{table_id.hex()}")

    async def _request(self, method: str, url: str, body: bytes, media_type: str) -> tuple[int, str, Any]:
        aiohttp = self._aiohttp
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._cfg.send_timeout))
        try:
            headers = {**self._headers, "Content-Type": media_type}
            async with self._session.request(method, url, data=body, headers=headers, ssl=self._ssl) as resp:
                text = (await resp.content.read(512)).decode("utf-8", "replace").strip()
                return resp.status, text, resp.headers
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise SendError(f"uplink gateway unreachable at {url}: {e or type(e).__name__}") from None

    async def close(self) -> None:
        """Close the HTTP session."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def make_transport(cfg: UplinkConfig, node_id: str, on_confirm: OnConfirm | None = None,
                   on_lost: OnLost | None = None) -> Transport:
    """The transport named by `cfg.transport`; MQTT listens for confirmations when `cfg.ack_topic` is set."""
    if cfg.transport == "http":
        return HttpTransport(cfg)
    return MqttTransport(cfg, node_id, on_confirm if cfg.ack_topic else None, on_lost)
