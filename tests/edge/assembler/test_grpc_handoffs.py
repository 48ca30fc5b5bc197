"""A gRPC chain's kernel spans, built from the recorded events of real grpcio processes
(tests/edge/sources/ebpf/spans/_grpc_recording.py) and stitched: each HTTP call a grpcio executor worker made hangs
under the stream it was made for, or under nothing — never under another stream, as the timing rules would have
placed it among concurrent streams."""
from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from edge.assembler import Assembler, AssemblerConfig
from edge.model import Span, SpanKind
from edge.sources.ebpf.spans import SpanBuilder, SpanBuilderConfig
from tests.edge.sources.ebpf.spans._grpc_recording import feed_as_agent, load
from tests.edge.sources.ebpf.spans.test_grpc_recorded import HERE, RECORDINGS

RID = "rpc.grpc.request.metadata.oracle-rid"


def _rid(s: Span) -> str:
    v = s.attributes[RID]
    return str(v[0] if isinstance(v, list) else v)


@pytest.mark.parametrize("recording", RECORDINGS)
def test_grpcio_worker_calls_hang_under_their_own_stream_or_none(recording: str) -> None:
    built = SpanBuilder(SpanBuilderConfig(capture_headers=("oracle-rid",)))
    spans = feed_as_agent(built, load(HERE / recording))
    a = Assembler(AssemblerConfig(window=2.0, sdk_wait=0.0))
    out = a.process(spans, now=0.0) + a.process([], now=2.1)
    assert len(out) >= len(spans) - 4  # connects no request used are dropped as noise
    streams = {s.span_id: _rid(s) for s in out if s.kind == SpanKind.SERVER and RID in s.attributes}
    calls = [s for s in out if s.kind == SpanKind.CLIENT and "prid=" in str(s.attributes.get("url.query"))]
    requests, decided = RECORDINGS[recording]
    assert len(streams) == requests and len(calls) == requests
    under = [c for c in calls if c.parent_span_id]
    wrong = [c for c in under
             if streams.get(c.parent_span_id) != parse_qs(str(c.attributes["url.query"]))["prid"][0]]
    assert not wrong, [(c.attributes.get("helix.link"), c.parent_span_id.hex()) for c in wrong]
    assert len(under) >= decided
    assert {c.attributes["helix.link"] for c in under} <= {"response", "elimination", "write-order"}
    # the calls left are roots of their own traces, marked as undecided by the span builder
    assert all(c.trace_id not in {s.trace_id for s in out if s.span_id in streams} for c in calls if c not in under)
