"""MQTT 3.1, 3.1.1 and 5 control packets from a payload snapshot that may be cut anywhere.

A packet cut by the snapshot comes back with `truncated=True` and the fields read before the cut; fields after
it keep their defaults. A packet that breaks the spec (bad flags, a length that runs past the packet, invalid
UTF-8, an unknown property) gives None, never an exception: these bytes come from arbitrary traffic and the
strictness is what keeps random binary from being mistaken for MQTT.

Versions are protocol levels as CONNECT carries them: 3 (3.1), 4 (3.1.1), 5.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "MQTT_31",
    "MQTT_311",
    "MQTT_5",
    "PacketType",
    "PropertyId",
    "PropValue",
    "MqttPacket",
    "Connect",
    "Connack",
    "Publish",
    "PubAck",
    "Subscribe",
    "Suback",
    "Unsubscribe",
    "Unsuback",
    "Disconnect",
    "Auth",
    "parse_packet",
    "parse_packets",
    "looks_like_mqtt",
    "decode_varint",
]

MQTT_31 = 3
MQTT_311 = 4
MQTT_5 = 5
_MAX_REMAINING = 268_435_455
_MAX_PACKETS = 64

PropValue = Union[int, str, bytes, list[int]]


class PacketType(enum.IntEnum):
    """Control packet types (the high nibble of the first byte)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class PropertyId(enum.IntEnum):
    """MQTT 5 property identifiers (spec section 2.2.2.2)."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_P = PropertyId
_PROP_TYPES: dict[int, int] = {
    _P.PAYLOAD_FORMAT_INDICATOR: _BYTE,
    _P.MESSAGE_EXPIRY_INTERVAL: _U32,
    _P.CONTENT_TYPE: _UTF8,
    _P.RESPONSE_TOPIC: _UTF8,
    _P.CORRELATION_DATA: _BINARY,
    _P.SUBSCRIPTION_IDENTIFIER: _VARINT,
    _P.SESSION_EXPIRY_INTERVAL: _U32,
    _P.ASSIGNED_CLIENT_IDENTIFIER: _UTF8,
    _P.SERVER_KEEP_ALIVE: _U16,
    _P.AUTHENTICATION_METHOD: _UTF8,
    _P.AUTHENTICATION_DATA: _BINARY,
    _P.REQUEST_PROBLEM_INFORMATION: _BYTE,
    _P.WILL_DELAY_INTERVAL: _U32,
    _P.REQUEST_RESPONSE_INFORMATION: _BYTE,
    _P.RESPONSE_INFORMATION: _UTF8,
    _P.SERVER_REFERENCE: _UTF8,
    _P.REASON_STRING: _UTF8,
    _P.RECEIVE_MAXIMUM: _U16,
    _P.TOPIC_ALIAS_MAXIMUM: _U16,
    _P.TOPIC_ALIAS: _U16,
    _P.MAXIMUM_QOS: _BYTE,
    _P.RETAIN_AVAILABLE: _BYTE,
    _P.USER_PROPERTY: _PAIR,
    _P.MAXIMUM_PACKET_SIZE: _U32,
    _P.WILDCARD_SUBSCRIPTION_AVAILABLE: _BYTE,
    _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _BYTE,
    _P.SHARED_SUBSCRIPTION_AVAILABLE: _BYTE,
}
# Which properties a PUBLISH may carry; used to tell a v5 PUBLISH from a 3.1.1 one when the version is unknown.
_PUBLISH_PROPS = frozenset(
    {
        _P.PAYLOAD_FORMAT_INDICATOR,
        _P.MESSAGE_EXPIRY_INTERVAL,
        _P.CONTENT_TYPE,
        _P.RESPONSE_TOPIC,
        _P.CORRELATION_DATA,
        _P.SUBSCRIPTION_IDENTIFIER,
        _P.TOPIC_ALIAS,
        _P.USER_PROPERTY,
    }
)
# Fixed-header flags the spec requires per type (PUBLISH carries DUP/QoS/RETAIN instead).
_REQUIRED_FLAGS = {PacketType.PUBREL: 2, PacketType.SUBSCRIBE: 2, PacketType.UNSUBSCRIBE: 2}
_PUBACK_REASONS = frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99})
_PUBREL_REASONS = frozenset({0x00, 0x92})


@dataclass(slots=True)
class MqttPacket:
    """Fields every control packet has. PINGREQ and PINGRESP are plain MqttPackets."""

    packet_type: PacketType
    flags: int
    offset: int  # where the packet starts in the snapshot
    length: int  # fixed header + remaining length: the packet's size on the wire
    truncated: bool  # the snapshot ended inside the packet


@dataclass(slots=True)
class Connect(MqttPacket):
    """CONNECT: who the client is and which protocol version the rest of the connection speaks."""

    protocol_name: str = ""
    version: int = 0
    clean_start: bool = False
    will: bool = False
    has_username: bool = False
    has_password: bool = False
    keepalive: int = 0
    client_id: str = ""
    properties: dict[int, PropValue] = field(default_factory=dict)
    user_properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Connack(MqttPacket):
    """CONNACK: the broker's answer to CONNECT."""

    session_present: bool = False
    reason_code: int = 0
    properties: dict[int, PropValue] = field(default_factory=dict)
    user_properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Publish(MqttPacket):
    """PUBLISH: an application message."""

    version: int = 0  # the version it was parsed as
    topic: str = ""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: dict[int, PropValue] = field(default_factory=dict)
    user_properties: list[tuple[str, str]] = field(default_factory=list)
    payload_length: int | None = None  # known once the variable header was read
    payload: bytes = b""  # the part of the payload inside the snapshot


@dataclass(slots=True)
class PubAck(MqttPacket):
    """PUBACK, PUBREC, PUBREL and PUBCOMP: acknowledgements of one packet id."""

    packet_id: int = 0
    reason_code: int = 0
    properties: dict[int, PropValue] = field(default_factory=dict)
    user_properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Subscribe(MqttPacket):
    """SUBSCRIBE: topic filters with their options byte (bits 0-1 are the maximum QoS)."""

    packet_id: int = 0
    topics: list[tuple[str, int]] = field(default_factory=list)
    properties: dict[int, PropValue] = field(default_factory=dict)
    user_properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Suback(MqttPacket):
    """SUBACK: one reason code (granted QoS or failure) per filter."""

    packet_id: int = 0
    reason_codes: list[int] = field(default_factory=list)
    properties: dict[int, PropValue] = field(default_factory=dict)
    user_properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Unsubscribe(MqttPacket):
    """UNSUBSCRIBE: topic filters."""

    packet_id: int = 0
    topics: list[str] = field(default_factory=list)
    properties: dict[int, PropValue] = field(default_factory=dict)
    user_properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Unsuback(MqttPacket):
    """UNSUBACK: reason codes (MQTT 5 only; 3.1.1 has none)."""

    packet_id: int = 0
    reason_codes: list[int] = field(default_factory=list)
    properties: dict[int, PropValue] = field(default_factory=dict)
    user_properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Disconnect(MqttPacket):
    """DISCONNECT, with a reason code in MQTT 5."""

    reason_code: int = 0
    properties: dict[int, PropValue] = field(default_factory=dict)
    user_properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Auth(MqttPacket):
    """AUTH (MQTT 5 enhanced authentication)."""

    reason_code: int = 0
    properties: dict[int, PropValue] = field(default_factory=dict)
    user_properties: list[tuple[str, str]] = field(default_factory=list)


class _Short(Exception):
    """The snapshot ended before the field did: the packet is truncated, not wrong."""


class _Bad(Exception):
    """The bytes break the spec: not MQTT (or not this version)."""


class _Reader:
    """Cursor over one packet: reads past the packet's declared end are _Bad, past the snapshot _Short."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int) -> bytes:
        stop = self.pos + n
        if stop > self.end:
            raise _Bad
        if stop > len(self.data):
            raise _Short
        out = self.data[self.pos : stop]
        self.pos = stop
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        value, shift = 0, 0
        for i in range(4):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                if i and b == 0:
                    raise _Bad  # not the minimal encoding
                return value
            shift += 7
        raise _Bad

    def utf8(self) -> str:
        raw = self.take(self.u16())
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad from None
        if "\x00" in s:
            raise _Bad
        return s

    def binary(self) -> bytes:
        return self.take(self.u16())

    @property
    def left(self) -> int:
        return self.end - self.pos


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int] | None:
    """A Variable Byte Integer at `offset`: (value, offset after it), or None if cut or malformed."""
    try:
        r = _Reader(data, offset, offset + 4)
        return r.varint(), r.pos
    except (_Short, _Bad):
        return None


def parse_packet(data: bytes, version: int | None = None, offset: int = 0) -> MqttPacket | None:
    """The control packet at `offset`; `version` (3, 4, 5) decides PUBLISH layout, None guesses 5 then 3.1.1."""
    try:
        return _packet_at(data, offset, version)
    except (_Short, _Bad):
        return None
    except Exception:  # noqa: BLE001 - hostile input must never escape as an exception, whatever breaks
        return None


def parse_packets(data: bytes, version: int | None = None) -> list[MqttPacket]:
    """Consecutive packets from the start of `data`, stopping at the first truncated or invalid one.

    A CONNECT among them sets the version for the packets after it.
    """
    out: list[MqttPacket] = []
    off = 0
    while off < len(data) and len(out) < _MAX_PACKETS:
        pkt = parse_packet(data, version, off)
        if pkt is None:
            break
        out.append(pkt)
        if isinstance(pkt, Connect) and pkt.version in (MQTT_31, MQTT_311, MQTT_5):
            version = pkt.version
        if pkt.truncated:
            break
        off += pkt.length
    return out


def looks_like_mqtt(data: bytes) -> bool:
    """True when `data` starts with a well-formed MQTT control packet (whole or cut by the snapshot)."""
    return parse_packet(data) is not None


# -- internals ---------------------------------------------------------------------------------------------------


def _packet_at(data: bytes, offset: int, version: int | None) -> MqttPacket | None:
    if offset >= len(data):
        return None
    first = data[offset]
    ptype_n, flags = first >> 4, first & 0x0F
    if ptype_n == 0:
        return None
    ptype = PacketType(ptype_n)
    if ptype is PacketType.PUBLISH:
        if (flags >> 1) & 3 == 3 or (flags & 8 and not flags & 6):
            return None  # QoS 3 does not exist; DUP is only meaningful with QoS > 0
    elif flags != _REQUIRED_FLAGS.get(ptype, 0):
        return None
    hdr = _Reader(data, offset + 1, offset + 5)
    remaining = hdr.varint()  # a cut here leaves nothing useful: _Short propagates to None
    body = hdr.pos
    end = body + remaining
    length = end - offset
    truncated = end > len(data)
    if ptype is PacketType.PUBLISH:
        return _publish(_Reader(data, body, end), flags, offset, length, truncated, version)
    parser = _PARSERS[ptype]
    # Layouts differ between 3.1.1 and 5 (reason codes, properties); unknown version: try 5, then 3.1.1.
    for guess in (version,) if version is not None else (MQTT_5, MQTT_311):
        try:
            pkt = parser(_Reader(data, body, end), ptype, flags, offset, length, guess)
        except _Bad:
            continue
        except _Short:
            return None  # small control packets are worth nothing half-read
        if pkt is not None:
            pkt.truncated = pkt.truncated or truncated
        return pkt
    return None


def _properties(r: _Reader, allowed: frozenset[int] | None = None) -> tuple[dict[int, PropValue], list[tuple[str, str]], bool]:
    """MQTT 5 properties at the cursor; the flag says the snapshot cut them (what came before the cut is kept)."""
    props: dict[int, PropValue] = {}
    users: list[tuple[str, str]] = []
    try:
        plen = r.varint()
    except _Short:
        return props, users, True
    if plen > r.left:
        raise _Bad
    pr = _Reader(r.data, r.pos, r.pos + plen)
    r.pos += plen
    try:
        while pr.pos < pr.end:
            pid = pr.varint()
            kind = _PROP_TYPES.get(pid)
            if kind is None or (allowed is not None and pid not in allowed):
                raise _Bad
            if kind == _PAIR:
                users.append((pr.utf8(), pr.utf8()))
                continue
            value: PropValue
            if kind == _BYTE:
                value = pr.byte()
            elif kind == _U16:
                value = pr.u16()
            elif kind == _U32:
                value = pr.u32()
            elif kind == _VARINT:
                value = pr.varint()
            elif kind == _UTF8:
                value = pr.utf8()
            else:
                value = pr.binary()
            if pid == _P.SUBSCRIPTION_IDENTIFIER:
                ids = props.setdefault(pid, [])
                assert isinstance(ids, list)
                ids.append(value)  # type: ignore[arg-type]
            elif pid in props:
                raise _Bad  # only user properties and subscription identifiers may repeat
            else:
                props[pid] = value
    except _Short:
        return props, users, True
    return props, users, False


def _publish(r: _Reader, flags: int, offset: int, length: int, truncated: bool, version: int | None) -> Publish | None:
    if version is None:
        for guess in (MQTT_5, MQTT_311):
            try:
                return _publish_as(_Reader(r.data, r.pos, r.end), flags, offset, length, truncated, guess)
            except _Bad:
                continue
        return None
    return _publish_as(r, flags, offset, length, truncated, version)


def _publish_as(r: _Reader, flags: int, offset: int, length: int, truncated: bool, version: int) -> Publish | None:
    qos = (flags >> 1) & 3
    pkt = Publish(PacketType.PUBLISH, flags, offset, length, truncated, version=version, qos=qos,
                  retain=bool(flags & 1), dup=bool(flags & 8))
    try:
        pkt.topic = r.utf8()
        if "+" in pkt.topic or "#" in pkt.topic or (not pkt.topic and version != MQTT_5):
            raise _Bad
        if qos:
            pkt.packet_id = r.u16()
            if pkt.packet_id == 0:
                raise _Bad
        if version == MQTT_5:
            start = r.pos
            try:
                plen_end = _Reader(r.data, r.pos, r.end)
                plen = plen_end.varint()
                pkt.payload_length = r.end - plen_end.pos - plen
                if pkt.payload_length < 0:
                    raise _Bad
            except _Short:
                pass
            r.pos = start
            pkt.properties, pkt.user_properties, cut = _properties(r, _PUBLISH_PROPS)
            if not pkt.topic and _P.TOPIC_ALIAS not in pkt.properties and not cut:
                raise _Bad  # an empty topic needs a topic alias
            if cut:
                pkt.truncated = True
                return pkt
        else:
            pkt.payload_length = r.left
        pkt.payload = r.data[r.pos : min(r.end, len(r.data))]
    except _Short:
        pkt.truncated = True
    return pkt


def _connect(r: _Reader, ptype: PacketType, flags: int, offset: int, length: int, version: int | None) -> Connect | None:
    pkt = Connect(ptype, flags, offset, length, False)
    try:
        pkt.protocol_name = r.utf8()
        pkt.version = r.byte()
    except _Short:
        return None  # without name and level nothing says this is MQTT
    if (pkt.protocol_name, pkt.version) not in (("MQTT", MQTT_311), ("MQTT", MQTT_5), ("MQIsdp", MQTT_31)):
        raise _Bad
    try:
        cflags = r.byte()
        if cflags & 1:
            raise _Bad  # reserved bit
        pkt.clean_start = bool(cflags & 2)
        pkt.will = bool(cflags & 4)
        pkt.has_password = bool(cflags & 0x40)
        pkt.has_username = bool(cflags & 0x80)
        if not pkt.will and cflags & 0x38:
            raise _Bad  # will QoS/retain without a will
        pkt.keepalive = r.u16()
        if pkt.version == MQTT_5:
            pkt.properties, pkt.user_properties, cut = _properties(r)
            if cut:
                pkt.truncated = True
                return pkt
        pkt.client_id = r.utf8()
    except _Short:
        pkt.truncated = True
    return pkt


def _connack(r: _Reader, ptype: PacketType, flags: int, offset: int, length: int, version: int | None) -> Connack | None:
    pkt = Connack(ptype, flags, offset, length, False)
    ack = r.byte()
    if ack & 0xFE:
        raise _Bad
    pkt.session_present = bool(ack & 1)
    pkt.reason_code = r.byte()
    if version == MQTT_5:
        if pkt.reason_code != 0 and pkt.reason_code < 0x80:
            raise _Bad
        if r.left:
            pkt.properties, pkt.user_properties, _ = _properties(r)
    elif pkt.reason_code > 5 or r.left:
        raise _Bad
    return pkt


def _puback(r: _Reader, ptype: PacketType, flags: int, offset: int, length: int, version: int | None) -> PubAck | None:
    pkt = PubAck(ptype, flags, offset, length, False)
    pkt.packet_id = r.u16()
    if pkt.packet_id == 0:
        raise _Bad
    if r.left:
        if version != MQTT_5:
            raise _Bad  # 3.1.1 acknowledgements are exactly two bytes
        pkt.reason_code = r.byte()
        valid = _PUBREL_REASONS if ptype in (PacketType.PUBREL, PacketType.PUBCOMP) else _PUBACK_REASONS
        if pkt.reason_code not in valid:
            raise _Bad
        if r.left:
            pkt.properties, pkt.user_properties, _ = _properties(r)
    return pkt


def _topic_filter(s: str) -> str:
    if not s:
        raise _Bad
    return s


def _subscribe(r: _Reader, ptype: PacketType, flags: int, offset: int, length: int, version: int | None) -> Subscribe | None:
    pkt = Subscribe(ptype, flags, offset, length, False)
    pkt.packet_id = r.u16()
    if pkt.packet_id == 0:
        raise _Bad
    v5 = version == MQTT_5
    try:
        if v5:
            pkt.properties, pkt.user_properties, cut = _properties(r)
            if cut:
                return pkt
        while r.left > 0:
            topic = _topic_filter(r.utf8())
            options = r.byte()
            if options & 3 == 3 or (not v5 and options & 0xFC) or options & 0xC0:
                raise _Bad
            pkt.topics.append((topic, options))
    except _Short:
        pass
    if not pkt.topics and r.pos >= r.end:
        raise _Bad  # a SUBSCRIBE names at least one filter
    return pkt


def _suback(r: _Reader, ptype: PacketType, flags: int, offset: int, length: int, version: int | None) -> Suback | None:
    pkt = Suback(ptype, flags, offset, length, False)
    pkt.packet_id = r.u16()
    try:
        if version == MQTT_5:
            pkt.properties, pkt.user_properties, cut = _properties(r)
            if cut:
                return pkt
        while r.left > 0:
            code = r.byte()
            if code not in (0, 1, 2) and code < 0x80:
                raise _Bad
            pkt.reason_codes.append(code)
    except _Short:
        pass
    return pkt


def _unsubscribe(r: _Reader, ptype: PacketType, flags: int, offset: int, length: int, version: int | None) -> Unsubscribe | None:
    pkt = Unsubscribe(ptype, flags, offset, length, False)
    pkt.packet_id = r.u16()
    if pkt.packet_id == 0:
        raise _Bad
    try:
        if version == MQTT_5:
            pkt.properties, pkt.user_properties, cut = _properties(r)
            if cut:
                return pkt
        while r.left > 0:
            pkt.topics.append(_topic_filter(r.utf8()))
    except _Short:
        pass
    return pkt


def _unsuback(r: _Reader, ptype: PacketType, flags: int, offset: int, length: int, version: int | None) -> Unsuback | None:
    pkt = Unsuback(ptype, flags, offset, length, False)
    pkt.packet_id = r.u16()
    if r.left and version != MQTT_5:
        raise _Bad
    try:
        if r.left:
            pkt.properties, pkt.user_properties, cut = _properties(r)
            if cut:
                return pkt
        while r.left > 0:
            pkt.reason_codes.append(r.byte())
    except _Short:
        pass
    return pkt


def _ping(r: _Reader, ptype: PacketType, flags: int, offset: int, length: int, version: int | None) -> MqttPacket | None:
    if r.left:
        raise _Bad
    return MqttPacket(ptype, flags, offset, length, False)


def _disconnect(r: _Reader, ptype: PacketType, flags: int, offset: int, length: int, version: int | None) -> Disconnect | None:
    pkt = Disconnect(ptype, flags, offset, length, False)
    if r.left:
        if version != MQTT_5:
            raise _Bad
        pkt.reason_code = r.byte()
        if pkt.reason_code not in (0, 4) and pkt.reason_code < 0x80:
            raise _Bad
        if r.left:
            pkt.properties, pkt.user_properties, _ = _properties(r)
    return pkt


def _auth(r: _Reader, ptype: PacketType, flags: int, offset: int, length: int, version: int | None) -> Auth | None:
    if version != MQTT_5:
        raise _Bad
    pkt = Auth(ptype, flags, offset, length, False)
    if r.left:
        pkt.reason_code = r.byte()
        if pkt.reason_code not in (0x00, 0x18, 0x19):
            raise _Bad
        if r.left:
            pkt.properties, pkt.user_properties, _ = _properties(r)
    return pkt


_PARSERS = {
    PacketType.CONNECT: _connect,
    PacketType.CONNACK: _connack,
    PacketType.PUBACK: _puback,
    PacketType.PUBREC: _puback,
    PacketType.PUBREL: _puback,
    PacketType.PUBCOMP: _puback,
    PacketType.SUBSCRIBE: _subscribe,
    PacketType.SUBACK: _suback,
    PacketType.UNSUBSCRIBE: _unsubscribe,
    PacketType.UNSUBACK: _unsuback,
    PacketType.PINGREQ: _ping,
    PacketType.PINGRESP: _ping,
    PacketType.DISCONNECT: _disconnect,
    PacketType.AUTH: _auth,
}
