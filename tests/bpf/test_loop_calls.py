"""Event loops' calls decided from what the real probes see of real servers at their defaults (no SDK): the aiohttp and
Node.js services of the accuracy testbed's scenarios 9 and 10, 8 keep-alive clients, 1 to 3 concurrent calls per
request. Every call names the request it was made for (known from the rid in its query) or none, never another.
The load generator is not paced to the agent: it sends as fast as the services answer, 5 ms between a client's
requests, as the testbed does."""
from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from edge.errors import ProbeUnavailable
from edge.sources.ebpf.events import DataEvent
from edge.sources.ebpf.spans import SpanBuilder, SpanBuilderConfig
from tests.edge.sources.ebpf.spans._grpc_recording import feed_as_agent, load
from tests.edge.sources.ebpf.spans._loop_recording import _record, judge

from .conftest import bpf_unavailable

pytestmark = pytest.mark.bpf


async def _judged(kind: str, path: Path, requests: int) -> Counter[tuple[str, str]]:
    try:
        await _record(kind, path, requests, 8)
    except ProbeUnavailable as e:
        bpf_unavailable(str(e))
    events = load(path)
    assert any(isinstance(e, DataEvent) for e in events)
    served, got = judge(feed_as_agent(SpanBuilder(SpanBuilderConfig()), events))
    assert served >= 0.95 * requests and sum(got.values()) >= served
    return got


async def test_aiohttp_calls_name_their_request_or_none_and_turn_order_decides_some(tmp_path: Path) -> None:
    got = await _judged("aiohttp", tmp_path / "aiohttp.jsonl.gz", 300)
    assert not [k for k in got if k[1] == "wrong"], got
    assert not [k for k in got if k[1] == "none" and k[0] != "ambiguous"], got
    assert got[("loop-turn", "right")] > 0 and got[("loop-order", "right")] > 0, got


async def test_node_calls_name_their_request_or_none(tmp_path: Path) -> None:
    if not (shutil.which("node") or shutil.which("nodejs")):
        why = "Node.js not installed (Debian: apt-get install nodejs)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)  # CI must run it
        pytest.skip(why)
    got = await _judged("node", tmp_path / "node.jsonl.gz", 200)
    assert not [k for k in got if k[1] == "wrong"], got
    assert got[("event-loop", "right")] >= 0.9 * sum(got.values()), got
