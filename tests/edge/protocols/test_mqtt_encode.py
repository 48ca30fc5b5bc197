from __future__ import annotations

import pytest

from edge.protocols import mqtt_encode as enc
from edge.protocols.mqtt import MQTT_5, Connect, PacketType, PropertyId, Publish, Subscribe, parse_packet


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455])
def test_varints_are_minimal_and_read_back(n: int) -> None:
    from edge.protocols.mqtt import decode_varint

    raw = enc.encode_varint(n)
    assert decode_varint(raw) == (n, len(raw))
    assert len(raw) == 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)


def test_a_varint_too_large_is_refused() -> None:
    with pytest.raises(ValueError):
        enc.encode_varint(268_435_456)


def test_connect_reads_back_with_will_credentials_and_properties() -> None:
    raw = enc.connect("node-1", 30, username="u", password="p", will=enc.Will("helix/status/n", b"off", 1, True),
                      receive_maximum=32)
    pkt = parse_packet(raw, MQTT_5)
    assert isinstance(pkt, Connect) and not pkt.truncated and pkt.length == len(raw)
    assert (pkt.version, pkt.client_id, pkt.keepalive) == (5, "node-1", 30)
    assert pkt.will and pkt.has_username and pkt.has_password and pkt.clean_start
    assert pkt.properties[PropertyId.RECEIVE_MAXIMUM] == 32
    assert raw[9] == 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80  # connect flags: will QoS 1, retained


def test_publish_reads_back_with_user_properties() -> None:
    props = [("traceparent", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"), ("k", "v")]
    raw = enc.publish("helix/sdk/dev-1/spans", b"\x00" * 300, qos=1, packet_id=7, retain=True, user_properties=props)
    pkt = parse_packet(raw, MQTT_5)
    assert isinstance(pkt, Publish) and not pkt.truncated
    assert (pkt.topic, pkt.qos, pkt.packet_id, pkt.retain) == ("helix/sdk/dev-1/spans", 1, 7, True)
    assert pkt.user_properties == props and pkt.payload == b"\x00" * 300


def test_qos_2_and_oversized_strings_are_refused() -> None:
    with pytest.raises(ValueError, match="QoS 2"):
        enc.publish("t", b"", qos=2, packet_id=1)
    with pytest.raises(ValueError, match="65,535"):
        enc.publish("t" * 70_000, b"")


def test_subscribe_puback_and_fixed_packets_read_back() -> None:
    sub = parse_packet(enc.subscribe(9, [("helix/sdk/+/spans", 1)]), MQTT_5)
    assert isinstance(sub, Subscribe) and sub.packet_id == 9 and sub.topics == [("helix/sdk/+/spans", 1)]
    ack = parse_packet(enc.puback(513), MQTT_5)
    assert ack is not None and ack.packet_type == PacketType.PUBACK and ack.packet_id == 513  # type: ignore[attr-defined]
    assert parse_packet(enc.PINGREQ, MQTT_5).packet_type == PacketType.PINGREQ  # type: ignore[union-attr]
    assert parse_packet(enc.DISCONNECT, MQTT_5).packet_type == PacketType.DISCONNECT  # type: ignore[union-attr]
