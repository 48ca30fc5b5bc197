"""A real grpcio server's calls, replayed from its recorded kernel events (_grpc_recording.py): every call its
executor workers make is decided by the response the worker wrote, or left without a cause; none names another call's
request.

grpcio reads each stream on an I/O thread, whose wakeup hands it to the completion-queue thread, which hands it to a
ThreadPoolExecutor worker: two hand-offs, and the worker's handler makes the HTTP call. The recording holds 200 calls
from 4 client threads on one channel (200 server streams, 200 HTTP calls to `db` whose `prid` is the stream's rid).
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pytest

from edge.model import Span, SpanKind
from edge.sources.ebpf.spans import SpanBuilder, SpanBuilderConfig
from edge.sources.ebpf.spans.causes import CAUSE, CAUSE_VIA

from ._grpc_recording import load

RECORDING = Path(__file__).with_name("grpc_pool.jsonl.gz")
RID = "rpc.grpc.request.metadata.oracle-rid"


@pytest.fixture(scope="module")
def spans() -> list[Span]:
    b = SpanBuilder(SpanBuilderConfig(capture_headers=("oracle-rid",)))
    return b.feed(load(RECORDING)) + b.flush(2**62)


def _rid(s: Span) -> str:
    v = s.attributes[RID]
    return str(v[0] if isinstance(v, list) else v)


def test_worker_calls_name_the_stream_they_were_made_for_or_none(spans: list[Span]) -> None:
    streams = {s.span_id: _rid(s) for s in spans if s.kind == SpanKind.SERVER and RID in s.attributes}
    calls = [s for s in spans if s.kind == SpanKind.CLIENT and "prid=" in str(s.attributes.get("url.query"))]
    assert len(streams) == 200 and len(calls) == 200
    right = wrong = 0
    for c in calls:
        cause = c.attributes.get(CAUSE)
        if cause is None:
            continue
        truth = parse_qs(str(c.attributes["url.query"]))["prid"][0]
        if streams.get(cause) == truth:
            right += 1
        else:
            wrong += 1
    vias = [c.attributes.get(CAUSE_VIA) for c in calls if CAUSE in c.attributes]
    assert wrong == 0
    # The calls whose response an I/O thread wrote (grpcio hands some writes off) stay without a cause.
    assert right >= 150 and set(vias) == {"response"}, (right, set(vias))
