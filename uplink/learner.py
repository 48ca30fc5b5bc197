"""The node's table-set learning (format version 3): keep a bounded sample of its recent spans, learn a candidate
table set from them off the event loop, and adopt it only when it pays for its own publication.

A candidate is learned from the older part of the sample and judged on the newest part (spans it has not seen), each
part cut into batches of the size the node sends: the bytes it saves per span there, times the spans the node is
expected to send before the next candidate, must exceed its message. Candidates come `interval` seconds apart, the
first once `after` spans are in the sample, and sooner (never closer than `min_gap`) when the batches sent with the
set in use grow `degrade` times above what the set was judged at: the node's traffic changed. The policy and its
defaults were chosen on the real-span corpus (docs/benchmarks.md, "Uplink on real spans").

Sans-I/O apart from the clock: the client runs `learn` in a worker thread and `judge`/`adopt` on the event loop.
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge.config.uplink import UplinkConfig
from edge.model import Span

from .wire import EMPTY, TableSet, TrainingLimits, columnar

__all__ = ["LearningPolicy", "Candidate", "LearnerStats", "SpanSample", "TableLearner"]


@dataclass(frozen=True, slots=True)
class LearningPolicy:
    """When a node learns a table set, from what, and when it adopts one."""

    interval: float = 600.0  # s between candidates; 0 never learns (batches then carry all they need)
    after: int = 256  # spans in the sample before the first candidate (and since an adoption, before judging it)
    degrade: float = 1.25  # learn early when bytes/span grow this many times over what the set was judged at
    min_gap: float = 60.0  # s between two candidates at least
    holdout: float = 0.25  # newest share of the sample a candidate is judged on and not learned from
    level: int = 3  # zstd level of the batches
    limits: TrainingLimits = field(default_factory=TrainingLimits)

    @classmethod
    def of(cls, cfg: UplinkConfig) -> LearningPolicy:
        """The policy an [uplink] section asks for."""
        return cls(interval=cfg.learn_interval, after=cfg.learn_after, level=cfg.zstd_level,
                   min_gap=min(60.0, cfg.learn_interval))


@dataclass(slots=True)
class Candidate:
    """A table set learned from the sample, and what it would save."""

    tables: TableSet
    message: bytes
    spans: int  # judged on this many spans it was not learned from
    bytes_per_span: float  # its batches' bytes per span there
    saving: float  # bytes per span it saves there against the set in use
    node_bytes: int  # what the node holds to encode with it, the encoder's memo apart (counted as it grows)
    cpu_s: float  # CPU time learning and judging it took (the worker thread's)


@dataclass(slots=True)
class LearnerStats:
    """What the learner did."""

    candidates: int = 0
    adopted: int = 0
    rejected: int = 0  # candidates that would not have paid for their message
    early: int = 0  # candidates learned before the interval because the batches grew
    failures: int = 0
    cpu_s: float = 0.0
    last_saving: float = 0.0  # bytes per span the last candidate would have saved


class SpanSample:
    """The node's recent spans, oldest first, bounded in bytes (`Span.approx_size`); the governor bounds it further."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bound = max_bytes
        self._spans: deque[tuple[Span, int]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._spans)

    @property
    def bytes(self) -> int:
        """Bytes of the spans held."""
        return self._bytes

    def add(self, spans: Sequence[Span]) -> None:
        """Keep `spans`, letting go of the oldest beyond the bound."""
        q = self._spans
        for s in spans:
            n = s.approx_size()
            q.append((s, n))
            self._bytes += n
        self._trim()

    def snapshot(self) -> list[Span]:
        """The spans held, oldest first."""
        return [s for s, _ in self._spans]

    def set_bound(self, n: int) -> int:
        """Hold at most `n` bytes (never above the configured size); spans let go here are not lost, so 0."""
        self._bound = min(self.max_bytes, n)
        self._trim()
        return 0

    def _trim(self) -> None:
        q = self._spans
        while q and self._bytes > self._bound:
            self._bytes -= q.popleft()[1]


class TableLearner:
    """Decides when to learn, learns (in a worker thread), judges and adopts. Measured by the governor: `bytes` is
    what the table sets it holds take (the sample is its own part, `sample`)."""

    def __init__(self, policy: LearningPolicy, node_id: str, sample_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.node_id = node_id
        self.sample = SpanSample(sample_bytes)
        self.stats = LearnerStats()
        self.current: TableSet = EMPTY
        self._clock = clock
        self._current_bytes = 0
        self._learning = 0  # bytes the candidate being learned is expected to take, while it is
        self._last: float | None = None  # when the last candidate was started
        self._expected = 0.0  # bytes/span the set in use was judged at
        self._sent_bytes = self._sent_spans = 0  # with the set in use, since it was adopted
        self._rate = 0.0  # spans per second, decayed over the interval
        self._rate_at: float | None = None
        self._first_at: float | None = None
        self._batch = 0.0  # spans per batch, moving average

    @property
    def bytes(self) -> int:
        """Bytes the table sets take: the one in use with its encoder's memo as it is now, the cold-start set's memo,
        and a candidate while it is learned."""
        memo = self.current.memo_bytes() + (EMPTY.memo_bytes() if self.current is not EMPTY else 0)
        return self._current_bytes + memo + self._learning

    @property
    def learning(self) -> bool:
        """A candidate is being learned now."""
        return self._learning > 0

    def observe(self, spans: Sequence[Span], size: int, table_id: bytes) -> None:
        """A batch of `spans` was cut and encoded in `size` bytes with the table set `table_id`."""
        if self.policy.interval <= 0 or not spans:
            return
        self.sample.add(spans)
        now = self._clock()
        n = len(spans)
        self._batch = n if not self._batch else 0.9 * self._batch + 0.1 * n
        tau = self.policy.interval
        if self._rate_at is None:
            self._first_at = now
        else:
            self._rate *= math.exp(-(now - self._rate_at) / tau)
        self._rate += n / tau
        self._rate_at = now
        if table_id == self.current.id:
            self._sent_bytes += size
            self._sent_spans += n

    def rate(self) -> float:
        """Spans per second the node sends (over the last interval or so)."""
        if self._rate_at is None or self._first_at is None:
            return 0.0
        # Until one interval has passed, the decayed sum covers only the time since the first batch.
        span = self._clock() - self._first_at
        decayed = self._rate * math.exp(-(self._clock() - self._rate_at) / self.policy.interval)
        return decayed * self.policy.interval / max(1.0, min(span, self.policy.interval))

    def due(self) -> str:
        """Why a candidate should be learned now ("first", "interval", "degraded"), or "" if not."""
        p = self.policy
        if p.interval <= 0 or self._learning or len(self.sample) < p.after:
            return ""
        if self._last is None:
            return "first"
        since = self._clock() - self._last
        if since >= p.interval:
            return "interval"
        if (since >= p.min_gap and not self.current.is_empty and self._sent_spans >= p.after
                and self._sent_bytes / self._sent_spans > p.degrade * self._expected):
            return "degraded"
        return ""

    def begin(self, reason: str) -> tuple[list[Span], TableSet, int]:
        """Start a candidate: what the worker thread learns from (a snapshot), the set to beat, the batch size."""
        self._last = self._clock()
        self._learning = max(self._current_bytes, 256 * 1024)
        self.stats.candidates += 1
        if reason == "degraded":
            self.stats.early += 1
        return self.sample.snapshot(), self.current, max(1, min(512, round(self._batch or 1)))

    def learn(self, spans: list[Span], current: TableSet, batch: int) -> Candidate:
        """Learn a candidate from the older spans and judge it on the newest against `current` (CPU only; safe in
        a worker thread: nothing the event loop uses is touched)."""
        t0 = time.thread_time()
        p = self.policy
        k = max(1, min(len(spans) - 1, round(len(spans) * (1 - p.holdout)))) if len(spans) > 1 else len(spans)
        train, test = spans[:k], spans[k:] or spans
        cand = columnar.learn(train, p.limits, self.node_id)
        message = cand.to_message()
        # The set in use gets a compressor of its own here: the event loop may be compressing with the shared one.
        mine, theirs = cand.compressor(p.level), current.compressor(p.level, shared=False)
        new = old = 0
        for i in range(0, len(test), batch):
            part = test[i:i + batch]
            new += len(mine.compress(columnar.body(part, self.node_id, 0, cand, created_ns=0)))
            old += len(theirs.compress(columnar.body(part, self.node_id, 0, current, created_ns=0)))
        n = len(test)
        node_bytes = cand.table_bytes(p.level)
        return Candidate(cand, message, n, new / n, (old - new) / n, node_bytes, time.thread_time() - t0)

    def judge(self, cand: Candidate | None) -> bool:
        """Whether to adopt `cand` (None: learning failed): what it saves per span, over the spans expected before
        the next candidate, must exceed its message."""
        self._learning = 0
        if cand is None:
            self.stats.failures += 1
            return False
        self.stats.cpu_s += cand.cpu_s
        self.stats.last_saving = cand.saving
        expected = self.rate() * self.policy.interval
        if cand.saving > 0 and cand.saving * expected > len(cand.message):
            return True
        self.stats.rejected += 1
        return False

    def adopt(self, cand: Candidate) -> None:
        """Encode with `cand` from now on (its message is already stored)."""
        self.use(cand.tables, cand.node_bytes, cand.bytes_per_span)
        self.stats.adopted += 1

    def use(self, tables: TableSet, node_bytes: int, bytes_per_span: float = 0.0) -> None:
        """Encode with `tables` from now on (also the set restored after a restart); `node_bytes`: its table_bytes."""
        self.current = tables
        self._current_bytes = node_bytes
        self._expected = bytes_per_span or math.inf  # a restored set is not judged until a candidate is
        self._sent_bytes = self._sent_spans = 0
