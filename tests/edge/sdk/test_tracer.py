from __future__ import annotations

import queue
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.codec.sdk_cbor import decode_payload
from edge.demo.broker import Mosquitto
from edge.model import SpanKind, StatusCode, new_span_id, new_trace_id
from edge.propagation import SpanContext
from edge.sdk import Tracer, extract


def _client(port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


@pytest.fixture
def received(mosquitto: Mosquitto):
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer", protocol=mqtt.MQTTv5)
    subscribed = queue.Queue()
    sub.on_message = lambda c, u, m: got.put(m)
    sub.on_subscribe = lambda *a: subscribed.put(True)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("helix/sdk/#", qos=1)
    sub.loop_start()
    subscribed.get(timeout=5)
    yield got
    sub.loop_stop()
    sub.disconnect()


def test_spans_are_published_as_cbor_with_context(mosquitto: Mosquitto, received: queue.Queue) -> None:
    client = _client(mosquitto.port, "dev-1")
    tracer = Tracer(client, "dev-1", resource={"device.model.identifier": "RPi4"})
    remote = SpanContext(new_trace_id(), new_span_id(), 1, "")
    with tracer.span("handleCommand", kind=SpanKind.CONSUMER, parent=remote) as outer:
        with tracer.span("readSensor", attributes={"sensor.id": "t1"}) as inner:
            inner.add_event("sample", {"v": 21.5})
        outer.set_status(True)
    msg = received.get(timeout=5)
    assert msg.topic == "helix/sdk/dev-1/spans"
    # Span reports carry their ids inside; the agent needs no traceparent property on them (none is sent).
    assert extract(msg.properties) is None
    out = decode_payload(msg.payload, {})
    assert out.errors == []
    by_name = {s.name: s for s in out.spans}
    assert set(by_name) == {"handleCommand", "readSensor"}
    h, r = by_name["handleCommand"], by_name["readSensor"]
    assert h.trace_id == r.trace_id == remote.trace_id
    assert h.parent_span_id == remote.span_id and r.parent_span_id == h.span_id
    assert h.kind == SpanKind.CONSUMER and h.status_code == StatusCode.OK
    assert r.attributes == {"sensor.id": "t1"} and r.events[0].name == "sample"
    assert h.start_ns <= r.start_ns <= r.end_ns <= h.end_ns
    assert h.resource.as_dict()["device.model.identifier"] == "RPi4"
    assert h.resource.service_name == "dev-1"
    client.loop_stop()


def test_exception_marks_span_failed_and_still_publishes(mosquitto: Mosquitto, received: queue.Queue) -> None:
    client = _client(mosquitto.port, "dev-2")
    tracer = Tracer(client, "dev-2")
    with pytest.raises(ValueError):
        with tracer.span("calibrate"):
            raise ValueError("sensor out of range")
    msg = received.get(timeout=5)
    (s,) = decode_payload(msg.payload, {}).spans
    assert s.status_code == StatusCode.ERROR and "sensor out of range" in s.status_message
    assert s.events[0].name == "exception"
    assert s.events[0].attributes["exception.type"] == "ValueError"
    assert s.is_root
    client.loop_stop()


def test_per_root_mode_publishes_when_the_local_root_ends(mosquitto: Mosquitto, received: queue.Queue) -> None:
    client = _client(mosquitto.port, "dev-3")
    tracer = Tracer(client, "dev-3", max_batch=100, max_delay=0)
    root = tracer.start_span("cycle")
    for i in range(5):
        tracer.start_span(f"step{i}", parent=root).end()
    time.sleep(0.2)
    assert received.empty(), "children alone must not be published before their root ends"
    root.end()
    msg = received.get(timeout=5)
    assert len(decode_payload(msg.payload, {}).spans) == 6
    client.loop_stop()


def test_traces_are_batched_by_count_and_delay_and_numbered(mosquitto: Mosquitto, received: queue.Queue) -> None:
    client = _client(mosquitto.port, "dev-4")
    tracer = Tracer(client, "dev-4", max_batch=8, max_delay=0.3)
    t0 = time.monotonic()
    for i in range(3):  # 9 spans: a message of 8 at once, the last span 0.3 s later
        with tracer.span("cycle", attributes={"i": i}):
            with tracer.span("step"):
                pass
            tracer.start_span("step2").end()
    first = decode_payload(received.get(timeout=5).payload, {})
    assert len(first.spans) == 8 and first.seq == 0
    second = decode_payload(received.get(timeout=5).payload, {})
    assert len(second.spans) == 1 and second.seq == 1 and time.monotonic() - t0 >= 0.3
    with tracer.span("late"):
        pass
    tracer.flush()  # at once, whatever the delay
    third = decode_payload(received.get(timeout=1).payload, {})
    assert [s.name for s in third.spans] == ["late"] and third.seq == 2
    roots = [s for s in first.spans + second.spans if s.name == "cycle"]
    assert sorted(r.attributes["i"] for r in roots) == [0, 1, 2] and all(r.is_root for r in roots)
    assert all(s.trace_id in {r.trace_id for r in roots} for s in first.spans + second.spans)
    client.loop_stop()


def test_attribute_values_of_other_types_are_sent_as_text(mosquitto: Mosquitto, received: queue.Queue) -> None:
    client = _client(mosquitto.port, "dev-5")
    tracer = Tracer(client, "dev-5", max_delay=0)
    with tracer.span("odd", attributes={"path": Path("/dev/ttyS0"), "ok": 1}):
        pass
    (s,) = decode_payload(received.get(timeout=5).payload, {}).spans
    assert s.attributes == {"path": "/dev/ttyS0", "ok": 1}
    client.loop_stop()


def test_a_batch_over_the_message_limit_is_split_and_each_part_numbered(mosquitto: Mosquitto,
                                                                         received: queue.Queue) -> None:
    client = _client(mosquitto.port, "dev-6")
    tracer = Tracer(client, "dev-6", max_batch=10, max_delay=60, max_message=4000)
    for i in range(10):  # ~1 KB each: the batch of 10 goes out as 4 messages of 2-3 spans
        tracer.start_span("blob", attributes={"i": i, "data": "x" * 1000}).end()
    got = [decode_payload(received.get(timeout=5).payload, {}) for _ in range(4)]
    assert [len(d.spans) for d in got] == [2, 3, 2, 3] and [d.seq for d in got] == [0, 1, 2, 3]
    assert got[0].run is not None and {d.run for d in got} == {got[0].run}  # one run of the device
    assert sorted(s.attributes["i"] for d in got for s in d.spans) == list(range(10))
    assert tracer.published_messages == 4
    client.loop_stop()
