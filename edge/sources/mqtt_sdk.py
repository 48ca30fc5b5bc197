"""Source: lightweight-SDK spans, CBOR over MQTT v5, with W3C trace context in user properties."""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..codec.sdk_cbor import decode_payload
from .config import MqttSourceConfig
from ..errors import DecodeError, describe
from ..net.mqtt_client import MqttError
from ..model import Source, Span
from ..sdk.mqtt_context import extract
from ..net.retry import RateLimitedLog

__all__ = ["MqttSdkSource", "MqttSourceStats", "SequenceGaps", "device_id_from_topic"]

log = logging.getLogger(__name__)

Sink = Callable[[list[Span], Source], int]
HasRoom = Callable[[int], bool]

# QoS 1 messages the broker may have in flight to us unacknowledged (MQTT v5 Receive Maximum). A message is
# acknowledged only once its spans are in the inbox, so a slow agent makes the broker hold the backlog (its
# queue, its limits), not this process.
RECEIVE_MAXIMUM = 32
# A message waits, unacknowledged, until the inbox has room for its spans (or for this much of them: a message
# larger than the inbox could ever take is offered then, and what does not fit is counted). While it waits the
# broker holds the rest, so nothing the agent acknowledged is dropped for want of room.
_ROOM_AT_MOST = 256 * 1024
# Devices whose last message sequence number is remembered; past this the least recently heard is forgotten (a
# forgotten device's next message starts it again, with no gap counted). ~200 B each.
MAX_SEQ_DEVICES = 1024
_SEQ_MOD = 2**32


@dataclass(slots=True)
class MqttSourceStats:
    """Counters of the MQTT span source; `dropped` is keyed by reason."""

    messages: int = 0
    spans: int = 0
    waited_for_room: int = 0  # messages held unacknowledged until the inbox had room (broker-side backpressure)
    connected: bool = False
    reconnects: int = 0
    # poison: a message that broke the source itself (a decoder bug, not a malformed message): acknowledged, counted
    dropped: dict[str, int] = field(default_factory=lambda: {"oversize": 0, "not_cbor": 0, "bad_span": 0,
                                                              "bad_traceparent": 0, "inbox_full": 0, "poison": 0})
    missing_messages: int = 0  # device messages that never arrived, from gaps in their sequence numbers
    device_restarts: int = 0  # sequences that started again (a device restart)
    seq_devices_forgotten: int = 0  # devices dropped from the sequence table when it was full
    device_cut: dict[str, int] = field(default_factory=dict)  # what devices cut to fit their buffers, by kind


class SequenceGaps:
    """Per-device message sequence numbers (envelope keys 4 and 6): counts the messages that never arrived.

    A device numbers its span messages 0, 1, 2, ... from its start (modulo 2**32) and, with key 6, names each
    start with a random run id. Per device the current run, the one before it and the highest number seen are
    kept. Within a run a number ahead of the next expected counts the numbers skipped as missing; one at or
    behind the highest is a redelivery or a late message and counts nothing. A new run is a restart: the numbers
    before its first one (0..seq-1) count as missing; a message of the previous run arriving late counts nothing.
    Without a run id a lower number is taken as a restart. A device heard for the first time, or again after
    being forgotten from the full table, starts its count there.
    """

    __slots__ = ("_last", "_stats", "max_devices")

    def __init__(self, stats: MqttSourceStats, max_devices: int = MAX_SEQ_DEVICES) -> None:
        self._last: dict[str, tuple[int | None, int | None, int]] = {}  # device -> (run, previous run, highest)
        self._stats = stats
        self.max_devices = max_devices

    def __len__(self) -> int:
        return len(self._last)

    def observe(self, device: str, seq: int, run: int | None = None) -> int:
        """Record one message's number; returns how many messages this one shows missing."""
        known = self._last.pop(device, None)  # popped and re-inserted: the dict's order is least recently heard
        if known is None:
            if len(self._last) >= self.max_devices:
                del self._last[next(iter(self._last))]
                self._stats.seq_devices_forgotten += 1
            self._last[device] = (run, None, seq)
            return 0
        cur_run, prev_run, last = known
        ahead = (seq - last) % _SEQ_MOD
        if run is not None and run != cur_run:
            if run == prev_run:  # a late message of the run before the restart
                self._last[device] = known
                return 0
            restarted = True
        elif run is None:
            restarted = seq < last and not (last == _SEQ_MOD - 1 and seq == 0)
        else:
            restarted = False
        if restarted:
            self._stats.device_restarts += 1
            self._last[device] = (run, cur_run, seq)
            missing = seq
        elif ahead == 0 or ahead >= _SEQ_MOD // 2:  # a redelivery, or a message overtaken by a newer one
            self._last[device] = known
            return 0
        else:
            self._last[device] = (cur_run, prev_run, seq)
            missing = ahead - 1
        self._stats.missing_messages += missing
        return missing


def device_id_from_topic(topic: str, pattern: str) -> str:
    """The topic level matched by the first '+' of the subscription (the device id by convention)."""
    levels, pat = topic.split("/"), pattern.split("/")
    for i, p in enumerate(pat):
        if p == "+" and i < len(levels):
            return levels[i]
    return ""


class MqttSdkSource:
    """Subscribes to the SDK span topics and feeds decoded spans to the pipeline; reconnects forever."""

    def __init__(self, cfg: MqttSourceConfig, node_id: str, sink: Sink, host_name: str = "",
                 has_room: HasRoom | None = None,
                 room_changed: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.sink = sink
        self.has_room = has_room
        # Awaited (with a timeout) while a message waits for room; without it the source polls every 20 ms.
        self.room_changed = room_changed
        self.host_name = host_name
        self.stats = MqttSourceStats()
        self.sequences = SequenceGaps(self.stats)
        self._warn = RateLimitedLog(log, interval_s=10.0)
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Connect, subscribe and consume until cancelled."""
        backoff = 0.5
        while True:
            client = self.cfg.mqtt_client(
                f"helix-agent-{self.node_id}-sdk", "sources.mqtt", keepalive=30,
                # PUBACK once the spans are in the inbox; QoS 0 has no flow control, so the queue is bounded and
                # a full queue stops reading (the broker holds the rest).
                receive_maximum=RECEIVE_MAXIMUM, manual_ack=True, max_queued=8 * RECEIVE_MAXIMUM,
                # Payloads up to twice max_payload arrive and are counted as oversize; larger ones the broker drops
                # for us instead of the agent reading them into memory.
                max_packet_size=2 * self.cfg.max_payload + 65536,
            )
            try:
                async with client:
                    for topic in self.cfg.topics:
                        await client.subscribe(topic, qos=1)
                    self.stats.connected = True
                    self.ready.set()
                    backoff = 0.5
                    log.info("sdk span source subscribed broker=%s topics=%s", self.cfg.broker, ",".join(self.cfg.topics))
                    async for message in client.messages:
                        # take() never raises: a message that cannot be taken is counted and acknowledged all the
                        # same, so that a retained or redelivered one cannot stop this source again and again.
                        await self.take(message.topic, message.payload, message.user_properties)
                        client.ack(message)
            except MqttError as e:
                self.stats.connected = False
                self.ready.clear()
                self.stats.reconnects += 1
                self._warn.warning("sdk span broker %s unreachable (%s); retrying in %.1fs", self.cfg.broker, e, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 30.0)

    async def take(self, topic: str, payload: bytes, user_properties: list[tuple[str, str]] | None) -> None:
        """deliver() that never raises (but for cancellation): whatever fails is counted, named by its topic."""
        try:
            await self.deliver(topic, payload, user_properties)
        except Exception as e:  # noqa: BLE001 - one message must never stop the source
            self._poison(topic, e)

    def _poison(self, topic: str, e: Exception) -> None:
        self.stats.dropped["poison"] += 1
        self._warn.warning("dropped a span message on %s that could not be handled (%s: %s); acknowledged so that "
                           "it is not delivered again", topic, type(e).__name__, describe(str(e), 200))

    async def deliver(self, topic: str, payload: bytes, user_properties: list[tuple[str, str]] | None) -> None:
        """Decode one message and pass its spans on once the inbox has room for them (the caller acknowledges the
        message after this returns)."""
        spans = self.decode(topic, payload, user_properties)
        if not spans:
            return
        need = min(sum(s.approx_size() for s in spans), _ROOM_AT_MOST)
        if self.has_room is not None and not self.has_room(need):
            self.stats.waited_for_room += 1
            while not self.has_room(need):
                if self.room_changed is not None:
                    await self.room_changed(0.1)
                else:
                    await asyncio.sleep(0.02)
        self._offer(spans)

    def handle(self, topic: str, payload: bytes, user_properties: list[tuple[str, str]] | None) -> None:
        """Decode one message and pass its spans on at once; every refusal is counted, none raises."""
        try:
            spans = self.decode(topic, payload, user_properties)
            if spans:
                self._offer(spans)
        except Exception as e:  # noqa: BLE001 - one message must never stop the source
            self._poison(topic, e)

    def _offer(self, spans: list[Span]) -> None:
        accepted = self.sink(spans, Source.SDK_MQTT)
        self.stats.spans += accepted
        if accepted < len(spans):
            self.stats.dropped["inbox_full"] += len(spans) - accepted

    def decode(self, topic: str, payload: bytes, user_properties: list[tuple[str, str]] | None) -> list[Span]:
        """The spans of one message ([] when it is refused; every refusal is counted, none raises)."""
        self.stats.messages += 1
        if len(payload) > self.cfg.max_payload:
            self.stats.dropped["oversize"] += 1
            self._warn.warning("dropped span message on %s: %d bytes is over sources.mqtt.max_payload (%d)",
                               topic, len(payload), self.cfg.max_payload)
            return []
        pairs = user_properties or []
        remote = extract(pairs)
        if remote is None and any(k.lower() == "traceparent" for k, _ in pairs):
            self.stats.dropped["bad_traceparent"] += 1
            self._warn.warning("ignored an invalid traceparent user property on %s", topic)
        device = next((device_id_from_topic(topic, p) for p in self.cfg.topics if device_id_from_topic(topic, p)), "")
        defaults = {"service.name": device or "unknown_device", "device.id": device or "unknown"}
        if self.host_name:
            defaults["helix.node.id"] = self.host_name
        try:
            decoded = decode_payload(payload, defaults, remote)
        except DecodeError as e:
            self.stats.dropped["not_cbor"] += 1
            self._warn.warning("dropped span message on %s: %s", topic, e)
            return []
        if decoded.errors:
            self.stats.dropped["bad_span"] += len(decoded.errors)
            self._warn.warning("dropped %d span(s) from %s: %s", len(decoded.errors), topic, decoded.errors[0])
        if decoded.seq is not None:
            missing = self.sequences.observe(device or topic, decoded.seq, decoded.run)
            if missing:
                self._warn.warning("%d message(s) from device %s never arrived (sequence gap before %d)",
                                   missing, device or topic, decoded.seq)
        for kind, n in decoded.cut.items():
            self.stats.device_cut[kind] = self.stats.device_cut.get(kind, 0) + n
        return decoded.spans
