"""Event loops' calls, replayed from the recorded kernel events of real processes (_loop_recording.py): every call
names the request it was made for, or none; none names another request.

- aiohttp_fanout.jsonl.gz: an aiohttp server (one asyncio thread, at its defaults) serving 8 keep-alive clients, each
  request making 1 to 3 concurrent calls (`asyncio.gather`, aiohttp's pooled client), 400 requests. Its path from a
  request's read to its calls is three loop turns (`loop-turn`); the calls of a turn that read several requests are
  decided by the order of the reads, the calls and the answers (`loop-order`) or left `ambiguous`.
- aiohttp_fanout_2.jsonl.gz: the same, recorded again (the order of answers differs between runs).
- node_fanout.jsonl.gz, node_fanout_2.jsonl.gz: the same on a plain Node.js http server, 400 requests each. Node runs a
  handler in the callback of its read and writes a call on a new connection once it is up, turns later.
Both implementations (edge/accel.py) replay them, flushing once a second of their time as the agent does.
"""
from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pytest

from edge import accel
from edge.model import Span
from tests.edge._implementations import IMPLEMENTATIONS

from ._grpc_recording import feed_as_agent, load
from ._loop_recording import judge

HERE = Path(__file__).parent


@functools.cache
def _replay(implementation: str, recording: str) -> tuple[list[Span], object]:
    mods = accel.modules(implementation)
    spans = mods["edge.sources.ebpf.spans"]
    b = spans.SpanBuilder(spans.SpanBuilderConfig())
    return feed_as_agent(b, load(HERE / recording, mods["edge.sources.ebpf.events"])), b.causes.stats


def _judge(spans: list[Span]) -> Counter[tuple[str, str]]:
    served, got = judge(spans)
    assert served == 400 and sum(got.values()) >= 700
    return got


@pytest.mark.parametrize("recording", ["aiohttp_fanout.jsonl.gz", "aiohttp_fanout_2.jsonl.gz"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_aiohttp_calls_of_turns_that_read_several_requests_are_decided_by_their_order_or_left(
        implementation: str, recording: str) -> None:
    spans, stats = _replay(implementation, recording)
    got = _judge(spans)
    assert not [k for k in got if k[1] == "wrong"], got
    assert not [k for k in got if k[1] == "none" and k[0] != "ambiguous"], got
    # Without `loop-order` these calls are all left ambiguous, and the share decided falls under 80 %.
    assert got[("loop-order", "right")] >= 150, got
    assert sum(n for k, n in got.items() if k[1] == "right") >= 0.8 * sum(got.values()), got
    assert stats.loop_order_conflicts == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("recording", ["node_fanout.jsonl.gz", "node_fanout_2.jsonl.gz"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_node_calls_name_their_request_or_none(implementation: str, recording: str) -> None:
    """Before a connect() right after a read ended the loop's run of reads, and while the context at a connect() lost
    from the loop's history fell back to its last read, 3 and 8 of these calls named another request."""
    got = _judge(_replay(implementation, recording)[0])
    assert not [k for k in got if k[1] == "wrong"], got
    assert not [k for k in got if k[1] == "none" and k[0] != "ambiguous"], got
    assert got[("event-loop", "right")] >= 0.95 * sum(got.values()), got
    assert not got[("loop-order", "right")] and not got[("loop-order", "wrong")], got  # its calls follow its reads
