"""MQTT 5 control packets a client sends, as bytes (sans-I/O; `mqtt.py` reads what comes back).

Only what the agent's client needs: CONNECT (with will, user name, password), PUBLISH at QoS 0/1 with user
properties, PUBACK, SUBSCRIBE, PINGREQ and DISCONNECT.
"""
from __future__ import annotations

from dataclasses import dataclass

from .mqtt import PropertyId

__all__ = ["Will", "encode_varint", "connect", "publish", "puback", "subscribe", "PINGREQ", "DISCONNECT",
           "MAX_PACKET"]

MAX_PACKET = 268_435_455 + 5  # largest remaining length the spec allows, plus the fixed header
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"  # normal disconnection: the will is not sent


@dataclass(slots=True, frozen=True)
class Will:
    """The message the broker publishes for a client that vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def encode_varint(n: int) -> bytes:
    """Variable byte integer (spec 1.5.5)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"{n} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    raw = s.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"string of {len(raw)} bytes is over MQTT's 65,535")
    return len(raw).to_bytes(2, "big") + raw


def _binary(b: bytes) -> bytes:
    if len(b) > 0xFFFF:
        raise ValueError(f"binary field of {len(b)} bytes is over MQTT's 65,535")
    return len(b).to_bytes(2, "big") + b


def _properties(pairs: list[tuple[str, str]] | None = None, **fixed: int) -> bytes:
    body = bytearray()
    for name, value in fixed.items():
        pid = PropertyId[name.upper()]
        size = 2 if pid in (PropertyId.RECEIVE_MAXIMUM, PropertyId.TOPIC_ALIAS_MAXIMUM) else 4
        body += bytes([pid]) + value.to_bytes(size, "big")
    for k, v in pairs or ():
        body += bytes([PropertyId.USER_PROPERTY]) + _utf8(k) + _utf8(v)
    return encode_varint(len(body)) + bytes(body)


def _packet(first: int, *parts: bytes) -> bytes:
    rest = b"".join(parts)
    return bytes([first]) + encode_varint(len(rest)) + rest


def connect(client_id: str, keepalive: int, *, username: str | None = None, password: str | None = None,
            will: Will | None = None, receive_maximum: int | None = None, maximum_packet_size: int | None = None,
            clean_start: bool = True, session_expiry: int | None = None) -> bytes:
    """CONNECT, protocol level 5; `session_expiry` (seconds) asks the broker to keep the session that long."""
    flags = 0x02 if clean_start else 0
    payload = _utf8(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _properties() + _utf8(will.topic) + _binary(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
    if password is not None:
        flags |= 0x40
        payload += _binary(password.encode())
    fixed = {}
    if session_expiry:
        fixed["session_expiry_interval"] = session_expiry
    if receive_maximum:
        fixed["receive_maximum"] = receive_maximum
    if maximum_packet_size:
        fixed["maximum_packet_size"] = maximum_packet_size
    header = _utf8("MQTT") + bytes([5, flags]) + keepalive.to_bytes(2, "big") + _properties(**fixed)
    return _packet(0x10, header, payload)


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, retain: bool = False,
            user_properties: list[tuple[str, str]] | None = None) -> bytes:
    """PUBLISH at QoS 0 or 1 (a packet id is needed from QoS 1)."""
    if qos not in (0, 1):
        raise ValueError(f"QoS {qos} is not supported by this client (0 or 1)")
    head = _utf8(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + _properties(user_properties)
    return _packet(0x30 | (qos << 1) | (1 if retain else 0), head, payload)


def puback(packet_id: int) -> bytes:
    """PUBACK with success (the short form MQTT 5 allows)."""
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def subscribe(packet_id: int, topics: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE to (filter, maximum QoS) pairs."""
    body = b"".join(_utf8(t) + bytes([qos]) for t, qos in topics)
    return _packet(0x82, packet_id.to_bytes(2, "big"), _properties(), body)
