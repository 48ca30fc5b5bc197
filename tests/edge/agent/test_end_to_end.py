"""The whole path with real parts: OpenTelemetry SDK and device SDK → agent → MQTT uplink → gateway → OTLP peer."""
from __future__ import annotations

import asyncio
import gzip
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import paho.mqtt.client as mqtt
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind as OtelKind
from opentelemetry.trace import Status, StatusCode as OtelStatus

from edge.agent import Agent
from edge.codec.otlp import request_from_spans, request_to_json
from edge.config import parse_config
from edge.demo.broker import Mosquitto, free_port
from edge.demo.otlp_peer import OtlpPeer
from edge.model import Span, new_span_id, new_trace_id
from edge.propagation import SpanContext
from edge.sdk import Tracer
from uplink.gateway import Gateway


@dataclass
class Stack:
    agent: Agent
    peer: OtlpPeer
    broker: Mosquitto
    grpc_port: int
    http_port: int


async def _until(pred, timeout: float = 15.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def stack(mosquitto: Mosquitto, otlp_peer: OtlpPeer, tmp_path: Path) -> AsyncIterator[Stack]:
    grpc_port, http_port, gw_port = free_port(), free_port(), free_port()
    cfg = parse_config({
        "node": {"id": "node-e2e"},
        "sources": {"mqtt": {"broker": mosquitto.url, "max_payload": "64KiB"},
                    "otlp": {"grpc_listen": f"127.0.0.1:{grpc_port}", "http_listen": f"127.0.0.1:{http_port}",
                             "max_request": "256KiB"},
                    "ebpf": {"enabled": False}},
        "uplink": {"broker": mosquitto.url, "batch_max_age": "200ms", "spool_dir": str(tmp_path / "spool")},
        "gateway": {"broker": mosquitto.url, "state_dir": "", "http_listen": f"127.0.0.1:{gw_port}",
                    "export_endpoint": otlp_peer.grpc_endpoint},
        # The governor measures this whole process (the test runner, ~300 MiB deep into the suite), and the tests
        # allocate here too (a 10 MiB gzip bomb): at the default limit its headroom is the 11 MiB floor, so the
        # test's own allocations would read as pressure and sample the good spans out. Memory has its own tests.
        "memory": {"limit": "1GiB"},
    })
    stop = asyncio.Event()
    gateway = Gateway(cfg.gateway)
    agent = Agent(cfg)
    tasks = [asyncio.create_task(gateway.run(stop)), asyncio.create_task(agent.run(stop))]
    await asyncio.wait_for(agent.started.wait(), 15)
    assert agent.mqtt is not None
    await asyncio.wait_for(agent.mqtt.ready.wait(), 15)
    await asyncio.sleep(0.3)  # the gateway's subscription
    yield Stack(agent, otlp_peer, mosquitto, grpc_port, http_port)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)


def _otel_app(exporter, service: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def _assert_same(sent: ReadableSpan, got: Span) -> None:
    ctx = sent.get_span_context()
    assert got.trace_id == ctx.trace_id.to_bytes(16, "big")
    assert got.span_id == ctx.span_id.to_bytes(8, "big")
    assert got.parent_span_id == (sent.parent.span_id.to_bytes(8, "big") if sent.parent else b"")
    assert got.name == sent.name
    assert (got.start_ns, got.end_ns) == (sent.start_time, sent.end_time)
    assert int(got.kind) == sent.kind.value + 1  # the OTel API numbers kinds from 0 (INTERNAL)
    attrs = {k: v for k, v in got.attributes.items() if k != "helix.source"}
    assert attrs == {k: list(v) if isinstance(v, tuple) else v for k, v in sent.attributes.items()}
    assert got.resource.as_dict()["service.name"] == sent.resource.attributes["service.name"]


async def test_otel_sdk_and_device_spans_arrive_exactly_in_one_trace(stack: Stack) -> None:
    provider, memory = _otel_app(GrpcExporter(endpoint=f"http://127.0.0.1:{stack.grpc_port}", insecure=True),
                                 "order-service")
    tracer = provider.get_tracer("test.app", "1.0")

    def app() -> SpanContext:
        with tracer.start_as_current_span("createOrder", kind=OtelKind.SERVER,
                                          attributes={"order.id": "ORD-1", "order.amount": 12.5, "vip": True,
                                                      "items": ("a", "b"), "qty": 3}) as root:
            with tracer.start_as_current_span("publish devices/d1/cmd", kind=OtelKind.PRODUCER) as pub:
                ctx = pub.get_span_context()
            root.set_status(Status(OtelStatus.OK))
        return SpanContext(ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"))

    remote = await asyncio.to_thread(app)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-d1", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", stack.broker.port)
    client.loop_start()
    device = Tracer(client, "d1")
    with device.span("handleCommand", parent=remote) as h:
        with device.span("readSensor", attributes={"sensor.value": 20.25}):
            pass
        h.set_status(True)
    await _until(lambda: len(stack.peer.spans()) >= 4, what="4 spans at the OTLP peer")
    client.loop_stop()
    got = {s.name: s for s in stack.peer.spans()}
    assert set(got) == {"createOrder", "publish devices/d1/cmd", "handleCommand", "readSensor"}
    for sent in memory.get_finished_spans():
        _assert_same(sent, got[sent.name])
    assert len({s.trace_id for s in got.values()}) == 1, "device spans continue the app's trace"
    assert got["handleCommand"].parent_span_id == remote.span_id
    assert got["readSensor"].parent_span_id == got["handleCommand"].span_id
    assert got["readSensor"].attributes["sensor.value"] == 20.25
    assert got["handleCommand"].attributes["helix.source"] == "sdk-mqtt"
    assert got["createOrder"].attributes["helix.source"] == "sdk-otlp"
    assert got["handleCommand"].resource.as_dict()["device.id"] == "d1"
    provider.shutdown()


async def test_otlp_http_protobuf_and_json(stack: Stack) -> None:
    provider, memory = _otel_app(HttpExporter(endpoint=f"http://127.0.0.1:{stack.http_port}/v1/traces"), "http-app")
    tracer = provider.get_tracer("t")

    def app() -> None:
        with tracer.start_as_current_span("viaHttp", attributes={"k": "v"}):
            pass

    await asyncio.to_thread(app)
    json_span = Span(new_trace_id(), new_span_id(), "viaJson", 1_700_000_000_000_000_001, 1_700_000_000_000_000_999,
                     parent_span_id=new_span_id(), attributes={"n": 7, "s": "x", "big": 2**62})
    body = request_to_json(request_from_spans([json_span], source_attribute=False))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{stack.http_port}/v1/traces", data=body,
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200
            assert (await r.json()) == {} or "partialSuccess" not in await r.json()
    await _until(lambda: {"viaHttp", "viaJson"} <= {s.name for s in stack.peer.spans()}, what="http spans")
    got = {s.name: s for s in stack.peer.spans()}
    _assert_same(memory.get_finished_spans()[0], got["viaHttp"])
    j = got["viaJson"]
    assert (j.trace_id, j.span_id, j.parent_span_id) == (json_span.trace_id, json_span.span_id, json_span.parent_span_id)
    assert (j.start_ns, j.end_ns) == (json_span.start_ns, json_span.end_ns)
    assert {k: v for k, v in j.attributes.items() if k != "helix.source"} == json_span.attributes
    provider.shutdown()


async def test_bad_input_is_refused_counted_and_good_data_still_flows(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.http_port}/v1/traces"
    bad_id = request_from_spans([Span(new_trace_id(), new_span_id(), "good-neighbour", 1, 2)])
    bad_id.resource_spans[0].scope_spans[0].spans.add(name="bad", trace_id=b"\x01" * 5, span_id=b"\x02" * 8)
    async with aiohttp.ClientSession() as http:
        async def post(data: bytes, ctype: str = "application/x-protobuf", **headers: str) -> aiohttp.ClientResponse:
            async with http.post(url, data=data, headers={"Content-Type": ctype, **headers}) as r:
                await r.read()
                return r

        assert (await post(os.urandom(300))).status == 400
        assert (await post(b"{not json", "application/json")).status == 400
        assert (await post(b"x", "text/plain")).status == 415
        assert (await post(b"\0" * (300 * 1024))).status == 413
        assert (await post(gzip.compress(b"\0" * (10 * 1024 * 1024)), **{"Content-Encoding": "gzip"})).status == 413
        gz = request_from_spans([Span(new_trace_id(), new_span_id(), "gzipped", 1, 2)]).SerializeToString()
        assert (await post(gzip.compress(gz), **{"Content-Encoding": "gzip"})).status == 200
        async with http.post(url, data=bad_id.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}) as r:
            assert r.status == 200
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
            resp = ExportTraceServiceResponse.FromString(await r.read())
            assert resp.partial_success.rejected_spans == 1
    # Garbage bytes on the gRPC port: the connection fails, the server does not.
    with socket.create_connection(("127.0.0.1", stack.grpc_port)) as s:
        s.sendall(os.urandom(4096))
    # Garbage and an invalid traceparent on the SDK topic.
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="garbage", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", stack.broker.port)
    pub.loop_start()
    # 0xff (a "break" with nothing to end) can never start a CBOR item: random bytes alone sometimes decode.
    pub.publish("helix/sdk/evil/spans", b"\xff" + os.urandom(200), qos=1).wait_for_publish(5)
    stats = stack.agent.status()
    assert stats["otlp"]["dropped"]["bad_request"] == 3 and stats["otlp"]["dropped"]["oversize"] == 2
    assert stats["otlp"]["dropped"]["bad_span"] == 1
    # Good data after all that still arrives.
    provider, _ = _otel_app(GrpcExporter(endpoint=f"http://127.0.0.1:{stack.grpc_port}", insecure=True), "after")
    await asyncio.to_thread(lambda: provider.get_tracer("t").start_span("after-the-storm").end())
    device = Tracer(pub, "ok-device")
    device.start_span("device-after").end()
    await _until(lambda: {"after-the-storm", "device-after", "good-neighbour", "gzipped"} <= {s.name for s in stack.peer.spans()},
                 what="good spans after bad input")
    await _until(lambda: stack.agent.status()["mqtt"]["dropped"]["not_cbor"] == 1, what="garbage counted")
    pub.loop_stop()
    provider.shutdown()


async def test_spans_accepted_before_stop_are_flushed(mosquitto: Mosquitto, otlp_peer: OtlpPeer, tmp_path: Path) -> None:
    grpc_port = free_port()
    cfg = parse_config({
        "sources": {"mqtt": {"enabled": False}, "ebpf": {"enabled": False},
                    "otlp": {"grpc_listen": f"127.0.0.1:{grpc_port}", "http_listen": ""}},
        "uplink": {"broker": mosquitto.url, "batch_max_age": "1h", "batch_max_spans": 100000,
                   "spool_dir": str(tmp_path / "spool")},
        "gateway": {"broker": mosquitto.url, "state_dir": "", "http_listen": "", "export_endpoint": otlp_peer.grpc_endpoint},
        "memory": {"limit": "1GiB"},  # as in `stack`: the governor would measure the test runner's allocations
    })
    stop_agent, stop_gw = asyncio.Event(), asyncio.Event()
    gw_task = asyncio.create_task(Gateway(cfg.gateway).run(stop_gw))
    agent = Agent(cfg)
    agent_task = asyncio.create_task(agent.run(stop_agent))
    await asyncio.wait_for(agent.started.wait(), 10)
    await asyncio.sleep(0.3)
    provider, _ = _otel_app(GrpcExporter(endpoint=f"http://127.0.0.1:{grpc_port}", insecure=True), "flush")
    tracer = provider.get_tracer("t")
    await asyncio.to_thread(lambda: [tracer.start_span(f"s{i}").end() for i in range(50)])
    await asyncio.sleep(0.3)
    assert otlp_peer.spans() == [], "a one-hour batch age holds everything in the agent"
    stop_agent.set()
    await asyncio.wait_for(agent_task, 15)
    await _until(lambda: len(otlp_peer.spans()) == 50, what="the flushed batch")
    stop_gw.set()
    await asyncio.wait_for(gw_task, 15)
    provider.shutdown()
