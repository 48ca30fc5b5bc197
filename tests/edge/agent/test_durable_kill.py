"""Durable mode against `kill -9`: every span an OpenTelemetry SDK saw acknowledged reaches the backend after the
agent is killed and started again.

Real processes (edge/demo/stack.py): Mosquitto, `helix gateway`, `helix run` with `sources.otlp.durable = true`, an
OTLP peer. The clients are the OpenTelemetry Python SDK's OTLP/HTTP and OTLP/gRPC exporters behind a
BatchSpanProcessor, both at their defaults (5 s schedule delay, 512-span batches, their own retry policies); an
exporter wrapper only notes which spans an export returned SUCCESS for. The agent is SIGKILLed right after an
acknowledged export, when at the default `assembler.window` those spans cannot have reached the uplink spool yet:
without durable mode they are lost (docs/reliability.md, bench/agent_kill_window.py).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from edge.demo.broker import free_port
from edge.demo.stack import Stack


class Recording(SpanExporter):
    """The SDK's exporter, noting the span ids (and when) each successful export acknowledged."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.acked: dict[bytes, float] = {}
        self.lock = threading.Lock()
        self.success = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            now = time.monotonic()
            with self.lock:
                for s in spans:
                    self.acked[s.context.span_id.to_bytes(8, "big")] = now
            self.success.set()
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()


def _load(provider: TracerProvider, stop: threading.Event, per_second: int) -> None:
    tracer = provider.get_tracer("durable-test")
    while not stop.is_set():
        for _ in range(per_second // 20):
            with tracer.start_as_current_span("order"):
                with tracer.start_as_current_span("stock"):
                    pass
        time.sleep(0.05)


async def test_durable_mode_loses_no_acknowledged_span_on_kill_9(tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    async with Stack(tmp_path) as stack:
        await stack.start_gateway()
        conf = stack.agent_config("durable-node", grpc_listen=f"127.0.0.1:{grpc_port}",
                                  http_listen=f"127.0.0.1:{http_port}", batch_max_age="2s",
                                  more="[sources.ebpf]\nenabled = false\n")
        conf = conf.replace("[sources.otlp]\n", f'[sources.otlp]\ndurable = true\ndurable_dir = "{tmp_path / "log"}"\n')
        agent = await stack.start_agent(conf)
        res = Resource.create({"service.name": "durable-client"})
        http = Recording(HttpExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces"))
        grpc = Recording(GrpcExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True))
        providers = []
        for exporter in (http, grpc):
            p = TracerProvider(resource=res)
            p.add_span_processor(BatchSpanProcessor(exporter))
            providers.append(p)
        stop = threading.Event()
        loaders = [threading.Thread(target=_load, args=(p, stop, 300), daemon=True) for p in providers]
        for t in loaders:
            t.start()
        try:
            # Kill right after an acknowledged export: its spans are then in the assembler's window, in memory.
            for _ in range(2):
                http.success.clear()
                assert await asyncio.to_thread(http.success.wait, 30), "no export was acknowledged"
            agent.proc.kill()
            killed = time.monotonic()
            await agent.proc.wait()
            with http.lock:
                recent = sum(1 for t in http.acked.values() if t > killed - 1.0)
            assert recent, "no span was acknowledged in the second before the kill"
            await stack.start_agent(conf)  # feeds what the log kept, then takes the exporters' retries
            await asyncio.sleep(3)
        finally:
            stop.set()
            for t in loaders:
                await asyncio.to_thread(t.join, 10)
            for p in providers:
                await asyncio.to_thread(p.shutdown)
        acked = {**http.acked, **grpc.acked}
        assert grpc.acked, "the gRPC exporter had nothing acknowledged"
        deadline = time.monotonic() + 90
        missing: set[bytes] = set(acked)
        while missing and time.monotonic() < deadline:
            missing = set(acked) - {s.span_id for s in stack.peer.spans()}
            await asyncio.sleep(0.5)
        arrived = stack.peer.spans()
        mine = [s for s in arrived if s.span_id in acked]
        print(f"acknowledged {len(acked)} spans ({recent} in the second before the kill); "
              f"{len(missing)} lost; {len(mine) - len(set(s.span_id for s in mine))} delivered twice")
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged spans lost"
