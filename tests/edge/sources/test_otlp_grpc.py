"""The OTLP/gRPC receiver bounds concurrent export calls per connection with HTTP/2 flow control."""
from __future__ import annotations

import asyncio

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from edge.sources import otlp_grpc
from edge.sources.otlp_common import OtlpIngest
from edge.sources.otlp_grpc import OtlpGrpcReceiver


async def test_export_calls_beyond_the_stream_limit_wait_in_the_client_and_all_complete() -> None:
    receiver = OtlpGrpcReceiver(OtlpIngest(lambda spans, source: len(spans), lambda n: True), "127.0.0.1", 0, 1 << 20)
    running, peak, release, warm = 0, 0, asyncio.Event(), {"done": False}

    async def slow_export(request, context):  # type: ignore[no-untyped-def]
        nonlocal running, peak
        if not warm["done"]:
            warm["done"] = True  # the first call only opens the connection
            return trace_service_pb2.ExportTraceServiceResponse()
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return trace_service_pb2.ExportTraceServiceResponse()

    receiver.Export = slow_export  # type: ignore[method-assign]  # registered at start(): this one serves
    await receiver.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            # Once the server's HTTP/2 SETTINGS are known the client queues calls over the limit; streams opened
            # before that are refused (REFUSED_STREAM, surfacing as UNAVAILABLE, which OTLP exporters retry).
            await stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=10)
            calls = [asyncio.ensure_future(stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=20))
                     for _ in range(3 * otlp_grpc._MAX_STREAMS)]
            await asyncio.sleep(1.0)
            assert peak == otlp_grpc._MAX_STREAMS  # the rest wait in the client, not in the agent
            release.set()
            done = await asyncio.gather(*calls)
        assert len(done) == 3 * otlp_grpc._MAX_STREAMS  # none refused, none lost
    finally:
        await receiver.stop()
