"""MQTT 3.1/3.1.1/5 in message snapshots: each PUBLISH a client sends or receives becomes a span.

Packets are decoded as soon as they are whole (a broker pushes packet after packet with no reply in between), with
the W3C context from MQTT 5 user properties. The broker's own connections make no spans: its clients' do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ....model import Attributes, Span, SpanKind
from ....propagation import extract
from ....protocols import mqtt
from ..events import DataEvent, Direction, Role
from .tables import SETTLE, WAIT, Conn, ConnState, Snapshot, connection_attrs, process_attrs
from .tcp import take_faults

if TYPE_CHECKING:
    from . import SpanBuilder

__all__ = ["MQTT"]

_MAX_TOPIC_ALIASES = 64
_MQTT_VERSIONS = {mqtt.MQTT_31: "3.1", mqtt.MQTT_311: "3.1.1", mqtt.MQTT_5: "5"}


@dataclass(slots=True)
class _MqttConn(ConnState):
    """What a connection's CONNECT and PUBLISHes told: version, client id, topic aliases, the broker's side."""

    version: int | None = None
    client_id: str = ""
    broker: bool = False
    topic_aliases: dict[tuple[int, int], str] = field(default_factory=dict)


class _Mqtt:
    """MQTT: the WireProtocol of control packets."""

    name = "mqtt"
    streams = True
    body_continues = False

    def assemble(self, conn: Conn, data: bytes | bytearray, decoded: int) -> int | None:
        if conn.proto is not None and conn.proto is not self:
            return None
        begin = max(decoded, 0)
        end = whole_packets(data, begin)
        if end < 0:
            return SETTLE  # no MQTT framing: decode it for what it is
        return end if end > begin else WAIT

    def on_message(self, b: SpanBuilder, conn: Conn, ev: DataEvent, snap: Snapshot | None, base: int,
                   out: list[Span]) -> bool:
        """MQTT packets in `ev.payload`, which begins `base` bytes into the snapshot `snap` (None: ev alone)."""
        st = conn.state if conn.proto is self and isinstance(conn.state, _MqttConn) else None
        packets = mqtt.parse_packets(ev.payload, st.version if st is not None else None)
        if not packets:
            return False
        if st is None:
            if not _evident(b, conn, packets):
                return False
            conn.proto = self
            conn.state = st = _MqttConn()
        if conn.role == Role.SERVER or (conn.role == Role.UNKNOWN and conn.local.port in b.config.broker_ports):
            st.broker = True
        for pkt in packets:
            if isinstance(pkt, mqtt.Connect):
                if pkt.version in _MQTT_VERSIONS:
                    st.version = pkt.version
                st.client_id = pkt.client_id
                if ev.direction == Direction.INGRESS:
                    st.broker = True  # it reads CONNECTs: this process is the broker
                b.stats.mqtt_other += 1
            elif isinstance(pkt, mqtt.Publish):
                if st.broker:
                    b.stats.broker_side += 1
                    continue
                _emit_publish(b, conn, st, ev, pkt, out, *_packet_times(ev, pkt, snap, base))
            else:
                b.stats.mqtt_other += 1
        return True


MQTT = _Mqtt()


def _evident(b: SpanBuilder, conn: Conn, packets: list[mqtt.MqttPacket]) -> bool:
    """Whether a connection not yet known to speak MQTT does: a whole packet, a CONNECT/CONNACK, or a broker port.

    One byte of 0x30 reads as the start of a PUBLISH; paho's wakeup socket pair (loopback TCP) carries exactly
    that, and taking it for MQTT made an empty-topic receive span at every wakeup.
    """
    if any(not p.truncated or isinstance(p, (mqtt.Connect, mqtt.Connack)) for p in packets):
        return True
    ports = b.config.broker_ports
    return conn.local.port in ports or conn.remote.port in ports


def _packet_times(ev: DataEvent, pkt: mqtt.MqttPacket, snap: Snapshot | None, base: int) -> tuple[int, int]:
    """Start and end of a packet's span: a receive is the moment its reads returned (the time before was spent
    waiting for the broker); a publish runs from the write of its first byte to that of its last."""
    egress = ev.direction == Direction.EGRESS
    if snap is None:
        return (ev.ts_ns if egress else ev.end_ns), ev.end_ns
    first = base + pkt.offset
    last = min(first + pkt.length, len(snap.data)) - 1
    (ts0, end0), (_, end1) = snap.times_of(first, max(first, last))
    return (ts0 if egress else end0), end1


def _emit_publish(b: SpanBuilder, conn: Conn, st: _MqttConn, ev: DataEvent, pkt: mqtt.Publish, out: list[Span],
                  start: int, end: int) -> None:
    egress = ev.direction == Direction.EGRESS
    topic = pkt.topic
    alias = pkt.properties.get(mqtt.PropertyId.TOPIC_ALIAS)
    if isinstance(alias, int):
        key = (int(ev.direction), alias)
        if topic:
            if key in st.topic_aliases or len(st.topic_aliases) < _MAX_TOPIC_ALIASES:
                st.topic_aliases[key] = topic
        else:
            topic = st.topic_aliases.get(key, "")
    attrs: Attributes = {
        "messaging.system": "mqtt",
        "messaging.operation.type": "send" if egress else "receive",
        "messaging.operation.name": "publish" if egress else "receive",
        "messaging.destination.name": topic,
        "messaging.mqtt.qos": pkt.qos,
    }
    if pkt.retain:
        attrs["messaging.mqtt.retain"] = True
    if pkt.dup:
        attrs["messaging.mqtt.dup"] = True
    if pkt.packet_id is not None:
        attrs["messaging.message.id"] = str(pkt.packet_id)
    if pkt.payload_length is not None:
        attrs["messaging.message.body.size"] = pkt.payload_length
    if st.client_id:
        attrs["messaging.client.id"] = st.client_id
    attrs["server.address"] = conn.remote.addr
    attrs["server.port"] = conn.remote.port
    connection_attrs(attrs, conn, "mqtt", local=False)
    version = st.version or pkt.version
    if version in _MQTT_VERSIONS:
        attrs["network.protocol.version"] = _MQTT_VERSIONS[version]
    if pkt.truncated:
        attrs["helix.mqtt.truncated"] = True
    process_attrs(attrs, ev.pid, ev.tid, ev.comm)
    headers: dict[str, str] = {}
    for k, v in pkt.user_properties:
        headers.setdefault(k.lower(), v)
    ctx = extract(headers) if headers else None
    name = f"publish {topic}" if egress else f"receive {topic}"
    kind = SpanKind.PRODUCER if egress else SpanKind.CONSUMER
    proc = b.procs.get(ev.pid, ev.comm)
    if not egress:
        b.causes.message_read(ev.pid, ev.tid)
    span = b.span(name, kind, start, end, proc, attrs, ctx, take_faults(b, conn))
    b.stats.mqtt_spans += 1
    out.append(span)


def whole_packets(data: bytes | bytearray, offset: int) -> int:
    """Where the run of whole MQTT packets framed from `offset` ends (`offset`: none whole yet); -1 for no framing.

    Framing only (type nibble, remaining length): the parsers decide what the packets are.
    """
    end = len(data)
    pos = offset
    while pos < end:
        if data[pos] >> 4 == 0:
            return -1 if pos == offset else pos  # packet type 0 is reserved: no MQTT here
        if end - pos < 2:
            break
        decoded = mqtt.decode_varint(data, pos + 1)  # type: ignore[arg-type]  # it only indexes: a bytearray reads alike
        if decoded is None:
            if end - pos >= 5:
                return -1 if pos == offset else pos  # a remaining length has at most 4 bytes
            break
        remaining, body = decoded
        if body + remaining > end:
            break
        pos = body + remaining
    return pos
