from __future__ import annotations

import time

import paho.mqtt.client as paho
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.protocols import mqtt
from edge.protocols.mqtt import MQTT_5, MQTT_311, PacketType, PropertyId

from . import mqtt_encode as enc
from .relay import Relay

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_varint_boundaries():
    for n in (0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455):
        encoded = enc.varint(n)
        assert mqtt.decode_varint(encoded) == (n, len(encoded))
    assert mqtt.decode_varint(b"\xff\xff\xff\xff\x7f") is None  # five bytes
    assert mqtt.decode_varint(b"\x80\x00") is None  # not minimal
    assert mqtt.decode_varint(b"\x80") is None  # cut


def test_connect_v5_and_v311():
    p = mqtt.parse_packet(enc.connect("sensor-7", MQTT_5, keepalive=30))
    assert isinstance(p, mqtt.Connect)
    assert (p.protocol_name, p.version, p.client_id, p.keepalive, p.clean_start) == ("MQTT", 5, "sensor-7", 30, True)
    p = mqtt.parse_packet(enc.connect("old", MQTT_311))
    assert isinstance(p, mqtt.Connect) and p.version == 4 and p.client_id == "old"
    p = mqtt.parse_packet(enc.connect("older", 3))
    assert isinstance(p, mqtt.Connect) and p.protocol_name == "MQIsdp" and p.version == 3


def test_publish_v5_with_user_properties():
    data = enc.publish(
        "plant/line1/temp", b'{"c": 21.5}', qos=1, packet_id=77, retain=True,
        props=[(0x01, b"\x01"), (0x03, enc.utf8("application/json")), (0x02, (60).to_bytes(4, "big"))],
        user=[("traceparent", TP), ("tracestate", "ro=1"), ("traceparent", "dup")],
    )
    p = mqtt.parse_packet(data, MQTT_5)
    assert isinstance(p, mqtt.Publish)
    assert (p.topic, p.qos, p.retain, p.dup, p.packet_id) == ("plant/line1/temp", 1, True, False, 77)
    assert p.user_properties == [("traceparent", TP), ("tracestate", "ro=1"), ("traceparent", "dup")]
    assert p.properties[PropertyId.CONTENT_TYPE] == "application/json"
    assert p.properties[PropertyId.MESSAGE_EXPIRY_INTERVAL] == 60
    assert p.payload == b'{"c": 21.5}' and p.payload_length == 11
    assert p.length == len(data) and not p.truncated


def test_publish_v311():
    data = enc.publish("a/b", b"\x00\x01payload", qos=2, packet_id=9, version=MQTT_311)
    p = mqtt.parse_packet(data, MQTT_311)
    assert isinstance(p, mqtt.Publish)
    assert (p.topic, p.qos, p.packet_id, p.payload, p.payload_length) == ("a/b", 2, 9, b"\x00\x01payload", 9)


def test_unknown_version_guesses_5_then_311():
    v5 = enc.publish("t", b"x", user=[("traceparent", TP)])
    p = mqtt.parse_packet(v5)
    assert isinstance(p, mqtt.Publish) and p.version == MQTT_5 and p.user_properties == [("traceparent", TP)]
    # A 3.1.1 payload whose first bytes are not a valid property block falls back to 3.1.1.
    v3 = enc.publish("t", b"\x05\xffhello", version=MQTT_311)
    p = mqtt.parse_packet(v3)
    assert isinstance(p, mqtt.Publish) and p.version == MQTT_311 and p.payload == b"\x05\xffhello"


def test_every_property_type_is_skipped_correctly():
    props = [
        (0x01, b"\x00"), (0x02, b"\x00\x00\x00\x05"), (0x03, enc.utf8("ct")), (0x08, enc.utf8("resp/topic")),
        (0x09, b"\x00\x03abc"), (0x0B, enc.varint(300)), (0x0B, enc.varint(2)), (0x23, b"\x00\x07"),
    ]
    data = enc.publish("x/y", b"tail", props=props, user=[("k", "v")])
    p = mqtt.parse_packet(data, MQTT_5)
    assert isinstance(p, mqtt.Publish)
    assert p.properties[PropertyId.CORRELATION_DATA] == b"abc"
    assert p.properties[PropertyId.SUBSCRIPTION_IDENTIFIER] == [300, 2]
    assert p.properties[PropertyId.TOPIC_ALIAS] == 7
    assert p.payload == b"tail" and p.user_properties == [("k", "v")]
    # CONNECT may carry properties PUBLISH may not.
    cprops = enc.properties([(0x11, b"\x00\x00\x0e\x10"), (0x21, b"\x00\x10"), (0x27, b"\x00\x01\x00\x00"),
                             (0x22, b"\x00\x05"), (0x19, b"\x01"), (0x17, b"\x00"), (0x15, enc.utf8("SCRAM")),
                             (0x16, b"\x00\x02\xaa\xbb")])
    c = mqtt.parse_packet(enc.connect("c", MQTT_5, props=cprops))
    assert isinstance(c, mqtt.Connect) and c.client_id == "c"
    assert c.properties[PropertyId.AUTHENTICATION_METHOD] == "SCRAM"
    assert c.properties[PropertyId.RECEIVE_MAXIMUM] == 16


def test_publish_rejects_invalid():
    assert mqtt.parse_packet(enc.publish("a/+", b"", version=MQTT_311), MQTT_311) is None  # wildcard in topic
    assert mqtt.parse_packet(b"\x36\x05\x00\x01a\x00\x01") is None  # QoS 3
    assert mqtt.parse_packet(b"\x38\x04\x00\x01ab") is None  # DUP with QoS 0
    assert mqtt.parse_packet(enc.publish("t", b"", props=[(0x11, b"\x00\x00\x00\x01")]), MQTT_5) is None  # not a PUBLISH property
    assert mqtt.parse_packet(enc.publish("t", b"", props=[(0x7F, b"")]), MQTT_5) is None  # unknown id
    bad_utf8 = enc.packet(3, 0, b"\x00\x02\xc3\x28payload")
    assert mqtt.parse_packet(bad_utf8, MQTT_311) is None


def test_truncated_publish_keeps_what_was_read():
    data = enc.publish("factory/press/3/cycle", b"p" * 1000, qos=1, packet_id=5,
                       user=[("traceparent", TP), ("big", "v" * 300)])
    p = mqtt.parse_packet(data[:256], MQTT_5)
    assert isinstance(p, mqtt.Publish) and p.truncated
    assert p.topic == "factory/press/3/cycle" and p.packet_id == 5
    assert p.user_properties == [("traceparent", TP)]  # the cut one is not reported
    assert p.payload_length == 1000  # known from the lengths before the cut
    assert p.length == len(data)


def test_acks_and_control_packets():
    pa = mqtt.parse_packet(enc.puback(12))
    assert isinstance(pa, mqtt.PubAck) and pa.packet_id == 12 and pa.packet_type is PacketType.PUBACK
    pa5 = mqtt.parse_packet(enc.puback(12, 0x10, MQTT_5), MQTT_5)
    assert isinstance(pa5, mqtt.PubAck) and pa5.reason_code == 0x10
    assert mqtt.parse_packet(enc.puback(12, 0x10, MQTT_5), MQTT_311) is None
    sub = mqtt.parse_packet(enc.subscribe(3, [("a/#", 1), ("b/+/c", 0)]), MQTT_311)
    assert isinstance(sub, mqtt.Subscribe) and sub.topics == [("a/#", 1), ("b/+/c", 0)]
    sub5 = mqtt.parse_packet(enc.subscribe(3, [("a/#", 0x05)], MQTT_5), MQTT_5)
    assert isinstance(sub5, mqtt.Subscribe) and sub5.topics == [("a/#", 5)]
    ca = mqtt.parse_packet(enc.connack(0, True, MQTT_5), MQTT_5)
    assert isinstance(ca, mqtt.Connack) and ca.session_present and ca.properties[PropertyId.RECEIVE_MAXIMUM] == 20
    assert isinstance(mqtt.parse_packet(enc.connack(5), MQTT_311), mqtt.Connack)
    kinds = [p.packet_type for p in mqtt.parse_packets(b"\xc0\x00\xd0\x00\xe0\x00")]
    assert kinds == [PacketType.PINGREQ, PacketType.PINGRESP, PacketType.DISCONNECT]
    assert mqtt.parse_packet(b"\xc0\x01\x00") is None  # PINGREQ has no body
    assert mqtt.parse_packet(b"\x82\x05\x00\x01\x00\x01a") is None  # SUBSCRIBE needs flags 0b0010


def test_parse_packets_follows_connect_version():
    stream = enc.connect("c", MQTT_311) + enc.publish("t", b"\x00abc", version=MQTT_311)
    pkts = mqtt.parse_packets(stream)
    assert isinstance(pkts[1], mqtt.Publish) and pkts[1].version == MQTT_311 and pkts[1].payload == b"\x00abc"


def test_looks_like_mqtt():
    assert mqtt.looks_like_mqtt(enc.connect("x"))
    assert mqtt.looks_like_mqtt(enc.publish("t/1", b"hello"))
    assert not mqtt.looks_like_mqtt(b"GET / HTTP/1.1\r\n\r\n")
    assert not mqtt.looks_like_mqtt(b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not mqtt.looks_like_mqtt(b"HTTP/1.1 200 OK\r\n\r\n")
    assert not mqtt.looks_like_mqtt(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert not mqtt.looks_like_mqtt(b"")


def test_real_paho_clients_through_mosquitto(mosquitto):
    """Parse the exact bytes paho-mqtt (v5 and 3.1.1) exchanged with a real mosquitto."""
    relay = Relay(("127.0.0.1", mosquitto.port))
    try:
        got: list[bytes] = []
        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sub5", protocol=paho.MQTTv5)
        sub.on_message = lambda c, u, m: got.append(m.payload)
        sub.connect("127.0.0.1", relay.port)
        sub.loop_start()
        sub.subscribe("helix/test/#", qos=1)
        time.sleep(0.3)
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pub311", protocol=paho.MQTTv311)
        pub.connect("127.0.0.1", mosquitto.port)  # direct: only the v5 subscriber goes through the relay
        pub.loop_start()
        pub5 = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pub5", protocol=paho.MQTTv5)
        pub5.connect("127.0.0.1", relay.port)
        pub5.loop_start()
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("traceparent", TP)]
        pub5.publish("helix/test/v5", b"five", qos=1, properties=props).wait_for_publish(5)
        pub.publish("helix/test/v311", b"three", qos=1).wait_for_publish(5)
        deadline = time.time() + 5
        while len(got) < 2 and time.time() < deadline:
            time.sleep(0.05)
        for c in (sub, pub, pub5):
            c.loop_stop()
            c.disconnect()
        assert sorted(got) == [b"five", b"three"]
    finally:
        relay.close()
    up = mqtt.parse_packets(relay.stream("up"))
    down = mqtt.parse_packets(relay.stream("down"))
    # The relay carries two connections; their streams interleave only at segment boundaries, so parse per segment.
    ups = [p for n, d in relay.segments if n == "up" for p in mqtt.parse_packets(d)]
    downs = [p for n, d in relay.segments if n == "down" for p in mqtt.parse_packets(d, MQTT_5)]
    assert up and down
    connects = [p for p in ups if isinstance(p, mqtt.Connect)]
    assert {(c.client_id, c.version) for c in connects} == {("sub5", 5), ("pub5", 5)}
    pubs_up = [p for p in ups if isinstance(p, mqtt.Publish)]
    assert [(p.topic, p.user_properties, p.payload) for p in pubs_up] == [("helix/test/v5", [("traceparent", TP)], b"five")]
    pubs_down = {p.topic: p for p in downs if isinstance(p, mqtt.Publish)}
    assert pubs_down["helix/test/v5"].user_properties == [("traceparent", TP)]  # mosquitto forwards user properties
    assert pubs_down["helix/test/v311"].payload == b"three"
    assert any(isinstance(p, mqtt.Subscribe) and p.topics[0][0] == "helix/test/#" for p in ups)
    assert any(isinstance(p, mqtt.Suback) for p in downs)


# -- property tests ------------------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"), min_size=1, max_size=40)
_pairs = st.lists(st.tuples(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20),
                            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)),
                  max_size=4)


@settings(max_examples=300)
@given(topic=_text, payload=st.binary(max_size=300), qos=st.integers(0, 2), retain=st.booleans(),
       packet_id=st.integers(1, 65535), user=_pairs, version=st.sampled_from([MQTT_5, MQTT_311]))
def test_publish_round_trip_and_every_truncation(topic, payload, qos, retain, packet_id, user, version):
    data = enc.publish(topic, payload, qos=qos, retain=retain, dup=bool(qos) and retain, packet_id=packet_id,
                       version=version, user=user if version == MQTT_5 else [])
    p = mqtt.parse_packet(data, version)
    assert isinstance(p, mqtt.Publish) and not p.truncated
    assert (p.topic, p.qos, p.retain, p.payload, p.payload_length) == (topic, qos, retain, payload, len(payload))
    assert p.packet_id == (packet_id if qos else None)
    if version == MQTT_5:
        assert p.user_properties == user
    for cut in range(len(data)):
        part = mqtt.parse_packet(data[:cut], version)
        if part is not None:
            assert isinstance(part, mqtt.Publish) and part.truncated
            assert part.length == len(data)
            assert topic.startswith(part.topic)
            assert part.user_properties == user[: len(part.user_properties)]
            assert payload.startswith(part.payload)


@settings(max_examples=500)
@given(st.binary(max_size=300), st.sampled_from([None, 3, 4, 5]))
def test_garbage_never_raises(data, version):
    mqtt.parse_packets(data, version)
    mqtt.parse_packet(data, version)
    mqtt.looks_like_mqtt(data)


@settings(max_examples=200)
@given(client_id=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30),
       keepalive=st.integers(0, 65535), version=st.sampled_from([3, 4, 5]))
def test_connect_round_trip_and_truncation(client_id, keepalive, version):
    data = enc.connect(client_id, version, keepalive)
    p = mqtt.parse_packet(data)
    assert isinstance(p, mqtt.Connect) and (p.client_id, p.keepalive, p.version) == (client_id, keepalive, version)
    for cut in range(len(data)):
        part = mqtt.parse_packet(data[:cut])
        assert part is None or (isinstance(part, mqtt.Connect) and part.truncated)


def _vbi(n: int) -> bytes:
    """A variable byte integer without encode_varint's bound: a hostile peer declares lengths past 268,435,455."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


_prop = st.one_of(
    st.builds(lambda k, v: b"\x26" + len(k).to_bytes(2, "big") + k + len(v).to_bytes(2, "big") + v,
              st.binary(max_size=8), st.binary(max_size=8)),  # user properties, any bytes (invalid UTF-8 too)
    st.builds(lambda n: b"\x0b" + _vbi(n), st.sampled_from([0, 1, 268_435_455])),  # subscription identifier
    st.builds(lambda pid, raw: bytes([pid]) + raw, st.integers(0, 255), st.binary(max_size=6)),  # any id, any value
    st.just(b"\x26\xff\xff"),  # a string declared 65,535 long, cut
)


@settings(max_examples=300)
@given(props=st.lists(_prop, max_size=40), declared=st.one_of(st.none(), st.sampled_from([0, 1, 2**21, 2**28 - 1])),
       topic=st.binary(max_size=10), payload=st.binary(max_size=20), first=st.integers(0x30, 0x3F),
       remaining=st.one_of(st.none(), st.sampled_from([0, 3, 2**28 - 1])))
def test_hostile_publish_properties_and_lengths_never_raise(props, declared, topic, payload, first, remaining):
    section = b"".join(props)
    body = len(topic).to_bytes(2, "big") + topic + (b"\x00\x01" if first & 0x06 else b"") + \
        _vbi(len(section) if declared is None else declared) + section + payload
    data = bytes([first]) + _vbi(len(body) if remaining is None else remaining) + body
    for version in (None, MQTT_5, MQTT_311):
        p = mqtt.parse_packet(data, version)
        assert p is None or isinstance(p, mqtt.MqttPacket)
    mqtt.parse_packets(data * 3)
