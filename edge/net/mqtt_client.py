"""A small MQTT 5 client on asyncio streams, for the agent's own connections (SDK span source, uplink, fleet) and
the gateway's.

paho-mqtt and aiomqtt would cost the agent ~4 MiB of resident memory (paho loads urllib.request, http.client and the
email package), and what the agent and the gateway need is not in aiomqtt's API: acknowledging a message only once it
is handled (spans in the inbox, a batch exported), and seeing a PUBACK's reason code. This client does those directly:

- `publish()` at QoS 1 returns the PUBACK's reason code (0x10 "no matching subscribers" included); at most the
  broker's Receive Maximum publishes are in flight.
- Received PUBLISHes queue until read from `messages`; the queue is bounded (`max_queued`), and a full queue
  stops the reader, so the broker holds the backlog (TCP and, at QoS 1, our Receive Maximum hold it back).
  With `manual_ack` a QoS 1 message is acknowledged by `ack()`; otherwise when it is read.
- With `clean_start=False` and a `session_expiry` the session persists: what the broker queued while the client
  was away, and what it sent that was never acknowledged, arrives after the next connect.
- With `max_packet_size` the broker is told not to send larger packets (it drops those messages for us), and
  one sent anyway ends the connection before its body is read.
- Keepalive: PINGREQ when nothing was sent for half the keepalive; no packet from the broker for 1.5 keepalives
  ends the connection.
- Any failure (refused CONNECT, broken connection, malformed packet, timeout) raises `MqttError`; pending
  publishes and subscriptions fail with it, and `messages` yields what was already received, then raises it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import HelixError
from ..protocols import mqtt_encode as enc
from ..protocols.mqtt import MQTT_5, Connack, Disconnect, PacketType, PropertyId, PubAck, Publish, Suback, parse_packet
from ..protocols.mqtt_encode import Will

__all__ = ["MqttClient", "MqttError", "Message", "Will", "reason_name"]

log = logging.getLogger(__name__)

_REASONS = {
    0x00: "success", 0x10: "no matching subscribers", 0x80: "unspecified error", 0x81: "malformed packet",
    0x82: "protocol error", 0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password", 0x87: "not authorized",
    0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned", 0x8B: "server shutting down",
    0x8C: "bad authentication method", 0x8D: "keep alive timeout", 0x8E: "session taken over",
    0x8F: "topic filter invalid", 0x90: "topic name invalid", 0x91: "packet identifier in use",
    0x93: "receive maximum exceeded", 0x95: "packet too large", 0x97: "quota exceeded",
    0x99: "payload format invalid", 0x9A: "retain not supported", 0x9B: "QoS not supported",
    0x9C: "use another server", 0x9D: "server moved", 0x9F: "connection rate exceeded",
    0xA2: "wildcard subscriptions not supported",
}


def reason_name(code: int) -> str:
    """An MQTT 5 reason code as the spec names it, e.g. 'not authorized (0x87)'."""
    return f"{_REASONS.get(code, 'reason')} (0x{code:02x})"


class MqttError(HelixError):
    """The MQTT connection failed or the broker refused something; the message says what and where."""


@dataclass(slots=True)
class Message:
    """One received PUBLISH."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    packet_id: int | None = None
    user_properties: list[tuple[str, str]] = field(default_factory=list)


class MqttClient:
    """One MQTT 5 connection; `async with` connects and disconnects."""

    def __init__(self, host: str, port: int, client_id: str, *, username: str | None = None,
                 password: str | None = None, ssl: Any = None, keepalive: int = 30, will: Will | None = None,
                 receive_maximum: int | None = None, max_queued: int = 1024, manual_ack: bool = False,
                 max_packet_size: int | None = None, clean_start: bool = True, session_expiry: int | None = None,
                 timeout: float = 10.0) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self._username, self._password, self._ssl = username, password, ssl
        self.keepalive = keepalive
        self._will = will
        self._receive_maximum = receive_maximum
        self._manual_ack = manual_ack
        # A persistent session (clean_start=False, session_expiry > 0): the broker keeps subscriptions and
        # unacknowledged messages while this client is away and hands them over when it comes back.
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        # Declared in CONNECT: the broker must not send a larger packet (it drops the message for this client), so
        # one huge publish cannot make the agent read it into memory. A broker that sends one anyway is cut off.
        self._max_incoming = min(max_packet_size or enc.MAX_PACKET, enc.MAX_PACKET)
        self._declare_max = max_packet_size is not None
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._incoming: asyncio.Queue[Message] = asyncio.Queue(max_queued)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._inflight = asyncio.Semaphore(65535)
        self._max_packet = enc.MAX_PACKET
        self._error: MqttError | None = None
        self._closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_sent = self._last_received = 0.0
        self._held_back = False  # the reader waits for room in the queue

    @property
    def where(self) -> str:
        """host:port for messages."""
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """True while the connection is up (a refused subscription leaves it up; a broken one does not)."""
        return self._writer is not None and self._error is None

    async def __aenter__(self) -> MqttClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def connect(self) -> None:
        """Open the connection and wait for the broker's CONNACK; raises MqttError when refused or unreachable."""
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self._ssl,
                                        server_hostname=self.host if self._ssl else None), self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise MqttError(f"cannot connect to the MQTT broker at {self.where}: "
                            f"{getattr(e, 'strerror', None) or e or 'timed out'}") from None
        self._send(enc.connect(self.client_id, self.keepalive, username=self._username, password=self._password,
                               will=self._will, receive_maximum=self._receive_maximum,
                               maximum_packet_size=self._max_incoming if self._declare_max else None,
                               clean_start=self._clean_start, session_expiry=self._session_expiry))
        try:
            connack = await asyncio.wait_for(self._read_packet(), self.timeout)
        except asyncio.TimeoutError:
            await self._abort()
            raise MqttError(f"the MQTT broker at {self.where} did not answer CONNECT within {self.timeout:g}s") from None
        except MqttError:
            await self._abort()
            raise
        if not isinstance(connack, Connack):
            await self._abort()
            raise MqttError(f"the MQTT broker at {self.where} answered CONNECT with something else than CONNACK")
        if connack.reason_code >= 0x80:
            await self._abort()
            raise MqttError(f"the MQTT broker at {self.where} refused the connection: {reason_name(connack.reason_code)}")
        props = connack.properties
        self._inflight = asyncio.Semaphore(int(props.get(PropertyId.RECEIVE_MAXIMUM, 65535)))  # type: ignore[arg-type]
        self._max_packet = int(props.get(PropertyId.MAXIMUM_PACKET_SIZE, enc.MAX_PACKET))  # type: ignore[arg-type]
        self.keepalive = int(props.get(PropertyId.SERVER_KEEP_ALIVE, self.keepalive))  # type: ignore[arg-type]
        self._last_received = time.monotonic()
        self._tasks = [asyncio.create_task(self._read_loop(), name=f"mqtt-read-{self.client_id}")]
        if self.keepalive:
            self._tasks.append(asyncio.create_task(self._keepalive_loop(), name=f"mqtt-ping-{self.client_id}"))

    async def disconnect(self) -> None:
        """Say DISCONNECT (the will is not sent) and close; quiet if the connection is already gone."""
        if self._writer is not None and self._error is None:
            with contextlib.suppress(Exception):
                self._send(enc.DISCONNECT)
                await asyncio.wait_for(self._writer.drain(), 2.0)
        self._fail(MqttError(f"the connection to the MQTT broker at {self.where} was closed"))
        await self._abort()

    async def subscribe(self, topic: str, qos: int = 1) -> int:
        """Subscribe to one filter; returns the granted QoS, raises MqttError when refused."""
        pid = self._packet_id()
        fut = self._expect(pid)
        self._send(enc.subscribe(pid, [(topic, qos)]))
        suback = await self._wait(pid, fut, f"SUBACK for {topic}")
        code = suback.reason_codes[0] if suback.reason_codes else 0x80
        if code >= 0x80:
            raise MqttError(f"the MQTT broker at {self.where} refused the subscription to {topic}: {reason_name(code)}")
        return code

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                      user_properties: list[tuple[str, str]] | None = None, timeout: float | None = None) -> int:
        """Publish; at QoS 1 wait for PUBACK and return its reason code (check >= 0x80 and 0x10 yourself)."""
        self._check()
        if qos == 0:
            packet = enc.publish(topic, payload, 0, retain=retain, user_properties=user_properties)
            self._check_size(packet, topic)
            self._send(packet)
            await self._drain()
            return 0
        async with self._inflight:
            pid = self._packet_id()
            packet = enc.publish(topic, payload, 1, pid, retain, user_properties)
            self._check_size(packet, topic)
            fut = self._expect(pid)
            self._send(packet)
            await self._drain()
            ack = await self._wait(pid, fut, f"PUBACK for {topic}", timeout)
        return ack.reason_code

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS 1 message read with `manual_ack` (nothing to do at QoS 0 or once disconnected)."""
        if message.qos and message.packet_id is not None and self._error is None:
            self._send(enc.puback(message.packet_id))

    @property
    def messages(self) -> AsyncIterator[Message]:
        """Received messages in order (`async for m in client.messages`); MqttError once the connection is gone."""
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            if self._incoming.empty() and self._error is not None:
                raise self._error
            get = asyncio.ensure_future(self._incoming.get())
            closed = asyncio.ensure_future(self._closed.wait())
            try:
                await asyncio.wait((get, closed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                if not get.done():
                    get.cancel()
            if get.done() and not get.cancelled():
                message = get.result()
                if message.qos and not self._manual_ack:
                    self.ack(message)
                yield message

    # ------------------------------------------------------------------------------------------- internals

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._writer is None:
            raise MqttError(f"not connected to the MQTT broker at {self.where}")

    def _check_size(self, packet: bytes, topic: str) -> None:
        if len(packet) > self._max_packet:
            raise MqttError(f"a message of {len(packet)} bytes for {topic} is over the broker's maximum packet size "
                            f"({self._max_packet} bytes)")

    def _send(self, packet: bytes) -> None:
        self._check()
        assert self._writer is not None
        self._writer.write(packet)
        self._last_sent = time.monotonic()

    async def _drain(self) -> None:
        assert self._writer is not None
        try:
            await self._writer.drain()
        except (OSError, RuntimeError) as e:
            self._fail(MqttError(f"the connection to the MQTT broker at {self.where} broke: {e}"))
            raise self._error from None  # type: ignore[misc]

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise MqttError("65,535 MQTT requests are waiting for the broker: no packet identifier is free")

    def _expect(self, pid: int) -> asyncio.Future[Any]:
        self._check()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[pid] = fut
        return fut

    async def _wait(self, pid: int, fut: asyncio.Future[Any], what: str, timeout: float | None = None) -> Any:
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), limit)
        except asyncio.TimeoutError:
            raise MqttError(f"no {what} from the MQTT broker at {self.where} within {limit:g}s") from None
        finally:
            if not fut.done():
                fut.cancel()
            if self._pending.get(pid) is fut:
                del self._pending[pid]

    async def _read_packet(self) -> Any:
        assert self._reader is not None
        try:
            first = await self._reader.readexactly(1)
            length, shift, header = 0, 0, bytearray(first)
            for _ in range(4):
                b = (await self._reader.readexactly(1))[0]
                header.append(b)
                length |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            else:
                raise MqttError(f"malformed packet from the MQTT broker at {self.where} (length field)")
            if length + len(header) > self._max_incoming:
                raise MqttError(f"the MQTT broker at {self.where} sent a packet of {length + len(header)} bytes, over "
                                f"the {self._max_incoming} this client declared")
            body = await self._reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            raise MqttError(f"the MQTT broker at {self.where} closed the connection") from None
        except OSError as e:
            raise MqttError(f"the connection to the MQTT broker at {self.where} broke: {e.strerror or e}") from None
        self._last_received = time.monotonic()
        packet = parse_packet(bytes(header) + body, MQTT_5)
        if packet is None or packet.truncated:
            raise MqttError(f"malformed packet from the MQTT broker at {self.where} (type {first[0] >> 4})")
        return packet

    async def _read_loop(self) -> None:
        try:
            while True:
                packet = await self._read_packet()
                if isinstance(packet, Publish):
                    if packet.qos > 1:
                        raise MqttError(f"the MQTT broker at {self.where} sent QoS {packet.qos}; this client "
                                        "subscribes at QoS 1 at most")
                    message = Message(packet.topic, packet.payload, packet.qos, packet.retain, packet.packet_id,
                                      packet.user_properties)
                    if self._incoming.full():
                        # The broker is not silent, we are not reading: the keepalive check must not count this.
                        self._held_back = True
                        await self._incoming.put(message)
                        self._held_back = False
                        self._last_received = time.monotonic()
                    else:
                        self._incoming.put_nowait(message)
                elif isinstance(packet, (PubAck, Suback)):
                    fut = self._pending.pop(packet.packet_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(packet)
                elif isinstance(packet, Disconnect):
                    raise MqttError(f"the MQTT broker at {self.where} disconnected: {reason_name(packet.reason_code)}")
                elif packet.packet_type != PacketType.PINGRESP:
                    raise MqttError(f"unexpected {packet.packet_type.name} from the MQTT broker at {self.where}")
        except MqttError as e:
            self._fail(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever breaks the reader ends the connection, never the agent
            self._fail(MqttError(f"the connection to the MQTT broker at {self.where} failed: {e!r}"))

    async def _keepalive_loop(self) -> None:
        half = self.keepalive / 2
        while self._error is None:
            await asyncio.sleep(max(0.2, min(half / 2, 5.0)))
            now = time.monotonic()
            if self._held_back:
                self._last_received = now
            elif now - self._last_received > 1.5 * self.keepalive:
                self._fail(MqttError(f"the MQTT broker at {self.where} sent nothing for {1.5 * self.keepalive:g}s "
                                     "(keepalive)"))
                return
            if now - self._last_sent >= half:
                with contextlib.suppress(MqttError):
                    self._send(enc.PINGREQ)

    def _fail(self, error: MqttError) -> None:
        if self._error is not None:
            return
        self._error = error
        self._closed.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # retrieved: a publish that gave up waiting must not log "never retrieved"
        self._pending.clear()
        if self._writer is not None:
            self._writer.close()

    async def _abort(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task
        self._tasks = []
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        if self._error is None:
            self._error = MqttError(f"the connection to the MQTT broker at {self.where} was closed")
            self._closed.set()
