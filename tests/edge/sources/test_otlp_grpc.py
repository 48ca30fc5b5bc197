from __future__ import annotations

import asyncio
import socket

import pytest

from edge.errors import HelixError
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
