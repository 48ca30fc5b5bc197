"""A short run of the accuracy testbed in CI: the sync chain and the MQTT async hop, real processes and kernel."""
from __future__ import annotations

import os

import pytest

from bench.accuracy import run
from tests.bpf.conftest import bpf_unavailable

pytestmark = pytest.mark.bpf


async def test_sync_chain_and_mqtt_hop_are_stitched() -> None:
    if os.geteuid() != 0:
        bpf_unavailable("the testbed loads the kernel probes and needs root")
    results = await run(quick=True, only=("1-sync-chain", "3-mqtt-async"))
    chain, mqtt = results["1-sync-chain"], results["3-mqtt-async"]
    print({k: v.as_dict() for k, v in results.items()})
    for r in (chain, mqtt):
        assert r.requests >= 40 and r.coverage == 1.0, "every oracle request has a span"
        assert r.false_link_rate <= 0.05
    # Context is on the wire into every SDK-instrumented hop: those traces must match exactly.
    assert mqtt.traceid_match == 1.0 and mqtt.parent_precision == 1.0
    assert chain.traceid_match >= 0.95 and chain.parent_precision >= 0.95 and chain.parent_recall >= 0.95
