from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

from edge.codec.otlp import request_from_spans
from edge.errors import HelixError
from edge.model import Resource, Source, Span, new_span_id, new_trace_id
from edge.sources.otlp_common import OtlpIngest
from edge.sources.otlp_grpc import OtlpGrpcReceiver


def test_a_port_already_taken_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def start() -> None:
            receiver = OtlpGrpcReceiver(OtlpIngest(lambda spans, source: len(spans), lambda n: True), "127.0.0.1",
                                        port, 4 << 20)
            try:
                await receiver.start()
            finally:
                await receiver.stop()

        with pytest.raises(HelixError, match=rf"cannot listen for OTLP/gRPC on 127.0.0.1:{port}.*grpc_listen"):
            asyncio.run(start())


async def _with_receiver(has_room, body) -> tuple[list[Span], OtlpIngest]:
    got: list[Span] = []

    def sink(spans: list[Span], source: Source) -> int:
        got.extend(spans)
        return len(spans)

    ingest = OtlpIngest(sink, has_room)
    receiver = OtlpGrpcReceiver(ingest, "127.0.0.1", 0, 4 << 20, max_wait=0.3)
    await receiver.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            await body(channel)
    finally:
        await receiver.stop()
    return got, ingest


def _request(n: int) -> ExportTraceServiceRequest:
    return request_from_spans([Span(new_trace_id(), new_span_id(), f"op{i}", 1, 2,
                                    resource=Resource.of({"service.name": "svc"})) for i in range(n)])


async def test_export_through_the_official_stub_reaches_the_pipeline() -> None:
    req = _request(3)

    async def body(channel: grpc.aio.Channel) -> None:
        resp = await TraceServiceStub(channel).Export(req, timeout=5)
        assert not resp.HasField("partial_success")

    got, ingest = await _with_receiver(lambda n: True, body)
    assert sorted(s.name for s in got) == ["op0", "op1", "op2"] and ingest.stats.spans == 3


async def test_a_full_pipeline_answers_unavailable_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.sources.otlp_grpc as receiver_module

    parsed: list[bytes] = []
    monkeypatch.setattr(receiver_module, "decode_export_request", lambda data, *a: parsed.append(data))
    asked: list[int] = []

    def has_room(n: int) -> bool:
        asked.append(n)
        return False

    req = _request(50)

    async def body(channel: grpc.aio.Channel) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await TraceServiceStub(channel).Export(req, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # retryable: the SDK keeps the spans

    got, ingest = await _with_receiver(has_room, body)
    assert got == [] and ingest.stats.dropped["busy"] == 1
    # Asked again while it waited; judged by its wire size, never decoded.
    assert len(asked) > 1 and set(asked) == {req.ByteSize() * 6} and parsed == []


async def test_garbage_is_invalid_argument_and_counted() -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                     request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await export(b"\xff\xff\xff\xff not protobuf", timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "OTLP" in (e.value.details() or "")

    got, ingest = await _with_receiver(lambda n: True, body)
    assert got == [] and ingest.stats.dropped["bad_request"] == 1
