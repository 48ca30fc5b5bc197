from __future__ import annotations

import random

import pytest

from edge.model import Resource, Span, SpanKind, StatusCode, new_span_id
from edge.sampler import TailRules, TailSampler, TraceSampler
from edge.sampler.consistent import randomness, with_threshold, without_threshold
from edge.sampler.routes import is_error, normalise_path, route_of
from edge.sampler.tail import PACK_FROM


class Clock:
    """A clock the test moves by hand, so decision waits are exact and the tests never sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tid_with_randomness(r: int, rng: random.Random) -> bytes:
    """A trace id whose 56-bit randomness is r."""
    return rng.getrandbits(72).to_bytes(9, "big") + r.to_bytes(7, "big")


def span(tid: bytes, *, route: str = "/api/orders", dur_ms: float = 10, kind: SpanKind = SpanKind.SERVER,
         status: int = 200, error: bool = False, service: str = "orders", parent: bytes = b"") -> Span:
    return Span(tid, new_span_id(), f"POST {route}", 0, int(dur_ms * 1e6), parent_span_id=parent, kind=kind,
                status_code=StatusCode.ERROR if error else StatusCode.UNSET,
                attributes={"http.route": route, "http.response.status_code": status},
                resource=Resource.of({"service.name": service}))


LOW = 1  # randomness far below any threshold of a ratio < 1: the head rejects it
HIGH = (1 << 56) - 1  # the head keeps it at any ratio > 0


@pytest.fixture
def rng() -> random.Random:
    return random.Random(5)


def test_routes_are_normalised() -> None:
    assert normalise_path("/api/orders/123?x=1") == "/api/orders/{id}"
    assert normalise_path("/users/3f2b8c1e-9d4a-4f6b-8c2d-1a2b3c4d5e6f/cart") == "/users/{id}/cart"
    assert normalise_path("/blobs/deadbeefcafe0123") == "/blobs/{id}"
    assert normalise_path("/api/v2/items/ord-20240517") == "/api/v2/items/{id}"
    assert normalise_path("/api/v2/health") == "/api/v2/health"
    s = Span(b"\x01" * 16, new_span_id(), "GET", 0, 1, attributes={"url.path": "/p/77/q"})
    assert route_of(s) == "/p/{id}/q"
    s.attributes["http.route"] = "/p/{pid}/q"
    assert route_of(s) == "/p/{pid}/q"


def test_error_classification() -> None:
    tid = b"\x01" * 16
    assert is_error(span(tid, error=True))
    assert is_error(span(tid, status=503))
    assert not is_error(span(tid, status=404))
    s = span(tid)
    s.attributes["http.response.status_code"] = "502"
    assert is_error(s)


def test_errors_and_5xx_are_kept_whole_and_counted(rng: random.Random) -> None:
    clock = Clock()
    tail = TailSampler(TailRules(new_route_traces=0, decision_wait=2.0), clock)
    err_tid, fivexx_tid, ok_tid = (tid_with_randomness(LOW, rng) for _ in range(3))
    first = span(err_tid, kind=SpanKind.CLIENT)
    kept, dropped = tail.offer([first, span(ok_tid), span(fivexx_tid, kind=SpanKind.CLIENT)])
    assert kept == [] and dropped == 0 and len(tail) == 3
    last = span(err_tid, error=True)
    kept, _ = tail.offer([last, span(fivexx_tid, status=500)])
    assert [s.trace_id for s in kept].count(err_tid) == 2 and first in kept and last in kept
    assert [s.trace_id for s in kept].count(fivexx_tid) == 2
    # A late span of a kept trace follows it without waiting.
    late, _ = tail.offer([span(err_tid, kind=SpanKind.INTERNAL)])
    assert len(late) == 1 and tail.stats.late_spans_kept == 1
    assert tail.stats.decisions["error"] == 2
    assert len(tail) == 1  # the healthy trace still waits


def test_undecided_traces_are_dropped_after_the_wait_from_their_last_span(rng: random.Random) -> None:
    clock = Clock()
    tail = TailSampler(TailRules(new_route_traces=0, decision_wait=2.0), clock)
    tid = tid_with_randomness(LOW, rng)
    tail.offer([span(tid)])
    clock.now += 1.5
    tail.offer([span(tid, kind=SpanKind.CLIENT)])  # arrival restarts the wait
    clock.now += 1.9
    assert tail.expire() == 0 and len(tail) == 1
    clock.now += 0.2
    dropped = tail.expire()
    assert dropped == 2 and len(tail) == 0 and tail.bytes == 0
    assert tail.stats.decisions["no_rule"] == 1 and tail.stats.spans_dropped == 2


def test_under_pressure_quiet_traces_go_first_and_growing_ones_stay(rng: random.Random) -> None:
    clock = Clock()
    tail = TailSampler(TailRules(new_route_traces=0, decision_wait=2.0), clock)
    quiet, growing = tid_with_randomness(LOW, rng), tid_with_randomness(LOW, rng)
    tail.offer([span(quiet), span(growing)])
    clock.now += 1.2
    tail.offer([span(growing, kind=SpanKind.CLIENT)])  # still getting spans: a later one may yet meet a rule
    assert tail.drop_idle() == 1 and len(tail) == 1  # quiet for over half its wait
    assert tail.stats.decisions["pressure"] == 1 and tail.stats.spans_dropped == 1
    kept, _ = tail.offer([span(growing, error=True)])
    assert len(kept) == 3  # the trace kept whole: its first two spans were still there


def test_latency_per_route_with_default(rng: random.Random) -> None:
    clock = Clock()
    rules = TailRules(new_route_traces=0, latency={"/api/orders": 0.5}, latency_default=2.0)
    tail = TailSampler(rules, clock)
    slow_orders = span(tid_with_randomness(LOW, rng), route="/api/orders", dur_ms=600)
    fast_orders = span(tid_with_randomness(LOW, rng), route="/api/orders", dur_ms=400)
    slowish_other = span(tid_with_randomness(LOW, rng), route="/api/risk", dur_ms=600)
    slow_other = span(tid_with_randomness(LOW, rng), route="/api/risk", dur_ms=2500)
    slow_client = span(tid_with_randomness(LOW, rng), route="/api/risk", dur_ms=2500, kind=SpanKind.CLIENT,
                       parent=new_span_id())  # not the trace's duration: a child call
    kept, _ = tail.offer([slow_orders, fast_orders, slowish_other, slow_other, slow_client])
    assert kept == [slow_orders, slow_other]
    assert tail.stats.decisions["latency"] == 2


def test_first_traces_of_a_new_route(rng: random.Random) -> None:
    clock = Clock()
    tail = TailSampler(TailRules(new_route_traces=2, keep_errors=False), clock)
    kept_ids = []
    for _ in range(5):
        tid = tid_with_randomness(LOW, rng)
        # Client and server span of the same call count as one trace of the route.
        kept, _ = tail.offer([span(tid, kind=SpanKind.CLIENT), span(tid)])
        kept_ids += [s.trace_id for s in kept]
    assert len(set(kept_ids)) == 2 and len(kept_ids) == 4
    other, _ = tail.offer([span(tid_with_randomness(LOW, rng), route="/api/risk")])
    assert len(other) == 1
    same_route_other_service, _ = tail.offer([span(tid_with_randomness(LOW, rng), service="billing")])
    assert len(same_route_other_service) == 1
    assert tail.stats.decisions["new_route"] == 4


def test_buffer_is_bounded_in_bytes_and_evictions_are_counted(rng: random.Random) -> None:
    tail = TailSampler(TailRules(new_route_traces=0, buffer_bytes=20_000), Clock())
    total_dropped = 0
    for _ in range(200):
        _, dropped = tail.offer([span(tid_with_randomness(LOW, rng))])
        total_dropped += dropped
        assert tail._bytes <= 20_000
    assert total_dropped > 100
    assert tail.stats.decisions["evicted"] == total_dropped
    assert total_dropped + len(tail) == 200


def test_waiting_spans_are_held_packed_and_come_back_whole(rng: random.Random) -> None:
    # Spans of one trace in a buffer too small for them as objects, big enough packed: none leaves early.
    tid = tid_with_randomness(LOW, rng)
    spans = [span(tid, kind=SpanKind.CLIENT) for _ in range(3000)]
    assert sum(s.approx_size() for s in spans) > PACK_FROM
    tail = TailSampler(TailRules(new_route_traces=0, buffer_bytes=PACK_FROM), Clock())
    kept, dropped = tail.offer(spans)
    assert kept == [] and dropped == 0 and len(tail) == 1 and tail.bytes < PACK_FROM
    closing = span(tid, status=503)
    kept, dropped = tail.offer([closing])
    assert kept == spans + [closing] and dropped == 0 and tail.bytes < 1_000


def test_a_buffer_shrunk_under_pressure_holds_spans_as_they_are(rng: random.Random) -> None:
    # Below PACK_FROM (the governor's shrinking step in a burst) packing would cost CPU to save kilobytes.
    tail = TailSampler(TailRules(new_route_traces=0), Clock())
    tail.set_capacity(PACK_FROM // 2)
    spans = [span(tid_with_randomness(LOW, rng)) for _ in range(10)]
    tail.offer(spans)
    assert tail.bytes == sum(s.approx_size() for s in spans) + 10 * 200
    assert all(entry.spans[0] is s for entry, s in zip(tail._buffer.values(), spans))


def test_rules_change_while_running(rng: random.Random) -> None:
    clock = Clock()
    tail = TailSampler(TailRules(new_route_traces=0, keep_errors=False), clock)
    kept, _ = tail.offer([span(tid_with_randomness(LOW, rng), error=True)])
    assert kept == []
    tail.set_rules(TailRules(new_route_traces=0, keep_errors=True, buffer_bytes=0))
    assert len(tail) == 0  # a zero buffer drops what waited
    kept, dropped = tail.offer([span(tid_with_randomness(LOW, rng), error=True), span(tid_with_randomness(LOW, rng))])
    assert len(kept) == 1 and dropped == 1


def test_head_and_tail_combine_with_truthful_thresholds(rng: random.Random) -> None:
    clock = Clock()
    sampler = TraceSampler(0.25, TailRules(new_route_traces=0, decision_wait=1.0), clock)
    head_tid = tid_with_randomness(HIGH, rng)
    err_tid = tid_with_randomness(LOW, rng)
    plain_tid = tid_with_randomness(LOW, rng)
    spans = [span(head_tid), span(err_tid, error=True), span(plain_tid)]
    spans[1].trace_state = "ot=rv:00000000000001;th:0,vendor=x"  # an upstream th that no longer holds
    spans[1].trace_id = err_tid
    kept, dropped = sampler.decide(spans)
    assert [s.trace_id for s in kept] == [head_tid, err_tid]
    assert kept[0].trace_state == "ot=th:c"
    assert kept[1].trace_state == "ot=rv:00000000000001,vendor=x"  # th erased, rv and other vendors kept
    assert dropped == 0 and len(sampler.tail) == 1
    clock.now += 1.5
    kept, dropped = sampler.decide([])
    assert kept == [] and dropped == 1 and len(sampler.tail) == 0
    assert sampler.stats.kept_head == 1 and sampler.stats.kept_tail == 1 and sampler.stats.dropped == 1
    # The ratio can change while running: a new trace is decided at the new threshold and says so; a trace already
    # decided keeps its decision and its threshold (its spans leave over seconds).
    sampler.set_rules(ratio=0.5)
    kept, _ = sampler.decide([span(tid_with_randomness(HIGH, rng)), span(head_tid)])
    assert [s.trace_state for s in kept] == ["ot=th:8", "ot=th:c"]


def test_pressure_lowers_the_keep_probability_and_th_says_so(rng: random.Random) -> None:
    sampler = TraceSampler(1.0, TailRules(enabled=False))
    tids = [rng.getrandbits(128).to_bytes(16, "big") for _ in range(4000)]
    kept, _ = sampler.decide([span(t) for t in tids])
    assert len(kept) == 4000 and all(s.trace_state == "" for s in kept)
    sampler.set_pressure(0.25)
    fresh = [rng.getrandbits(128).to_bytes(16, "big") for _ in range(4000)]
    kept, dropped = sampler.decide([span(t) for t in fresh])
    assert all(s.trace_state == "ot=th:c" for s in kept)
    assert {s.trace_id for s in kept} == {t for t in fresh if randomness(t) >= 3 << 54}
    assert len(kept) + dropped == 4000
    # Later spans of the traces decided before the pressure keep that decision: no trace is cut in two.
    kept, dropped = sampler.decide([span(t) for t in tids[-1000:]])
    assert len(kept) == 1000 and dropped == 0 and all(s.trace_state == "" for s in kept)


def test_every_trace_decision_is_counted(rng: random.Random) -> None:
    clock = Clock()
    sampler = TraceSampler(0.1, TailRules(new_route_traces=3, latency_default=0.05, buffer_bytes=200_000), clock)
    traces = 0
    for i in range(3000):
        tid = rng.getrandbits(128).to_bytes(16, "big")
        sampler.decide([span(tid, route=f"/r{i % 7}", dur_ms=rng.choice((10, 60)), error=rng.random() < 0.05)])
        traces += 1
        clock.now += 0.01
    sampler.flush()
    d = sampler.tail.stats.decisions
    head_kept = sampler.stats.kept_head
    assert head_kept + sum(d.values()) == traces
    assert sampler.stats.kept + sampler.stats.dropped == traces


def test_threshold_helpers() -> None:
    assert without_threshold("ot=th:8") == ""
    assert without_threshold("a=b,ot=th:8;rv:0000000000000a") == "ot=rv:0000000000000a,a=b"
    assert without_threshold("a=b") == "a=b"
    assert with_threshold(without_threshold("ot=th:8"), 0) == "ot=th:0"


def test_a_trace_keeps_its_first_decision_while_the_threshold_moves(rng: random.Random) -> None:
    # The governor moves the keep-probability between the release of a trace's kernel spans and its SDK's spans, 5 s
    # later at the SDK's default: each part decided at its own moment's threshold kept the SDK spans without their
    # kernel parent, or the kernel spans without the SDK's (orphans, in the testbed's forced runs).
    sampler = TraceSampler(1.0, TailRules(enabled=False))
    early, late = tid_with_randomness(LOW, rng), tid_with_randomness(LOW, rng)
    assert len(sampler.decide([span(early)])[0]) == 1
    sampler.set_pressure(0.25)
    kept, dropped = sampler.decide([span(early), span(late)])
    assert [s.trace_id for s in kept] == [early] and kept[0].trace_state == "" and dropped == 1
    sampler.set_pressure(1.0)
    kept, dropped = sampler.decide([span(late), span(tid_with_randomness(LOW, rng))])
    assert len(kept) == 1 and kept[0].trace_id != late and dropped == 1, "a rejected trace stays rejected"
