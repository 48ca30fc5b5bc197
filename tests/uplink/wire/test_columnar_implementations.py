"""The columnar codec's two implementations (pure Python and the compiled accelerator, edge/accel.py) write the same
bytes and decode every batch, hostile ones included, to the same spans or the same refusal."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings

from bench._workload import realistic_spans
from bench.corpus import load_all
from edge import accel
from edge.errors import DecodeError
from edge.model import Span
from tests.edge._implementations import IMPLEMENTATIONS
from uplink.wire.frame import SPANS_MAGIC, TABLES_HEADER, read_header
from uplink.wire.tables import EMPTY, TableSet

from .test_columnar import _exact, _spans

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "demo-apps-sample"
MAX = 16 * 1024 * 1024
_COMPILED = IMPLEMENTATIONS[1]  # skipped (or failed, with HELIX_REQUIRE_ACCEL=1) where the accelerator is not in use


def _codecs() -> tuple[Any, Any]:
    return (accel.modules("pure")["uplink.wire.columnar"], accel.modules("compiled")["uplink.wire.columnar"])


def _decoded(codec: Any, data: bytes, tables: TableSet) -> object:
    try:
        batch = codec.decode(data, read_header(data), tables, MAX, max_expanded=MAX)
    except DecodeError as e:
        return ("refused", type(e).__name__)
    return ("ok", batch.spans, batch.expanded, repr(batch.spans))


def _encode_both(spans: list[Span], tables: TableSet, version: int) -> bytes:
    pure, compiled = _codecs()
    a = pure.encode(spans, "node-1", 9, tables, created_ns=77, version=version)
    b = compiled.encode(spans, "node-1", 9, tables, created_ns=77, version=version)
    assert a == b
    return a


@pytest.mark.parametrize("impl", [_COMPILED])
def test_corpus_and_generator_batches_are_the_same_bytes_and_decode_alike(impl: str) -> None:
    pure, compiled = _codecs()
    streams = dict(load_all(SAMPLE))
    streams["generator"] = realistic_spans(80, seed=4)
    for name, spans in streams.items():
        half = len(spans) // 2
        learned = pure.learn(spans[:half], node_id="n", created_ns=1)
        assert compiled.learn(spans[:half], node_id="n", created_ns=1).content == learned.content, name
        for tables in (EMPTY, learned):
            for size in (1, 32, 512):
                for i in range(0, len(spans), size):
                    batch = spans[i:i + size]
                    for version in (3, 4):
                        data = _encode_both(batch, tables, version)
                        got = [_decoded(c, data, tables) for c in (pure, compiled)]
                        assert got[0] == got[1], (name, size, i)
                        assert got[0][0] == "ok" and _exact(got[0][1], batch), name  # type: ignore[index]


@pytest.mark.parametrize("impl", [_COMPILED])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=_spans(), earlier=_spans())
def test_any_spans_are_the_same_bytes_in_both(impl: str, spans: list[Span], earlier: list[Span]) -> None:
    pure, _ = _codecs()
    tables = pure.learn(earlier + spans, node_id="node-1", created_ns=1)
    for t in (EMPTY, tables):
        for version in (3, 4):
            _encode_both(spans, t, version)


def _mutations(data: bytes, rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(40):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
        out.append(data[:rng.randrange(len(data))])
    return out


@pytest.mark.parametrize("impl", [_COMPILED])
def test_hostile_bodies_decode_alike_or_are_refused_by_both(impl: str) -> None:
    # Flipped and cut CBOR bodies, and every body field replaced by junk, compressed again so that they reach the
    # decoder rather than the frame's checks.
    pure, compiled = _codecs()
    rng = random.Random(7)
    spans = realistic_spans(8, seed=6)
    streams = load_all(SAMPLE)
    for batch in (spans[:40], next(iter(streams.values()))[:40]):
        for version in (3, 4):
            raw = pure.body(batch, "n", 1, EMPTY, created_ns=1, version=version)
            for body in _mutations(raw, rng):
                data = TABLES_HEADER.pack(SPANS_MAGIC, version, EMPTY.id) + zstandard.ZstdCompressor().compress(body)
                got = [_decoded(c, data, EMPTY) for c in (pure, compiled)]
                assert got[0] == got[1]
            doc = cbor2.loads(raw)
            for field in range(len(doc)):
                for junk in (None, -1, 2**70, "x", b"\x00" * 9, [], [1, "a"], {1: 2}, 1.5):
                    body = cbor2.dumps(doc[:field] + [junk] + doc[field + 1:])
                    data = TABLES_HEADER.pack(SPANS_MAGIC, version, EMPTY.id) + zstandard.ZstdCompressor().compress(body)
                    got = [_decoded(c, data, EMPTY) for c in (pure, compiled)]
                    assert got[0] == got[1], (field, junk)
