"""Device SDKs through the whole path with real parts: device → Mosquitto → agent → MQTT uplink → gateway → OTLP
peer; and one trace that starts in an OpenTelemetry-SDK app, crosses MQTT to a C device and comes back."""
from __future__ import annotations

import asyncio
import queue
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract as otel_extract
from opentelemetry.propagate import inject as otel_inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind as OtelKind
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench._c_sdk import build_mosquitto_device
from edge.model import SpanKind, StatusCode
from edge.sdk import Tracer
from tests.edge.agent.test_end_to_end import Stack, _until, stack  # noqa: F401 - the stack fixture
from tests.sdk.conftest import need, need_file


@pytest.fixture(scope="module")
def c_device(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("gcc")
    need_file("/usr/include/mosquitto.h", "libmosquitto-dev")
    return build_mosquitto_device(tmp_path_factory.mktemp("c-device") / "mosquitto_device")


def _device_spans(stack: Stack, device: str) -> list:
    return [s for s in stack.peer.spans() if s.resource.as_dict().get("device.id") == device]


async def test_c_device_spans_reach_the_otlp_backend(stack: Stack, c_device: Path) -> None:
    r = await asyncio.to_thread(subprocess.run, [str(c_device), "127.0.0.1", str(stack.broker.port), "pump-c",
                                                 "--traces", "5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "messages=5 acked=5" in r.stdout
    await _until(lambda: len(_device_spans(stack, "pump-c")) == 15, what="15 C-device spans at the OTLP peer")
    spans = _device_spans(stack, "pump-c")
    roots = sorted((s for s in spans if s.name == "controlCycle"), key=lambda s: s.attributes["cycle"])
    assert [r.attributes["cycle"] for r in roots] == [0, 1, 2, 3, 4]
    for root in roots:
        assert root.is_root and root.status_code == StatusCode.OK and root.attributes["helix.source"] == "sdk-mqtt"
        assert {k: root.attributes[k] for k in ("device.mode", "setpoint", "manual")} == \
            {"device.mode": "auto", "setpoint": 21.5, "manual": False}
        kids = {s.name: s for s in spans if s.parent_span_id == root.span_id}
        assert set(kids) == {"readSensor", "actuateValve"}
        assert all(k.trace_id == root.trace_id and root.start_ns <= k.start_ns <= k.end_ns <= root.end_ns
                   for k in kids.values())
        assert kids["readSensor"].attributes["sensor.value"] == 20.25
        assert [e.name for e in kids["actuateValve"].events] == ["valve.opened"]
    assert roots[0].resource.as_dict()["service.name"] == "pump-c"
    st = stack.agent.status()["mqtt"]
    assert st["missing_messages"] == 0 and st["device_cut"] == {}


async def test_python_device_spans_reach_the_otlp_backend_exactly(stack: Stack) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="py-dev", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", stack.broker.port)
    client.loop_start()
    tracer = Tracer(client, "pump-py")  # its defaults: a message per 128 spans or 0.5 s
    sent = []
    for i in range(5):
        with tracer.span("controlCycle", kind=SpanKind.SERVER, attributes={"cycle": i}) as root:
            root.set_attributes({"device.mode": "auto", "setpoint": 21.5, "manual": False})
            with tracer.span("readSensor") as read:
                read.add_event("sample", {"raw": 4095})
            with tracer.span("actuateValve") as act:
                act.set_status(False, "valve stuck")
        sent += [root, read, act]
    await _until(lambda: len(_device_spans(stack, "pump-py")) == 15, what="15 Python-device spans")
    client.loop_stop()
    got = {s.span_id: s for s in _device_spans(stack, "pump-py")}
    for s in sent:
        g = got[s.span_id]
        assert (g.trace_id, g.parent_span_id, g.name, g.start_ns, g.end_ns) == \
            (s.trace_id, s.parent_id, s.name, s.start_ns, s.end_ns)
        assert {k: v for k, v in g.attributes.items() if k != "helix.source"} == s.attributes
        assert [(e.name, e.time_ns - g.start_ns, e.attributes) for e in g.events] == \
            [(e[0], e[1], e[2] if len(e) > 2 else {}) for e in s.events or []]
        assert (int(g.status_code), g.status_message) == (s.status, s.status_message)
        assert int(g.kind) == int(s.kind)
    assert stack.agent.status()["mqtt"]["missing_messages"] == 0


async def test_a_trace_from_an_otel_app_crosses_mqtt_to_a_c_device_and_back(stack: Stack, c_device: Path) -> None:
    device = subprocess.Popen([str(c_device), "127.0.0.1", str(stack.broker.port), "valve-c", "--commands", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert (await asyncio.to_thread(device.stdout.readline)).strip() == "READY"
        # The app uses the OpenTelemetry SDK at its defaults: BatchSpanProcessor (5 s delay), OTLP/gRPC to the agent.
        provider = TracerProvider(resource=Resource.create({"service.name": "order-service"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{stack.grpc_port}",
                                                                        insecure=True)))
        replies: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        app = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="order-app", protocol=mqtt.MQTTv5)
        app.on_message = lambda c, u, m: replies.put(m)
        subscribed: queue.Queue[bool] = queue.Queue()
        app.on_subscribe = lambda *a: subscribed.put(True)
        app.connect("127.0.0.1", stack.broker.port)
        app.loop_start()
        app.subscribe("devices/valve-c/reply", qos=1)
        subscribed.get(timeout=5)

        def order() -> None:
            tracer = provider.get_tracer("order-app")
            with tracer.start_as_current_span("createOrder", kind=OtelKind.SERVER):
                with tracer.start_as_current_span("publish devices/valve-c/cmd", kind=OtelKind.PRODUCER):
                    carrier: dict[str, str] = {}
                    otel_inject(carrier)  # W3C traceparent, as MQTT v5 user properties
                    props = Properties(PacketTypes.PUBLISH)
                    props.UserProperty = list(carrier.items())
                    app.publish("devices/valve-c/cmd", b"open", qos=1, properties=props).wait_for_publish(5)
                reply = replies.get(timeout=15)
                ctx = otel_extract(dict(reply.properties.UserProperty))
                with tracer.start_as_current_span("handleReply", context=ctx, kind=OtelKind.CONSUMER):
                    pass

        await asyncio.to_thread(order)
        await asyncio.to_thread(provider.shutdown)  # the SDK's own flush at exit; its delay untouched
        out, err = await asyncio.to_thread(device.communicate, timeout=30)
        assert device.returncode == 0, err
        app.loop_stop()
    finally:
        if device.poll() is None:
            device.kill()
            device.wait()
    names = {"createOrder", "publish devices/valve-c/cmd", "handleCommand", "readSensor", "actuateValve",
             "publish reply", "handleReply"}
    await _until(lambda: names <= {s.name for s in stack.peer.spans()}, what="the round trip's 7 spans")
    got = {s.name: s for s in stack.peer.spans() if s.name in names}
    assert len({s.trace_id for s in got.values()}) == 1, "one trace, app → device → app"
    assert got["handleCommand"].parent_span_id == got["publish devices/valve-c/cmd"].span_id
    assert got["handleCommand"].resource.as_dict()["device.id"] == "valve-c"
    assert got["publish reply"].parent_span_id == got["handleCommand"].span_id
    assert got["handleReply"].parent_span_id == got["publish reply"].span_id
    assert got["handleReply"].resource.as_dict()["service.name"] == "order-service"
    assert got["handleCommand"].attributes["helix.source"] == "sdk-mqtt"
    assert got["createOrder"].attributes["helix.source"] == "sdk-otlp"
