"""The batch body's CBOR writer: byte for byte what cbor2.dumps writes, in both implementations (pure Python and
compiled), on real batch bodies and on any value, and failing where cbor2 fails."""
from __future__ import annotations

import ipaddress
import math
import uuid
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench._workload import realistic_spans
from bench.corpus import load_all
from edge import accel
from uplink.wire import columnar
from uplink.wire.tables import EMPTY
from tests.edge._implementations import IMPLEMENTATIONS

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "demo-apps-sample"


def _dumps(impl: str):  # type: ignore[no-untyped-def]
    return accel.modules(impl)["uplink.wire.cbor_writer"].dumps


def _same(impl: str, v: object) -> None:
    try:
        want: object = cbor2.dumps(v)
    except Exception as e:  # noqa: BLE001 - whatever cbor2 raises, the writer raises too
        want = type(e)
    try:
        got: object = _dumps(impl)(v)
    except Exception as e:  # noqa: BLE001
        got = type(e)
    assert got == want, v


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_real_batch_bodies_are_written_as_cbor2_writes_them(impl: str) -> None:
    streams = dict(load_all(SAMPLE))
    streams["generator"] = realistic_spans(40, seed=4)
    for name, spans in streams.items():
        learned = columnar.learn(spans[:len(spans) // 2], node_id="n", created_ns=0)
        for tables in (EMPTY, learned):
            for version in columnar.VERSIONS:
                for size in (1, 32, 512):
                    for i in range(0, len(spans), size):
                        doc = columnar.body_fields(spans[i:i + size], "n", i, tables, 1, version)[0]
                        assert _dumps(impl)(doc) == cbor2.dumps(doc), (name, size, i)


# Integers at every head width and past 64 bits, texts with multi-byte and lone-surrogate characters, and the values
# handed to cbor2 (floats, tags, tuples, UUIDs, IPv4 addresses).
_int = st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64, -1, -24, -25, -256,
                        -257, -(2**64), -(2**64) - 1, 2**70]) | st.integers()
_scalar = (_int | st.text(max_size=30) | st.sampled_from(["", "ü€😀", "a\ud800", "x" * 300]) | st.binary(max_size=300)
           | st.booleans() | st.none() | st.floats() | st.sampled_from([math.nan, -0.0, math.inf])
           | st.builds(lambda b: cbor2.CBORTag(37, b), st.binary(min_size=16, max_size=16))
           | st.just(uuid.UUID(int=5)) | st.just(ipaddress.IPv4Address("10.0.0.1")))
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=30) | st.tuples(inner, inner)
                      | st.dictionaries(_int | st.text(max_size=5), inner, max_size=4), max_leaves=40)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v=_value)
def test_any_value_is_written_as_cbor2_writes_it_or_fails_as_it_fails(impl: str, v: object) -> None:
    _same(impl, v)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_edges_of_every_head_width(impl: str) -> None:
    for n in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1):
        for v in (n, -n - 1, "x" * min(n, 70000), b"\x00" * min(n, 70000), [0] * min(n, 70000), [300] * min(n, 300)):
            _same(impl, v)
    _same(impl, {i: [i, str(i)] for i in range(30)})


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_integer_runs_in_arrays_at_every_width_and_sign(impl: str) -> None:
    # Integers below 2**16 in an array are gathered into runs of bytes; a run ends at any other item or width.
    edges = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32, 2**64 - 1, 2**64]
    ints = edges + [-n - 1 for n in edges]
    others: list[object] = ["t", "ü" * 30, b"\x01", None, True, [5, -300], {1: -1}, 1.5, 2**70]
    for a in ints:
        for b in ints:
            _same(impl, [a, b, a])
            for o in others:
                _same(impl, [a, o, b, b, o])
    _same(impl, [[i - 70000 for i in range(0, 140000, 97)]])
