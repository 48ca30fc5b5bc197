"""Thread pools' calls, replayed from the recorded kernel events of real processes (_pool_recording.py): every call
names the request it was made for, or none; none names another request.

pool_4_clients.jsonl.gz: bench/accuracy_service.py's `pool` service (ThreadPoolExecutor, scenario 5), 400 requests
from 4 keep-alive clients; handoff_4_clients.jsonl.gz: its `handoff` service (4 threads on a queue.Queue, scenario
5c), the same load. Both recorded on the shared development machine with other work running (load average 4-5).
pool_4_clients_testbed.jsonl.gz: the `pool` service's events in a whole testbed run (`bench/accuracy.py --only
5-thread-pool --dump DIR --dump-events`, 100 requests from 4 clients, load average 4-5), the `db` process's with it;
pool_4_clients_testbed_2.jsonl.gz: another such run. handoff_4_clients_testbed.jsonl.gz: the `handoff` service's in
such a run (5c-pool-handoff-4).
Both implementations (edge/accel.py) replay them, flushing once a second of their time as the agent does.
"""
from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from edge import accel
from edge.model import Span, SpanKind
from edge.sources.ebpf.spans.causes import CAUSE, CAUSE_VIA
from tests.edge._implementations import IMPLEMENTATIONS

from ._grpc_recording import feed_as_agent, load

HERE = Path(__file__).parent
# recording -> (its calls, calls decided by `handback` at least (right; before that rule they were left undecided),
# calls left `ambiguous` at most)
# pool_4_clients and handoff_4_clients: one call each whose hand-off another worker was known to have run (crossed
# hand-offs) is decided by its hand-back; one whose hand-back's request another worker ran, by its hand-off
RECORDINGS = {"pool_4_clients.jsonl.gz": (400, 8, 0), "handoff_4_clients.jsonl.gz": (400, 2, 0),
              # one handback a worker's wakeup of a request thread whose result another worker had handed back (the
              # GIL) contested, before such a wakeup was known to be no requester's
              "pool_4_clients_testbed.jsonl.gz": (100, 6, 0),
              # one handback its worker's wakeup of the next work's requester contested (after its next call began)
              "pool_4_clients_testbed_2.jsonl.gz": (100, 3, 2),
              # two hand-offs crossed, neither request known to have run elsewhere: each worker's hand-back went to the
              # other's hand-off (left ambiguous before the crossing was read as such)
              "handoff_4_clients_testbed.jsonl.gz": (100, 4, 0)}


@functools.cache
def _replay(implementation: str, recording: str) -> list[Span]:
    mods = accel.modules(implementation)
    spans = mods["edge.sources.ebpf.spans"]
    b = spans.SpanBuilder(spans.SpanBuilderConfig())
    return feed_as_agent(b, load(HERE / recording, mods["edge.sources.ebpf.events"]))


def _query(s: Span, key: str) -> str:
    return parse_qs(str(s.attributes.get("url.query", ""))).get(key, [""])[0]


@pytest.mark.parametrize("recording", RECORDINGS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_pool_workers_calls_name_the_request_they_were_made_for_or_none(implementation: str, recording: str) -> None:
    spans = _replay(implementation, recording)
    requests = {s.span_id: _query(s, "rid") for s in spans if s.kind == SpanKind.SERVER and not _query(s, "prid")}
    calls = [s for s in spans if s.kind == SpanKind.CLIENT and _query(s, "prid")]
    n, handbacks, ambiguous = RECORDINGS[recording]
    assert len(requests) == len(calls) == n
    got: Counter[tuple[str, str]] = Counter()
    for c in calls:
        cause = c.attributes.get(CAUSE)
        verdict = "none" if cause is None else "right" if requests.get(cause) == _query(c, "prid") else "wrong"
        got[(str(c.attributes.get(CAUSE_VIA, "")), verdict)] += 1
    assert not [k for k in got if k[1] == "wrong"], got
    assert not [k for k in got if k[1] == "none" and k[0] != "ambiguous"], got
    # Calls whose worker took the work running, and whose requester fell asleep after the call began.
    assert got[("handback", "right")] >= handbacks, got
    assert got[("ambiguous", "none")] <= ambiguous, got
