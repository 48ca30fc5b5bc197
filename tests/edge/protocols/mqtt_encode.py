"""Test-only MQTT encoders (spec-literal, no validation) for round-trip tests of edge.protocols.mqtt."""
from __future__ import annotations

from edge.protocols.mqtt import MQTT_5, MQTT_311

__all__ = [
    "varint",
    "utf8",
    "properties",
    "packet",
    "connect",
    "publish",
    "puback",
    "subscribe",
    "connack",
]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str) -> bytes:
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def properties(props: list[tuple[int, bytes]] = (), user: list[tuple[str, str]] = ()) -> bytes:  # type: ignore[assignment]
    """Property block; `props` holds (id, already-encoded value)."""
    body = b"".join(varint(pid) + value for pid, value in props)
    body += b"".join(b"\x26" + utf8(k) + utf8(v) for k, v in user)
    return varint(len(body)) + body


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([ptype << 4 | flags]) + varint(len(body)) + body


def connect(client_id: str, version: int = MQTT_5, keepalive: int = 60, props: bytes | None = None) -> bytes:
    name = "MQIsdp" if version == 3 else "MQTT"
    body = utf8(name) + bytes([version, 0x02]) + keepalive.to_bytes(2, "big")
    if version == MQTT_5:
        body += props if props is not None else properties()
    body += utf8(client_id)
    return packet(1, 0, body)


def publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int | None = None,
    version: int = MQTT_5,
    props: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
    user: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> bytes:
    body = utf8(topic)
    if qos:
        body += (packet_id or 1).to_bytes(2, "big")
    if version == MQTT_5:
        body += properties(props, user)
    body += payload
    flags = (8 if dup else 0) | qos << 1 | (1 if retain else 0)
    return packet(3, flags, body)


def puback(packet_id: int, reason: int | None = None, version: int = MQTT_311) -> bytes:
    body = packet_id.to_bytes(2, "big")
    if version == MQTT_5 and reason is not None:
        body += bytes([reason]) + properties()
    return packet(4, 0, body)


def subscribe(packet_id: int, topics: list[tuple[str, int]], version: int = MQTT_311) -> bytes:
    body = packet_id.to_bytes(2, "big")
    if version == MQTT_5:
        body += properties()
    body += b"".join(utf8(t) + bytes([o]) for t, o in topics)
    return packet(8, 2, body)


def connack(reason: int = 0, session_present: bool = False, version: int = MQTT_311) -> bytes:
    body = bytes([1 if session_present else 0, reason])
    if version == MQTT_5:
        body += properties([(0x21, (20).to_bytes(2, "big"))])
    return packet(2, 0, body)
