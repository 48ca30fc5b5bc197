"""The node's table-set learning: when a candidate is due, what it is judged on, when it is adopted, and what the
sample and the sets take from the memory budget."""
from __future__ import annotations

from pathlib import Path

from bench._workload import realistic_spans
from bench.corpus import load_all
from uplink.learner import LearningPolicy, SpanSample, TableLearner
from uplink.wire import EMPTY, columnar, decode_batch
from uplink.wire.tables import MAX_SIGNATURES, _deep_size

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "demo-apps-sample"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _feed(learner: TableLearner, spans: list, clock: Clock, per_batch: int = 32, every: float = 1.0) -> None:
    for i in range(0, len(spans), per_batch):
        part = spans[i:i + per_batch]
        size = len(columnar.encode(part, "n", i, learner.current))
        learner.observe(part, size, learner.current.id)
        clock.t += every


def test_sample_keeps_the_newest_spans_within_its_bound() -> None:
    spans = realistic_spans(40, seed=3)
    sample = SpanSample(100_000)
    sample.add(spans)
    assert 0 < sample.bytes <= 100_000 and len(sample) < len(spans)
    assert sample.snapshot() == spans[-len(sample):]  # oldest let go first
    assert sample.set_bound(20_000) == 0  # letting go of sample spans loses no data
    assert sample.bytes <= 20_000 and sample.snapshot() == spans[-len(sample):]
    sample.set_bound(10**9)
    sample.add(spans)
    assert sample.bytes <= 100_000  # never above its configured size, whatever the governor plans


def test_first_candidate_after_enough_spans_then_every_interval() -> None:
    clock = Clock()
    learner = TableLearner(LearningPolicy(interval=600, after=256), "n", 4 << 20, clock)
    spans = realistic_spans(60, seed=4)
    _feed(learner, spans[:224], clock)
    assert learner.due() == ""  # 224 spans: not yet
    _feed(learner, spans[224:256], clock)
    assert learner.due() == "first"
    sample, current, batch = learner.begin("first")
    assert learner.learning and learner.due() == "" and current is EMPTY and batch == 32
    cand = learner.learn(sample, current, batch)
    assert learner.judge(cand) and cand.saving > 0 and cand.node_bytes > 0
    learner.adopt(cand)
    assert learner.current is cand.tables and not learner.learning
    assert learner.bytes == cand.node_bytes + cand.tables.memo_bytes() + EMPTY.memo_bytes()
    _feed(learner, spans[256:600], clock)
    assert learner.due() == ""  # same traffic: nothing degraded, the interval has not passed
    clock.t += 600
    assert learner.due() == "interval"


def test_candidate_is_judged_on_spans_it_did_not_learn_from() -> None:
    learner = TableLearner(LearningPolicy(after=64, holdout=0.25), "n", 4 << 20, Clock())
    spans = realistic_spans(30, seed=5)[:320]
    cand = learner.learn(spans, EMPTY, 32)
    assert cand.spans == 80  # the newest quarter
    held_out = spans[240:]
    for part in (held_out[i:i + 32] for i in range(0, 80, 32)):
        data = columnar.encode(part, "n", 1, cand.tables)
        assert decode_batch(data, 1 << 24, {cand.tables.id: cand.tables}.get).spans == part


def test_a_set_is_adopted_only_when_it_pays_for_its_message() -> None:
    spans = realistic_spans(40, seed=6)
    for every, adopted in ((1.0, True), (600.0, False)):
        clock = Clock()
        learner = TableLearner(LearningPolicy(interval=600, after=256), "n", 4 << 20, clock)
        _feed(learner, spans[:320], clock, every=every)  # 32 spans a second, or every ten minutes
        cand = learner.learn(*learner.begin("first"))
        # Tens of thousands of spans before the next candidate repay a message of a few KB; a handful do not.
        assert learner.judge(cand) is adopted, (learner.rate(), cand.saving, len(cand.message))
        assert learner.stats.rejected == (0 if adopted else 1)


def test_growing_batches_bring_the_next_candidate_early() -> None:
    clock = Clock()
    learner = TableLearner(LearningPolicy(interval=600, after=128, min_gap=60), "n", 4 << 20, clock)
    generator = realistic_spans(40, seed=7)
    _feed(learner, generator[:256], clock)
    cand = learner.learn(*learner.begin("first"))
    assert learner.judge(cand)
    learner.adopt(cand)
    clock.t += 61
    _feed(learner, generator[256:400], clock)
    assert learner.due() == ""  # the same kind of traffic: the set still fits
    other = [s for spans in load_all(SAMPLE).values() for s in spans]
    _feed(learner, other[:256], clock)  # the node's traffic changed
    assert learner.due() == "degraded"
    learner.begin("degraded")
    assert learner.stats.early == 1


def test_learning_off_never_learns() -> None:
    learner = TableLearner(LearningPolicy(interval=0), "n", 4 << 20, Clock())
    learner.observe(realistic_spans(50, seed=1), 1000, EMPTY.id)
    assert learner.due() == "" and len(learner.sample) == 0


def _distinct_signatures(n: int, seed: int) -> list:
    """Spans whose attribute lists each have a key set of their own: every one a new signature for the encoder."""
    spans = realistic_spans(n // 4 + 10, seed=seed)[:n]
    for i, s in enumerate(spans):
        s.attributes = {f"custom.{seed}.{i}": i, "http.method": "GET"}
    return spans


def test_the_encoders_memo_is_counted_as_it_grows_and_stays_bounded() -> None:
    clock = Clock()
    learner = TableLearner(LearningPolicy(after=64), "n", 4 << 20, clock)
    learner.adopt(learner.learn(realistic_spans(30, seed=8)[:320], EMPTY, 32))
    tables = learner.current
    before, memo_before = learner.bytes, tables.memo_bytes()
    held_before = _deep_size(tables.encoder_index().signatures, set())

    spans = _distinct_signatures(300, seed=1)
    _feed(learner, spans, clock)
    grown = tables.memo_bytes() - memo_before
    # What the memo now holds beyond before, measured directly: the counted growth covers it, and not absurdly more.
    held = _deep_size(tables.encoder_index().signatures, set()) - held_before
    assert held > 300 * 100 and held <= grown <= 4 * held
    assert learner.bytes - before == grown  # the governor's "tables" part follows the memo

    # Past its bound the memo keeps no more entries, and the count stops with it.
    _feed(learner, _distinct_signatures(MAX_SIGNATURES, seed=2), clock, per_batch=512)
    full = tables.memo_bytes()
    assert len(tables.encoder_index().signatures) == MAX_SIGNATURES
    _feed(learner, _distinct_signatures(200, seed=3), clock)
    assert tables.memo_bytes() == full and learner.bytes - before == full - memo_before
