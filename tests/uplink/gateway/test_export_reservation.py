"""A decoded batch reserves what its decoders counted before its OTLP export is built: batches whose spans share
texts (counting just under the expansion bound) reserve more than their declared size alone asks for, and one that
could never fit the gateway's budget is refused for good before the request is built."""
from __future__ import annotations

import pytest

from edge.demo.otlp_peer import OtlpPeer
from uplink.gateway.budget import decode_cost, export_cost
from uplink.gateway.server import Outcome
from uplink.wire import declared_size

from .._helpers import gateway_config, just_under_expansion, running_gateway


@pytest.mark.parametrize("version", [2, 3])
async def test_a_batch_counting_near_the_bound_reserves_what_its_export_takes(otlp_peer: OtlpPeer,
                                                                             version: int) -> None:
    data = just_under_expansion(1500, version)
    declared = declared_size(data)
    async with running_gateway(gateway_config(None, otlp_peer.grpc_endpoint)) as gw:
        result = await gw.ingest(data, "test", http=True)
        assert result.outcome is Outcome.EXPORTED
        assert gw.stats.batches_reserved_more == 1
        # Reserved (and given back) the export's cost, well above what the declared size alone reserved.
        assert gw.budget.peak >= export_cost(declared, 23 * declared) > 1.4 * decode_cost(declared)
        assert gw.budget.used == 0


async def test_a_batch_whose_export_could_never_fit_is_refused_for_good(otlp_peer: OtlpPeer) -> None:
    data = just_under_expansion(1500, 3)
    declared = declared_size(data)
    async with running_gateway(gateway_config(None, otlp_peer.grpc_endpoint)) as gw:
        gw.budget.total = decode_cost(declared) + 1024  # room to decode it, not to export it
        result = await gw.ingest(data, "test", http=True)
        assert result.outcome is Outcome.OVERSIZED and "gateway.memory_limit" in result.detail
        assert gw.stats.batches_expanding == 1 and gw.budget.used == 0
    assert not otlp_peer.spans()


async def test_a_metrics_frame_expanding_past_its_bound_is_refused_for_good(otlp_peer: OtlpPeer) -> None:
    from ..wire.test_metrics import _shared_attrs_frame

    async with running_gateway(gateway_config(None, otlp_peer.grpc_endpoint)) as gw:
        result = await gw.ingest(_shared_attrs_frame(20_000, "r" * 20_000), "test", http=True)
        assert result.outcome is Outcome.OVERSIZED and result.seq == 3
        assert gw.metric_stats["expanding"] == 1 and gw.stats.batches_expanding == 1 and gw.budget.used == 0
    assert not otlp_peer.metric_requests
