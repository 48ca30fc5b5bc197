"""Format 3 and 4 bodies stay byte for byte what they were: a faster encoder must not change the wire."""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

from bench._workload import realistic_spans
from bench.corpus import load_all
from edge.model import Event, Link, Resource, Scope, Source, Span, SpanKind, StatusCode
from uplink.wire import columnar, decode_batch
from uplink.wire.tables import EMPTY

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "demo-apps-sample"

# SHA-256 over every body below, taken from the encoder as format 4 shipped; a change here is a wire change, which
# needs a new format version (docs/uplink-format-v3.md, "Compatibility rules").
GOLDEN = {3: "0d7f4b48c6c8d185e7e5a815897d1073d4bce9f207be16a93476dfef1348920c",
          4: "6ea1e9cb5d1225c5d03363f0e6e0e1672a8105fa755fd9868a5575b21b033e7e"}


def _awkward(seed: int, n: int) -> list[Span]:
    """Spans with what real streams rarely hold: ids of odd lengths, parents outside the batch and in cycles, clocks
    of every precision, events, links, flags, trace states, status messages, values of every type."""
    rnd = random.Random(seed)
    ids = [rnd.randbytes(8) for _ in range(12)] + [b"", b"\x01" * 5]
    traces = [rnd.randbytes(16) for _ in range(3)] + [b"\x02" * 9]
    values = ["GET", "200", "10.0.3.157", "0123", "deadbeefcafe", "9f1c2d6e-8a4b-4c1e-9d2f-1a2b3c4d5e6f", "x" * 40,
              7, -1, 2**64 - 1, -(2**63), 1.5, -0.0, True, False, b"\x00\xff", ["a", 1], {"k": [1, "v"]}]
    resources = [Resource(), Resource.of({"service.name": "a", "host.name": "h"}),
                 Resource.of({"service.name": "b", "process.pid": 41, "tags": ["x", "y"]})]
    out = []
    for _ in range(n):
        unit = rnd.choice([1, 1000, 1_000_000])
        start = rnd.randrange(1, 2**40) * unit
        attrs = {rnd.choice(["http.method", "peer", "n", "", "ü", f"k{rnd.randrange(30)}"]): rnd.choice(values)
                 for _ in range(rnd.randrange(6))}
        events = tuple(Event(rnd.choice(["log", "exception", "e1"]), start + rnd.randrange(10**6) * unit,
                             {"m": rnd.choice(values)}) for _ in range(rnd.choice([0, 0, 0, 1, 3])))
        links = tuple(Link(rnd.choice(traces), rnd.choice(ids), rnd.choice(["", "a=b"]), {"l": 1})
                      for _ in range(rnd.choice([0, 0, 0, 1])))
        out.append(Span(
            trace_id=rnd.choice(traces), span_id=rnd.choice(ids), name=rnd.choice(["GET /", "SELECT", "4711", ""]),
            start_ns=start, end_ns=start + rnd.choice([0, rnd.randrange(10**7)]) * unit,
            parent_span_id=rnd.choice(ids + [b"", b"", rnd.randbytes(8)]),
            kind=rnd.choice(list(SpanKind)), status_code=rnd.choice(list(StatusCode)),
            status_message=rnd.choice(["", "", "boom"]), attributes=attrs, events=events, links=links,
            resource=rnd.choice(resources), scope=rnd.choice([Scope(), Scope("lib", "1.0")]),
            source=rnd.choice(list(Source)), trace_state=rnd.choice(["", "", "ot=th:8"]),
            flags=rnd.choice([1, 1, 0, 3])))
    return out


def _streams() -> dict[str, list]:
    streams = dict(load_all(SAMPLE))
    streams["generator"] = realistic_spans(60, seed=3)
    streams["awkward"] = _awkward(7, 300)
    return streams


def bodies_digest(version: int) -> str:
    """SHA-256 of the bodies of every sample stream, cold and with a set learned from its first half, in batches of
    1, 7, 32 and 512 spans."""
    h = hashlib.sha256()
    for name, spans in sorted(_streams().items()):
        learned = columnar.learn(spans[: len(spans) // 2], node_id="n", created_ns=1)
        for tables in (EMPTY, learned):
            for size in (1, 7, 32, 512):
                for i in range(0, len(spans), size):
                    body = columnar.body(spans[i:i + size], "node-1", i, tables, created_ns=5, version=version)
                    h.update(len(body).to_bytes(4, "big") + body)
    return h.hexdigest()


def test_format_3_and_4_bodies_are_unchanged() -> None:
    for version, digest in GOLDEN.items():
        assert bodies_digest(version) == digest, f"format {version} bodies changed"


def test_awkward_spans_round_trip_exactly_in_every_batch_size() -> None:
    spans = _awkward(7, 300)
    tables = columnar.learn(spans[:150], node_id="n", created_ns=1)
    for version in columnar.VERSIONS:
        for t in (EMPTY, tables):
            for size in (1, 7, 32, 512):
                for i in range(0, len(spans), size):
                    want = spans[i:i + size]
                    data = columnar.encode(want, "node-1", i, t, created_ns=5, version=version)
                    got = decode_batch(data, 1 << 24, {t.id: t}.get).spans
                    # repr tells True from 1 and 1.0 from 1 and shows dict order, which == does not.
                    assert got == want and repr(got) == repr(want)
