"""The agent with its kernel probes, end to end: an OpenTelemetry SDK app calls an uninstrumented service.

The trace at the OTLP peer must hold the SDK's spans (the skeleton) and the kernel's spans of the same call
(the flesh), under one trace id with the kernel spans as children: SDK client → kernel client → kernel server,
and the uninstrumented service's own downstream call below its server span.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.config import parse_config
from edge.demo.broker import Mosquitto, free_port
from edge.demo.otlp_peer import OtlpPeer
from edge.model import SpanKind
from uplink.gateway import Gateway

from ._services import FRONT
from .conftest import bpf_unavailable

pytestmark = pytest.mark.bpf

BACKEND = FRONT.replace("with urllib.request.urlopen(backend + \"/inner\", timeout=5) as r:\n            body = r.read()",
                        "body = b'stock: 7'")


APP = r"""
import sys, urllib.request
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1], insecure=True)))
tracer = provider.get_tracer("test")
with tracer.start_as_current_span("checkout", kind=SpanKind.SERVER):
    with tracer.start_as_current_span("GET /stock", kind=SpanKind.CLIENT) as call:
        headers = {}
        propagate.inject(headers)
        with urllib.request.urlopen(urllib.request.Request(sys.argv[2], headers=headers), timeout=5) as r:
            r.read()
        ctx = call.get_span_context()
provider.shutdown()
print(f"{ctx.trace_id:032x} {ctx.span_id:016x}")
"""


def _start(code: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def test_sdk_and_kernel_spans_are_one_trace(mosquitto: Mosquitto, otlp_peer: OtlpPeer, tmp_path: Path) -> None:
    backend, backend_port = _start(BACKEND, "")
    front, front_port = _start(FRONT, f"http://127.0.0.1:{backend_port}")
    grpc_port = free_port()
    cfg = parse_config({
        "sources": {"mqtt": {"enabled": False}, "ebpf": {"enabled": "auto"},
                    "otlp": {"grpc_listen": f"127.0.0.1:{grpc_port}", "http_listen": ""}},
        "assembler": {"window": "1s"},
        "uplink": {"broker": mosquitto.url, "batch_max_age": "200ms", "spool_dir": str(tmp_path / "spool")},
        "gateway": {"broker": mosquitto.url, "state_dir": "", "http_listen": "", "export_endpoint": otlp_peer.grpc_endpoint},
    })
    stop = asyncio.Event()
    agent = Agent(cfg)
    tasks = [asyncio.create_task(Gateway(cfg.gateway).run(stop)), asyncio.create_task(agent.run(stop))]
    try:
        await asyncio.wait_for(agent.started.wait(), 20)
        if agent.kernel.state != "running":
            bpf_unavailable(f"{agent.kernel.reason} ({agent.kernel.fix})")
        await asyncio.sleep(0.5)
        # The app is its own process: the agent never traces itself.
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", APP, f"http://127.0.0.1:{grpc_port}",
                                                      f"http://127.0.0.1:{front_port}/stock?sku=1"],
                                      capture_output=True, text=True, timeout=60, check=True)
        trace_hex, call_hex = out.stdout.split()
        trace_id, call_id = bytes.fromhex(trace_hex), bytes.fromhex(call_hex)

        def ours() -> list:
            return [s for s in otlp_peer.spans() if s.trace_id == trace_id]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while loop.time() < deadline:
            names = {(s.name, s.kind, s.attributes.get("url.path")) for s in ours()}
            if ("GET", SpanKind.SERVER, "/inner") in names and ("GET", SpanKind.CLIENT, "/inner") in names:
                break
            await asyncio.sleep(0.2)
        spans = ours()
        by = {(s.kind, s.attributes.get("url.path"), s.attributes.get("helix.source")): s for s in spans}
        k_client = by[(SpanKind.CLIENT, "/stock", "ebpf")]
        k_server = by[(SpanKind.SERVER, "/stock", "ebpf")]
        inner_client = by[(SpanKind.CLIENT, "/inner", "ebpf")]
        inner_server = by[(SpanKind.SERVER, "/inner", "ebpf")]
        assert k_client.parent_span_id == call_id, "the kernel client span hangs under the SDK span that made it"
        assert k_server.parent_span_id == k_client.span_id
        # The front service has no SDK: its call downstream carries no context; the thread rule places it.
        assert inner_client.parent_span_id == k_server.span_id
        assert inner_client.attributes["helix.link"] == "thread"
        assert inner_server.parent_span_id == inner_client.span_id
        assert inner_server.attributes["helix.link"] == "connection"
        assert {s.attributes.get("helix.source") for s in spans} == {"sdk-otlp", "ebpf"}
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        front.terminate()
        backend.terminate()
        front.wait(5)
        backend.wait(5)
