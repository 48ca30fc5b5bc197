"""A pool service's calls on keep-alive connections, built from the kernel events recorded in a whole testbed run
(`bench/accuracy.py --only 5-thread-pool-16,5c-pool-handoff-16 --dump DIR --dump-events` on the shared machine, the
agent running) and stitched as the agent does: each of `db`'s server spans hangs under the worker's call that wrote
its request, never under the call before it on the same connection.

In these runs `db` (http.server at its defaults) writes a response's head and body in two writes; the worker's
kernel delays its acknowledgement of the head, so Nagle holds the body ~40 ms. The worker writes its next request
0.1-0.4 ms after it read that body, and `db`'s thread, already back in its read, returns with it within the connection
rule's slack of the call just ended. `db`'s span for that request is complete 2 ms later, while the call that wrote
it waits ~40 ms for its own body: read as the agent reads the ring buffer (every 250 ms), the agent's run made 1 and 2
such links (the assembler's certain rule, kept), handed over as the span builder makes them, 15 and 16.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from edge.assembler import Assembler, AssemblerConfig
from edge.model import Span, SpanKind
from edge.sources.ebpf.events import KernelEvent
from edge.sources.ebpf.spans import SpanBuilder, SpanBuilderConfig
from tests.edge.sources.ebpf.spans._grpc_recording import load

HERE = Path(__file__).parent
RECORDINGS = ("pool_16_clients_testbed.jsonl.gz", "handoff_16_clients_testbed.jsonl.gz")
_FLUSH_NS = 1_000_000_000  # the agent flushes the span builder once a second
# How often the assembler is handed what the builder made: as the agent polls the ring buffer (loader.py
# KernelEventStream), and at every event (a busy ring wakes the reader far more often).
READS = {"every 250 ms": 250_000_000, "every event": 0}


def _stitch_as_agent(events: list[KernelEvent], every_ns: int) -> list[Span]:
    """What the assembler (the agent's defaults) sends for `events`, handed each read's spans as they are made, the
    span builder flushed once a second of the events' time; then everything, once every wait is over."""
    builder = SpanBuilder(SpanBuilderConfig())
    a = Assembler(AssemblerConfig())
    out: list[Span] = []
    first = events[0].ts_ns
    batch: list[KernelEvent] = []
    read = flushed = first
    for ev in events:
        if ev.ts_ns - read >= every_ns:
            spans = builder.feed(batch)
            batch, read = [], max(read, ev.ts_ns)
            if read - flushed >= _FLUSH_NS:
                spans += builder.flush(read)
                flushed = read
            out += a.process(spans, now=(read - first) / 1e9)
        batch.append(ev)
    end = (read - first) / 1e9
    out += a.process(builder.feed(batch) + builder.flush(2**62), now=end)
    return out + a.process([], now=end + 60.0)


def _q(s: Span, key: str) -> str:
    return parse_qs(str(s.attributes.get("url.query", ""))).get(key, [""])[0]


@pytest.mark.parametrize("reads", READS)
@pytest.mark.parametrize("recording", RECORDINGS)
def test_db_requests_hang_under_the_call_that_wrote_them(recording: str, reads: str) -> None:
    out = _stitch_as_agent(load(HERE / recording), READS[reads])
    by_id = {s.span_id: s for s in out}
    served = [s for s in out if s.kind == SpanKind.SERVER and _q(s, "prid")]
    calls = [s for s in out if s.kind == SpanKind.CLIENT and _q(s, "prid")]
    assert len(served) == len(calls) == 100
    got: Counter[str] = Counter()
    for s in served:
        parent = by_id.get(s.parent_span_id)
        got["none" if parent is None else "right" if _q(parent, "rid") == _q(s, "rid") else "wrong"] += 1
    assert got == {"right": 100}, got
    # and the workers' calls under the request each was made for, or none
    requests = {s.span_id: _q(s, "rid") for s in out if s.kind == SpanKind.SERVER and not _q(s, "prid")}
    assert not [c for c in calls if c.parent_span_id and requests.get(c.parent_span_id) != _q(c, "prid")]
