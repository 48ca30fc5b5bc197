"""Shared fixtures: a real Mosquitto broker and a real OTLP peer, both on free loopback ports."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge.demo.broker import Mosquitto
from edge.demo.otlp_peer import OtlpPeer


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private mosquitto broker for one test."""
    broker = Mosquitto(workdir=tmp_path / "mosquitto")
    broker.workdir.mkdir()
    with broker:
        yield broker


@pytest.fixture
async def otlp_peer(tmp_path: Path) -> AsyncIterator[OtlpPeer]:
    """An OTLP/gRPC + OTLP/HTTP receiver that records what it gets."""
    peer = await OtlpPeer(json_path=tmp_path / "otlp.jsonl").start()
    try:
        yield peer
    finally:
        await peer.stop()
