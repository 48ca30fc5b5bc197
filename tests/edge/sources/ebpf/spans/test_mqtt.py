"""MQTT publishes and receives from kernel events, packets read whole or byte by byte."""
from __future__ import annotations

import time

import paho.mqtt.client as paho
from hypothesis import HealthCheck, given, settings, strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.model import SpanKind
from edge.protocols.mqtt import MQTT_5, MQTT_311
from edge.sources.ebpf.events import CloseEvent, DataEvent, DataMoreEvent, Endpoint, Role
from tests.edge.protocols import mqtt_encode as enc
from tests.edge.protocols.relay import Relay
from ._helpers import (
    OFFSET, CLI, BROKER, TID, SID, TP, IN, OUT, builder, data, assert_clean, _messages, _replay, kernel_view, Wire,
)


def mq(sock, direction, ts, payload, **kw):
    kw.setdefault("role", Role.CLIENT)
    kw.setdefault("local", CLI)
    kw.setdefault("remote", BROKER)
    kw.setdefault("comm", "sensor")
    return data(sock, direction, ts, payload, **kw)


def test_mqtt5_publish_with_traceparent_user_property():
    b = builder()
    out = b.feed([
        mq(5, OUT, 1_000, enc.connect("press-3", MQTT_5)),
        mq(5, IN, 2_000, enc.connack(version=MQTT_5), prev_bytes=20, prev_end=1_100),
    ])
    pub = enc.publish("plant/press/3", b'{"t": 1}', qos=1, packet_id=42, user=[("traceparent", TP), ("tracestate", "a=b")])
    out += b.feed([mq(5, OUT, 3_000, pub, end=3_400, prev_bytes=10, prev_end=2_100)])
    assert len(out) == 1
    sp = out[0]
    assert (sp.name, sp.kind) == ("publish plant/press/3", SpanKind.PRODUCER)
    assert (sp.start_ns, sp.end_ns) == (OFFSET + 3_000, OFFSET + 3_400)
    assert sp.trace_id.hex() == TID and sp.parent_span_id.hex() == SID and sp.trace_state == "a=b"
    a = sp.attributes
    assert a["messaging.system"] == "mqtt" and a["messaging.operation.type"] == "send"
    assert a["messaging.destination.name"] == "plant/press/3" and a["messaging.message.id"] == "42"
    assert a["messaging.mqtt.qos"] == 1 and a["messaging.message.body.size"] == 8
    assert a["messaging.client.id"] == "press-3" and a["network.protocol.version"] == "5"
    assert a["helix.wire.format"] == "w3c"
    # The same connection receiving a publish: a consumer span.
    recv = enc.publish("cmd/press/3", b"stop", user=[("traceparent", TP)])
    sp2 = b.feed([mq(5, IN, 5_000, recv, end=5_300, prev_bytes=len(pub), prev_end=3_400)])[0]
    assert (sp2.name, sp2.kind, sp2.attributes["messaging.operation.type"]) == ("receive cmd/press/3", SpanKind.CONSUMER, "receive")


def test_mqtt311_publish_uses_version_from_connect():
    b = builder()
    b.feed([mq(6, OUT, 1_000, enc.connect("legacy", MQTT_311))])
    # A payload that would also read as an empty v5 property block: the remembered version decides.
    pub = enc.publish("line/1", b"\x00\x01\x02", version=MQTT_311)
    sp = b.feed([mq(6, OUT, 3_000, pub, prev_bytes=4, prev_end=2_000)])[0]
    assert sp.attributes["messaging.message.body.size"] == 3
    assert sp.attributes["network.protocol.version"] == "3.1.1"
    assert sp.attributes["helix.context_from"] == "none"


def test_mqtt_several_publishes_in_one_message_and_topic_alias():
    b = builder()
    b.feed([mq(7, OUT, 1_000, enc.connect("c", MQTT_5))])
    p1 = enc.publish("a/b", b"1", props=[(0x23, b"\x00\x01")])
    p2 = enc.publish("", b"2", props=[(0x23, b"\x00\x01")])
    spans = b.feed([mq(7, OUT, 3_000, p1 + p2, prev_bytes=4, prev_end=2_000)])
    assert [sp.name for sp in spans] == ["publish a/b", "publish a/b"]


def test_broker_side_connections_make_no_spans():
    b = builder()
    ev = dict(role=Role.SERVER, local=BROKER, remote=CLI, comm="mosquitto", pid=300)
    out = b.feed([
        data(8, IN, 1_000, enc.connect("x", MQTT_5), **ev),
        data(8, OUT, 2_000, enc.connack(version=MQTT_5), **ev),
        data(8, IN, 3_000, enc.publish("t", b"p"), **ev),
        data(9, OUT, 4_000, enc.publish("t", b"p"), **ev),  # forwarded to a subscriber, connection seen mid-way
    ])
    assert out == [] and b.stats.broker_side == 2


def test_real_paho_publish_through_mosquitto(mosquitto):
    relay = Relay(("127.0.0.1", mosquitto.port))
    try:
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pub5", protocol=paho.MQTTv5)
        pub.connect("127.0.0.1", relay.port)
        pub.loop_start()
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("traceparent", TP)]
        pub.publish("plant/press/9", b"cycle", qos=1, properties=props).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        time.sleep(0.2)
    finally:
        relay.close()
    spans = _replay(builder(), _messages(relay.records, 0), server_side=False, local=CLI, remote=BROKER, comm="python3")
    assert [(sp.name, sp.kind) for sp in spans] == [("publish plant/press/9", SpanKind.PRODUCER)]
    sp = spans[0]
    assert sp.trace_id.hex() == TID and sp.parent_span_id.hex() == SID
    assert sp.attributes["messaging.client.id"] == "pub5" and sp.attributes["messaging.message.body.size"] == 5
    assert sp.attributes["messaging.mqtt.qos"] == 1


def suback(packet_id=1, version=MQTT_5):
    return enc.packet(9, 0, packet_id.to_bytes(2, "big") + (b"\x00" if version == MQTT_5 else b"") + b"\x00")


def traced_publish(i, topic="plant/t", version=MQTT_5, payload=b"21.5"):
    tp = f"00-{TID[:-1]}{i:x}-{SID}-01"
    return enc.publish(topic, payload, user=[("traceparent", tp)] if version == MQTT_5 else [], version=version)


SUB = dict(role=Role.CLIENT, local=CLI, remote=BROKER, comm="mosquitto_sub")


def subscriber_session(version=MQTT_5):
    """CONNECT, CONNACK, SUBSCRIBE, SUBACK as a subscriber does them, the acks read byte by byte."""
    w = Wire()
    w.io(OUT, enc.connect("sub-1", version))
    w.read_like_libmosquitto(enc.connack(version=version), pause=300_000)
    w.io(OUT, enc.subscribe(1, [("plant/#", 0)], version), pause=100_000)
    w.read_like_libmosquitto(suback(version=version), pause=300_000)
    return w


def consumers(spans):
    return [s for s in spans if s.kind == SpanKind.CONSUMER]


def test_mqtt5_publish_read_byte_by_byte_after_a_gap():
    w = subscriber_session()
    w.read_like_libmosquitto(traced_publish(7), pause=40_000_000)
    first_read_end, last_read_end = w.calls[-3][3], w.calls[-1][3]
    b = builder()
    (rcv,) = consumers(b.feed(kernel_view(9, w.calls, **SUB)))
    assert rcv.name == "receive plant/t" and rcv.trace_id.hex() == TID[:-1] + "7" and rcv.parent_span_id.hex() == SID
    # A receive starts when the read of its first byte returned (not when it began waiting) and ends with its last.
    assert (rcv.start_ns, rcv.end_ns) == (OFFSET + first_read_end, OFFSET + last_read_end)
    a = rcv.attributes
    assert a["messaging.operation.type"] == "receive" and a["messaging.message.body.size"] == 4
    assert a["network.protocol.version"] == "5" and a["messaging.client.id"] == "sub-1"
    assert "helix.mqtt.truncated" not in a
    assert b.stats.topped_up >= 3 and b.stats.internal_errors == 0 and b.stats.unparsed == 0


def test_mqtt311_publish_read_byte_by_byte():
    w = subscriber_session(MQTT_311)
    w.read_like_libmosquitto(traced_publish(1, "line/1", MQTT_311, b"\x00\x01\x02"), pause=40_000_000)
    b = builder()
    (rcv,) = consumers(b.feed(kernel_view(9, w.calls, **SUB)))
    assert rcv.name == "receive line/1" and rcv.attributes["network.protocol.version"] == "3.1.1"
    assert rcv.attributes["messaging.message.body.size"] == 3 and rcv.attributes["helix.context_from"] == "none"


def test_three_qos0_deliveries_after_suback_each_after_a_gap():
    w = subscriber_session()
    for i in range(3):
        w.read_like_libmosquitto(traced_publish(i, f"plant/{i}"), pause=20_000_000)
    rcv = consumers(builder().feed(kernel_view(9, w.calls, **SUB)))
    assert [s.name for s in rcv] == ["receive plant/0", "receive plant/1", "receive plant/2"]
    assert [s.trace_id.hex() for s in rcv] == [TID[:-1] + str(i) for i in range(3)]


def test_three_qos0_deliveries_back_to_back_in_one_message():
    """No direction change and no gap: one message to the probes, whose top-ups carry all three packets."""
    w = subscriber_session()
    pkts = [traced_publish(i, f"p/{i}", payload=b"") for i in range(3)]
    assert len(suback()) + sum(map(len, pkts)) <= 256, "all three inside one snapshot"
    w.read_like_libmosquitto(pkts[0], pause=1_000_000)  # 1 ms after the SUBACK: the same message
    for pk in pkts[1:]:
        w.read_like_libmosquitto(pk)
    records = kernel_view(9, w.calls, **SUB)
    assert sum(1 for r in records if isinstance(r, DataEvent) and r.direction == IN) == 2  # CONNACK, SUBACK+publishes
    b = builder()
    spans = []
    for r in records:  # one at a time: each delivery is a span as soon as its last byte is in
        got = consumers(b.feed([r]))
        if got:
            assert isinstance(r, DataMoreEvent) and r.end_ns == got[0].end_ns - OFFSET
        spans += got
    assert [s.trace_id.hex() for s in spans] == [TID[:-1] + str(i) for i in range(3)]
    assert len({s.start_ns for s in spans}) == 3


def test_several_publishes_in_one_read_each_become_a_span():
    w = subscriber_session()
    w.io(IN, b"".join(traced_publish(i, payload=b"") for i in range(2)), pause=20_000_000)
    rcv = consumers(builder().feed(kernel_view(9, w.calls, **SUB)))
    assert [s.trace_id.hex() for s in rcv] == [TID[:-1] + "0", TID[:-1] + "1"]
    assert rcv[0].end_ns == rcv[1].end_ns  # one read returned both


def test_a_stream_longer_than_the_snapshot_stops_at_payload_bytes():
    w = subscriber_session()
    w.read_like_libmosquitto(traced_publish(0, payload=b"x" * 100), pause=20_000_000)
    begin = w.calls[-4][2]  # command byte, two remaining-length bytes, the rest
    w.read_like_libmosquitto(traced_publish(1, payload=b"x" * 100))  # its properties lie across byte 256
    w.read_like_libmosquitto(traced_publish(2, payload=b"x" * 100))  # beyond the snapshot: the probes send nothing
    records = kernel_view(9, w.calls, **SUB)
    assert sum(len(r.payload) for r in records if r.ts_ns >= begin) == 256
    b = builder()
    rcv = consumers(b.feed(records + [CloseEvent(10**10, 100, 101, 7, 9, 0, 0, 0)]))
    assert rcv[0].trace_id.hex() == TID[:-1] + "0" and "helix.mqtt.truncated" not in rcv[0].attributes
    # The second is cut inside its properties: a span marked truncated, without the context it could not read.
    assert len(rcv) == 2 and rcv[1].attributes["helix.mqtt.truncated"] is True
    assert rcv[1].attributes["helix.context_from"] == "none"
    assert_clean(b)


def test_broker_reading_byte_by_byte_makes_no_spans():
    w = Wire()
    w.read_like_libmosquitto(enc.connect("pub", MQTT_5))
    w.io(OUT, enc.connack(version=MQTT_5))
    w.read_like_libmosquitto(traced_publish(3), pause=10_000_000)
    b = builder()
    assert b.feed(kernel_view(8, w.calls, role=Role.SERVER, local=BROKER, remote=CLI, comm="mosquitto")) == []
    assert b.stats.broker_side == 1


def test_a_lost_top_up_stops_assembly_without_guessing():
    w = subscriber_session()
    w.read_like_libmosquitto(traced_publish(5), pause=20_000_000)
    records = kernel_view(9, w.calls, **SUB)
    del records[-2]  # the remaining-length byte of the publish never arrived (ring buffer full)
    b = builder()
    spans = b.feed(records) + b.flush(10**12)
    assert consumers(spans) == [] and b.stats.more_gaps == 1 and b.stats.internal_errors == 0


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=6), min_size=3, max_size=3),
       st.sampled_from([MQTT_5, MQTT_311]))
def test_any_read_pattern_of_spaced_deliveries_gives_one_span_each(cuts, version):
    """However a client splits its reads, each delivery after an idle gap is one receive span with its context."""
    w = subscriber_session(version)
    for i, sizes in enumerate(cuts):
        pkt = traced_publish(i, f"t/{i}", version)
        chunks, pos = [], 0
        for n in sizes:
            if pos < len(pkt):
                chunks.append(pkt[pos:pos + n])
                pos += n
        if pos < len(pkt):
            chunks.append(pkt[pos:])
        w.io(IN, *chunks, pause=20_000_000)
    b = builder()
    rcv = consumers(b.feed(kernel_view(9, w.calls, **SUB)) + b.flush(10**12))
    assert [s.name for s in rcv] == [f"receive t/{i}" for i in range(3)]
    if version == MQTT_5:
        assert [s.trace_id.hex() for s in rcv] == [TID[:-1] + str(i) for i in range(3)]
    assert b.stats.internal_errors == 0 and b.stats.unparsed == 0


def test_a_publish_whose_rest_is_read_after_the_message_gap_is_one_receive():
    """A subscriber taken off the CPU between its fixed-header reads and the rest: the probes start a new message
    with the rest (the idle gap), which resumes the packet the snapshot ends in."""
    w = subscriber_session()
    pkt = traced_publish(4)
    w.io(IN, pkt[:1], pkt[1:2], pause=20_000_000)
    w.io(IN, pkt[2:], pause=20_000_000)
    records = kernel_view(9, w.calls, **SUB)
    assert isinstance(records[-1], DataEvent) and records[-1].payload == pkt[2:]  # the rest: a message of its own
    b = builder()
    (rcv,) = consumers(b.feed(records) + b.flush(10**12))
    assert rcv.name == "receive plant/t" and rcv.trace_id.hex() == TID[:-1] + "4"
    assert (rcv.start_ns, rcv.end_ns) == (OFFSET + w.calls[-3][3], OFFSET + w.calls[-1][3])
    assert "helix.mqtt.truncated" not in rcv.attributes and rcv.attributes["messaging.message.body.size"] == 4
    assert b.stats.resumed_packets == 1 and b.stats.unparsed == 0 and b.stats.internal_errors == 0


def test_a_new_message_after_a_lost_record_does_not_resume_the_packet():
    w = subscriber_session()
    pkt = traced_publish(4)
    w.io(IN, pkt[:1], pkt[1:2], pause=20_000_000)
    w.io(IN, pkt[2:], pause=20_000_000)
    records = kernel_view(9, w.calls, **SUB)
    del records[-2]  # the remaining-length byte never arrived: the rest's prev_bytes (2) no longer match the snapshot
    b = builder()
    assert consumers(b.feed(records) + b.flush(10**12)) == [] and b.stats.resumed_packets == 0


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.tuples(st.integers(1, 40), st.booleans()), min_size=1, max_size=6), min_size=3,
                max_size=3), st.sampled_from([MQTT_5, MQTT_311]))
def test_any_read_pattern_with_pauses_inside_packets_gives_one_span_each(cuts, version):
    """Reads split anyhow, with pauses longer than the message gap between any two of a packet's reads."""
    w = subscriber_session(version)
    for i, sizes in enumerate(cuts):
        pkt = traced_publish(i, f"t/{i}", version)
        pos, first = 0, True
        for n, pause in sizes:
            if pos < len(pkt):
                w.io(IN, pkt[pos:pos + n], pause=20_000_000 if first or pause else 0)
                pos, first = pos + n, False
        if pos < len(pkt):
            w.io(IN, pkt[pos:], pause=20_000_000 if first else 6_000_000)
    b = builder()
    rcv = consumers(b.feed(kernel_view(9, w.calls, **SUB)) + b.flush(10**12))
    assert [s.name for s in rcv] == [f"receive t/{i}" for i in range(3)]
    if version == MQTT_5:
        assert [s.trace_id.hex() for s in rcv] == [TID[:-1] + str(i) for i in range(3)]
    assert all("helix.mqtt.truncated" not in s.attributes for s in rcv)
    assert b.stats.internal_errors == 0 and b.stats.unparsed == 0


def test_a_loopback_wakeup_byte_is_not_taken_for_an_mqtt_publish():
    # paho wakes its network loop through a loopback TCP socket pair by writing b"0" (0x30, a PUBLISH header
    # byte); two wakeups read at once, b"00", parse as the start of a PUBLISH of 48 bytes. No span from that.
    b = builder()
    a_end, z_end = Endpoint("127.0.0.1", 40100), Endpoint("127.0.0.1", 40101)
    out = []
    for i in range(5):
        out += b.feed([
            data(9, OUT, 1_000 + i * 10_000, b"00", role=Role.CLIENT, local=a_end, remote=z_end, prev_bytes=2 if i else 0,
                 prev_end=(i * 10_000 - 5_000) if i else 0),
            data(10, IN, 1_200 + i * 10_000, b"00", role=Role.SERVER, local=z_end, remote=a_end, prev_bytes=2 if i else 0,
                 prev_end=(i * 10_000 - 4_800) if i else 0),
        ])
    out += b.flush(10**12)
    assert [s.name for s in out] == []
    # A whole PUBLISH on a connection first seen mid-stream (no CONNECT, no broker port) is evidence enough.
    sp = b.feed([data(11, IN, 200_000, enc.publish("cmd/x", b"go"), role=Role.CLIENT, local=a_end,
                      remote=Endpoint("127.0.0.1", 40999))])
    assert [s.name for s in sp] == ["receive cmd/x"]
