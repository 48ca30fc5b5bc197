"""A short run of the accuracy testbed: the sync chain and the MQTT async hop, real processes and kernel.

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


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, Outcome]]:
    """One short run of scenarios 1 and 3 shared by the tests of this module."""
    try:
        result = asyncio.run(run(quick=True, only=("1-sync-chain", "3-mqtt-async")))
    except ProbeUnavailable as e:
        bpf_unavailable(str(e))
    print("\n" + table({k: v.score for k, v in result.items()}))
    yield result


def test_the_oracle_saw_every_request_and_where_context_travelled(outcomes: dict[str, Outcome]) -> None:
    assert set(outcomes) == {"1-sync-chain", "3-mqtt-async"}
    chain, mqtt = outcomes["1-sync-chain"], outcomes["3-mqtt-async"]
    # 20 roots through four services; 20 messages, each delivered and each delivery calling db.
    assert chain.score.requests == 80 and mqtt.score.requests == 60
    assert sum(o.ctx for o in chain.oracle) == 40, "context on the wire into applyPromotion and db"
    assert sum(o.ctx for o in mqtt.oracle) == 20, "traceparent in every message's user properties"


@pytest.mark.parametrize("name", ["1-sync-chain", "3-mqtt-async"])
def test_every_request_has_a_span(outcomes: dict[str, Outcome], name: str) -> None:
    out = outcomes[name]
    assert out.score.covered == out.score.requests, [p for p in wire_hop_problems(out.spans, out.oracle)
                                                     if "no span" in p][:5]


@pytest.mark.parametrize("name", ["1-sync-chain", "3-mqtt-async"])
def test_hops_with_context_on_the_wire_are_exact(outcomes: dict[str, Outcome], name: str) -> None:
    out = outcomes[name]
    problems = [p for p in wire_hop_problems(out.spans, out.oracle) if "no span" not in p]
    assert not problems, f"{len(problems)} problems, first: {problems[:5]}"
