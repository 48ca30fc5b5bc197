"""A short run of the accuracy testbed: the sync chain and the MQTT async hop, the MQTT hop over TLS (mqtts) and the
gRPC chain, real processes and kernel.

It asserts what must hold whatever the assembler's inference rules do: every request of the oracle has a span,
and every hop that carried trace context on the wire (from an SDK-instrumented caller) is exact — the callee
sits in its caller's trace, under its caller. The stitching figures themselves are printed, not asserted (the
benchmark reports them against the goals).
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench.accuracy import Outcome, run, table
from bench.accuracy_score import wire_hop_problems
from edge.errors import ProbeUnavailable
from tests.bpf.conftest import bpf_unavailable

pytestmark = pytest.mark.bpf
SCENARIOS = ("1-sync-chain", "3-mqtt-async", "11b-tls-mqtt", "12-grpc-chain")


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, Outcome]]:
    """One short run of scenarios 1, 3, 11b and 12 shared by the tests of this module."""
    try:
        result = asyncio.run(run(quick=True, only=SCENARIOS))
    except ProbeUnavailable as e:
        bpf_unavailable(str(e))
    print("\n" + table({k: v.score for k, v in result.items()}))
    yield result


def test_the_oracle_saw_every_request_and_where_context_travelled(outcomes: dict[str, Outcome]) -> None:
    assert set(outcomes) == set(SCENARIOS)
    chain, mqtt = outcomes["1-sync-chain"], outcomes["3-mqtt-async"]
    mqtts, grpc = outcomes["11b-tls-mqtt"], outcomes["12-grpc-chain"]
    # 20 roots through four services; 20 messages, each delivered and each delivery calling db.
    assert chain.score.requests == 80 and mqtt.score.requests == 60
    assert sum(o.ctx for o in chain.oracle) == 40, "context on the wire into applyPromotion and db"
    assert sum(o.ctx for o in mqtt.oracle) == 20, "traceparent in every message's user properties"
    assert mqtts.score.requests == 60 and sum(o.ctx for o in mqtts.oracle) == 20
    # 20 roots: front calls the grpcio server (traceparent metadata), which calls db over HTTP (no context)
    assert grpc.score.requests == 60 and sum(o.ctx for o in grpc.oracle) == 20


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_request_has_a_span(outcomes: dict[str, Outcome], name: str) -> None:
    out = outcomes[name]
    assert out.score.covered == out.score.requests, [p for p in wire_hop_problems(out.spans, out.oracle)
                                                     if "no span" in p][:5]


@pytest.mark.parametrize("name", SCENARIOS)
def test_hops_with_context_on_the_wire_are_exact(outcomes: dict[str, Outcome], name: str) -> None:
    out = outcomes[name]
    problems = [p for p in wire_hop_problems(out.spans, out.oracle) if "no span" not in p]
    assert not problems, f"{len(problems)} problems, first: {problems[:5]}"
