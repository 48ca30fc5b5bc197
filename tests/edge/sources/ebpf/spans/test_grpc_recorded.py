"""A gRPC chain's calls, replayed from the recorded kernel events of real processes (_grpc_recording.py): every call
names the request it was made for, or none; none names another request.

- rpc, a grpcio server: its I/O thread reads each stream and wakes the completion-queue thread, which hands it to a
  ThreadPoolExecutor worker (two hand-offs); the worker's handler makes the HTTP call to db, and mostly writes the
  stream's response itself (`response`). Some responses are written by grpcio's I/O threads instead: those calls
  take the one request open at them that no other worker ran (`elimination`), or follow the order the workers queued
  them in and the connection's writes carried them (`write-order`), else stay without a cause, marked `ambiguous`.
- front, an HTTP/1 server calling rpc through one shared grpcio channel: its request threads mostly write their
  stream themselves (`thread`); a stream written by grpcio's I/O thread, which writes for several request threads at
  once, names none.
grpc_pool.jsonl.gz and grpc_pool_loaded.jsonl.gz hold 200 requests from 4 client threads, grpc_pool_400.jsonl.gz 400
from 4 and grpc_pool_8_clients.jsonl.gz 400 from 8; grpc_pool_loaded.jsonl.gz was made on a busier machine (load
average 6-7 on 2 cores), where the I/O thread often writes two or three workers' responses in one write, as it does in
grpc_pool_400.jsonl.gz. Both implementations (edge/accel.py) replay them, flushing once a second of their time as the
agent does.
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
METADATA = "rpc.grpc.request.metadata."
# recording -> (requests, calls of rpc decided by `response`, `elimination` and `write-order` together, at least: all
# right)
RECORDINGS = {"grpc_pool.jsonl.gz": (200, 200), "grpc_pool_loaded.jsonl.gz": (200, 198),
              "grpc_pool_400.jsonl.gz": (400, 398), "grpc_pool_8_clients.jsonl.gz": (400, 395)}


@functools.cache
def _replay(implementation: str, recording: str) -> list[Span]:
    """The spans one implementation builds from a recording (each replayed once per session)."""
    mods = accel.modules(implementation)
    spans = mods["edge.sources.ebpf.spans"]
    b = spans.SpanBuilder(spans.SpanBuilderConfig(capture_headers=("oracle-rid", "oracle-prid")))
    return feed_as_agent(b, load(HERE / recording, mods["edge.sources.ebpf.events"]))


def _meta(s: Span, key: str) -> str:
    v = s.attributes[METADATA + key]
    return str(v[0] if isinstance(v, list) else v)


def _query(s: Span, key: str) -> str:
    return parse_qs(str(s.attributes.get("url.query", ""))).get(key, [""])[0]


def _judge(calls: list[Span], requests: dict[bytes, str], truth: dict[bytes, str]) -> Counter[tuple[str, str]]:
    """(via, right|wrong|none) for each call."""
    out: Counter[tuple[str, str]] = Counter()
    for c in calls:
        cause = c.attributes.get(CAUSE)
        verdict = "none" if cause is None else "right" if requests.get(cause) == truth[c.span_id] else "wrong"
        out[(str(c.attributes.get(CAUSE_VIA, "")), verdict)] += 1
    return out


@pytest.mark.parametrize("recording", RECORDINGS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_grpcio_workers_calls_name_the_stream_they_were_made_for_or_none(implementation: str, recording: str) -> None:
    spans = _replay(implementation, recording)
    streams = {s.span_id: _meta(s, "oracle-rid") for s in spans
               if s.kind == SpanKind.SERVER and METADATA + "oracle-rid" in s.attributes}
    calls = [s for s in spans if s.kind == SpanKind.CLIENT and _query(s, "prid")]
    requests, decided = RECORDINGS[recording]
    assert len(streams) == requests and len(calls) == requests
    got = _judge(calls, streams, {c.span_id: _query(c, "prid") for c in calls})
    assert not [k for k in got if k[1] == "wrong"], got
    # Those left are marked, so that no timing rule of the assembler guesses a parent for them.
    assert not [k for k in got if k[1] == "none" and k[0] != "ambiguous"], got
    assert got[("response", "right")] >= 0.75 * requests, got
    # The rest, whose response grpcio's I/O thread wrote: the one request open at the call that no other worker ran,
    # where there is one; where several are, the order the workers queued their responses in and the writes carried
    # them (workers that may have queued in either order leave their calls undecided).
    assert got[("elimination", "right")] >= 8, got
    assert got[("response", "right")] + got[("elimination", "right")] + got[("write-order", "right")] >= decided, got


@pytest.mark.parametrize("recording", RECORDINGS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_grpc_client_streams_name_the_request_of_the_thread_that_wrote_them_or_none(implementation: str,
                                                                                    recording: str) -> None:
    spans = _replay(implementation, recording)
    requests = {s.span_id: _query(s, "rid") for s in spans if s.kind == SpanKind.SERVER and _query(s, "rid")}
    calls = [s for s in spans if s.kind == SpanKind.CLIENT and METADATA + "oracle-prid" in s.attributes]
    assert len(requests) == RECORDINGS[recording][0] and len(calls) == RECORDINGS[recording][0]
    got = _judge(calls, requests, {c.span_id: _meta(c, "oracle-prid") for c in calls})
    assert not [k for k in got if k[1] == "wrong"], got
    assert got[("thread", "right")] >= 0.75 * len(calls), got
