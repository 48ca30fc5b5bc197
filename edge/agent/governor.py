"""The memory governor: one budget (`memory.limit`) that every queue, buffer and table accounts against.

Every `memory.check_interval` it reads the process RSS and the bytes each registered part reports, and takes
usage = max(RSS, baseline + accounted), the baseline being what the process held with empty buffers. Pressure is
the share of the headroom (limit - baseline) in use: only what sits in buffers can be shed.

Parts meet it through small typed interfaces, registered by the agent with their share of the headroom
(edge/agent/runner.py): `Measured` (bytes; accounted only), `Bounded` (+ set_bound; planned, and shrunk and
regrown when elastic) and `Budgeted` (+ drop_all; also emptied at the drop step). The sampler is its
`KeepProbability`.

The budget is kept first by planning: `plan()` bounds every part by its share of the headroom (SHARES), leaving
the rest for what no buffer accounts, because CPython and glibc rarely give back a heap a burst has grown. Under
pressure it then acts, one step further per check, counting each action:

1. `raise_threshold` (≥ 70 % while usage sets new highs, every check from 80 % until settled): halve the
   keep-probability (down to ratio/1024); the agent writes the same threshold into the kernel's config map.
   Sampling only empties the buffers that hold spans: while they hold less than BUFFER_CAUSE of the memory in use
   above the baseline (the rest is state tables, the allocator's heap, libraries) and nothing queues at the door,
   the pressure is "elsewhere": the keep-probability is not lowered below the burst level, and from there no lower
   than `keep_floor` of the configured one, a last hedge before the drop step (`floor_held`, said in the log).
2. `shrink_<part>` (≥ 80 %, until settled): halve every elastic part's bound (only the state parts' while the
   pressure is elsewhere; they then forget idle entries only) (the tail buffer drops its oldest
   undecided traces, the late-join index its oldest released spans; held spans leave early, the inbox refuses).
3. `drop` (≥ 95 %): every Budgeted part lets go of its idle data (`drop_idle`: undecided traces quiet for half their
   wait, released spans past the time a late SDK span can still join them, idle state), then the heap is trimmed.
   Only where the span buffers are the cause, or the pressure reaches 100 %, are they emptied too (`drop_all`; the
   inbox's spans are counted into RED first): with the pressure elsewhere, emptying them would free little and lose
   the late joins and tail decisions still to come.
4. `evict_live_state` (still ≥ 100 % after the drop): the state parts evict live entries down to their bounds.

The state parts (`StatePart`: the span builder's connections, threads and processes, stitching's traces) hold what
live connections and open exchanges need to become spans: their bounds, the shrinking and the drop step take only
idle entries; live ones go at step 4 alone, in the part's stated order, counted by reason
(helix.agent.memory.state.evicted) and said in the log.

Below 60 % it steps back one notch per check. Between 60 and 90 % it looks at the trend: a plateau with no new
high, no check at the burst level (90 %) and no backlog at the door for SETTLE seconds is heap kept from an
earlier peak, not data: the keep-probability steps back up and the shrinking steps pause, but the bounds regrow
only below 60 % (regrown on a plateau, they filled the heap's spare room and the next spike shrank them again).
Every TRIM_EVERY seconds free heap pages go back to the system (malloc_trim). Why each rule, with the runs that
chose it: docs/benchmarks.md, memory budget.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..net.retry import RateLimitedLog
from ..runtime.rss import read_rss

__all__ = ["MemoryGovernor", "GovernorStats", "Measured", "Bounded", "Budgeted", "StatePart", "KeepProbability",
           "read_rss",
           "LEVELS", "SHARES", "MIN_BOUND", "MIN_INBOX", "MIN_STATE", "KEEP_FLOOR", "BUFFER_CAUSE"]

log = logging.getLogger(__name__)

# Pressure (share of the headroom in use) at which each step starts; below RELAX the governor steps back.
LEVELS = {"raise_threshold": 0.70, "shrink": 0.80, "burst": 0.90, "drop": 0.95}
RELAX = 0.60
TRIM_EVERY = 2.0  # s between two malloc_trim(0) calls, each a few milliseconds at most
# Share of the memory in use above the baseline that the span buffers must hold for sampling to be the lever.
BUFFER_CAUSE = 0.25
KEEP_FLOOR = 0.25  # default keep-probability floor (a share of the configured one) under pressure from elsewhere
SETTLE = 10.0  # s without a new high, a check at the burst level or a backlog before a plateau above RELAX is settled
# Shares of the headroom each part is planned to fill at most (see plan()). The third left is for what no buffer
# accounts (requests being decoded, batches being encoded, allocator slack): bench/memory_budget.py's 10x burst needs it.
# The state parts (kernel_state: the span builder's tables; stitch_state: the assembler's) were part of that third
# before they had a bound of their own.
SHARES = {"assembler": 0.16, "index": 0.08, "tail": 0.16, "inbox": 0.12, "uplink": 0.08, "receiver": 0.03,
          "learning": 0.03, "kernel_state": 0.08, "stitch_state": 0.03, "decisions": 0.06}
MIN_STATE = 512 * 1024  # the long-lived state of a small node's connections, threads and processes
MIN_BOUND = 64 * 1024  # no part is bounded below this
MIN_INBOX = 512 * 1024


class Measured(Protocol):
    """A part whose bytes count against the budget."""

    @property
    def bytes(self) -> int:
        """Bytes it holds now (an estimate where exact figures would cost too much)."""
        ...


class Bounded(Measured, Protocol):
    """A part the governor bounds."""

    def set_bound(self, n: int) -> int:
        """Hold at most about `n` bytes from now on; returns how many spans it dropped to get there."""
        ...


class Budgeted(Bounded, Protocol):
    """A part whose data the governor may drop when the budget is about to break."""

    def drop_idle(self) -> int:
        """Let go of what nothing can still need (the drop step takes it first); returns how many spans that was."""
        ...

    def drop_all(self) -> int:
        """Let go of everything it holds that may be dropped; returns how many spans that was."""
        ...


class StatePart(Budgeted, Protocol):
    """Long-lived state (per connection, thread or process) rather than spans. Its bound and the drop step take only
    idle entries (nothing open, unused for a while): the state of live connections and open exchanges goes only
    when the budget itself is exceeded, through `evict_live`, in the part's own stated order."""

    @property
    def live_bytes(self) -> int:
        """Estimated bytes of the entries that are not idle."""
        ...

    @property
    def evicted(self) -> dict[str, int]:
        """Entries evicted so far, by reason: idle, active (live, nothing open), open (an exchange open)."""
        ...

    def evict_live(self, n: int) -> int:
        """Evict down to `n` bytes, live entries too; returns how many spans that cost."""
        ...


class KeepProbability(Protocol):
    """The sampler's keep-probability: the governor's first lever."""

    def set_pressure(self, factor: float) -> None:
        """Scale the configured keep-probability by `factor` (1 = as configured)."""
        ...

    @property
    def effective_ratio(self) -> float:
        """The keep-probability applied now."""
        ...


@dataclass(slots=True)
class _Part:
    name: str
    measured: Measured
    bounded: Bounded | None = None
    budgeted: Budgeted | None = None
    state: StatePart | None = None  # long-lived state: live entries go only when the budget is exceeded
    share: float = 0.0
    floor: int = MIN_BOUND
    ceiling: Callable[[], int] | None = None  # the part's own configured size, which the plan never exceeds
    elastic: bool = False  # shrunk under pressure, regrown after
    backlog_at: float | None = None  # share of its bound past which its bytes mean a burst still queues at the door
    spans: bool = True  # holds spans (sampling fewer empties it); False: state kept per connection, thread or process
    shrink_elsewhere: bool = True  # shrunk (if elastic) also while the pressure is outside the span buffers
    bound: int = 0  # the bound set now
    target: int = 0  # where its bound regrows to: the plan, or before one the bound it came with


@dataclass(slots=True)
class GovernorStats:
    """What the governor saw and did."""

    usage: int = 0
    rss: int = 0
    rss_peak: int = 0
    accounted: int = 0
    pressure: float = 0.0
    # "raise_threshold", "floor_held" (not lowered: the pressure is not in the span buffers), "shrink_<part>" for each
    # elastic part, "drop" (idle data dropped), "drop_all" (and the rest of the span buffers: they were the cause, or
    # the budget was exceeded), "evict_live_state" (past the budget: live state evicted too), "relax".
    actions: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("raise_threshold", "floor_held", "drop", "drop_all", "relax",
                                           "evict_live_state"), 0))
    # Spans dropped by the governor, "<part>_pressure" for each Budgeted part; index_pressure counts spans already
    # sent on whose late joins were given up.
    dropped: dict[str, int] = field(default_factory=dict)
    breakdown: dict[str, int] = field(default_factory=dict)
    heap_trims: int = 0
    span_bytes: int = 0  # of `accounted`, what the parts holding spans hold
    # "buffers" when the span buffers hold enough of the memory in use for sampling to relieve it, "elsewhere" when
    # they do not, "" below the first level.
    cause: str = ""


class MemoryGovernor:
    """Keeps the agent within `limit` bytes; register its parts, then run `run()` as a task or call `check()`."""

    def __init__(self, limit: int, baseline: int = 0, interval: float = 0.5, keep: KeepProbability | None = None,
                 rss: Callable[[], int] = read_rss, clock: Callable[[], float] = time.monotonic,
                 keep_floor: float = KEEP_FLOOR) -> None:
        self.limit = limit
        self.keep = keep
        self.keep_floor = keep_floor  # lowest keep factor while the pressure is not in the span buffers
        self._rss = rss
        self._clock = clock
        self._parts: list[_Part] = []
        self._recent: deque[tuple[float, int]] = deque()  # (time, usage) of the checks in the last SETTLE s
        self._unsettled_at = clock()  # last new high of usage, check at a shrinking level, or backlog
        self._settled = False
        # Near its budget a node's keep-probability moves every few seconds: one line a minute says so.
        self._threshold_log = RateLimitedLog(log, 60.0)
        self._floor_log = RateLimitedLog(log, 60.0)
        self._live_log = RateLimitedLog(log, 60.0)
        self._auto_baseline = not baseline
        self.baseline = self.headroom = 0
        self.set_baseline(baseline or rss())
        self.interval = interval
        self.stats = GovernorStats()
        self.factor = 1.0  # keep-probability multiplier applied to the sampler
        self.planned: dict[str, int] = {}
        self._trim = _malloc_trim()
        self._trimmed_at = clock()

    # -------------------------------------------------------------------------------------------- parts

    def account(self, name: str, part: Measured) -> None:
        """Count `part`'s bytes against the budget; it has no bound of its own."""
        self._parts.append(_Part(name, part))

    def bound(self, name: str, part: Bounded, share: float, *, bound: int, floor: int = MIN_BOUND,
              ceiling: Callable[[], int] | None = None, elastic: bool = False, backlog_at: float | None = None,
              spans: bool = True, shrink_elsewhere: bool | None = None) -> None:
        """Plan `part` at `share` of the headroom (never above `ceiling()`, never below `floor`); an `elastic` part
        is also shrunk under pressure and regrown after. `bound`: the bound it has now. `spans` False: what it holds
        is not spans (sampling fewer does not empty it). `shrink_elsewhere` False: not shrunk while the pressure is
        outside the span buffers (the default: only parts that do not hold spans are)."""
        self._parts.append(_Part(name, part, bounded=part, share=share, floor=floor, ceiling=ceiling, elastic=elastic,
                                 backlog_at=backlog_at, spans=spans, bound=bound, target=bound,
                                 shrink_elsewhere=not spans if shrink_elsewhere is None else shrink_elsewhere))
        if elastic:
            self.stats.actions.setdefault("shrink_" + name, 0)

    def register(self, name: str, part: Budgeted, share: float, *, bound: int, floor: int = MIN_BOUND,
                 ceiling: Callable[[], int] | None = None, backlog_at: float | None = None) -> None:
        """Plan, shrink and regrow `part` like an elastic bound() part, and empty it at the drop step."""
        self.bound(name, part, share, bound=bound, floor=floor, ceiling=ceiling, elastic=True, backlog_at=backlog_at)
        self._parts[-1].budgeted = part
        self.stats.dropped.setdefault(name + "_pressure", 0)

    def register_state(self, name: str, part: StatePart, share: float, *, bound: int, floor: int = MIN_BOUND,
                       ceiling: Callable[[], int] | None = None) -> None:
        """Like register(), for long-lived state (per connection, thread or process) rather than spans: its bytes
        count against the budget but do not make sampling the lever, and its bound takes only idle entries (live
        ones go only past the budget: `_evict_live`). Planned now if a plan was made already."""
        self.register(name, part, share, bound=bound, floor=floor, ceiling=ceiling)
        p = self._parts[-1]
        p.spans = False
        p.shrink_elsewhere = True  # idle entries only: it frees the state that the pressure elsewhere is made of
        p.state = part
        if self.planned:
            want = int(self.headroom * share)
            p.bound = p.target = self.planned[name] = max(floor, min(ceiling(), want) if ceiling else want)
            self._count_dropped(p, part.set_bound(p.bound))

    def set_baseline(self, baseline: int) -> None:
        """What the process holds with empty buffers; the headroom is what is left of the limit above it."""
        limit = self.limit
        self.baseline = baseline
        self.headroom = limit - baseline
        if self.headroom < limit // 8:
            log.error("memory.limit (%d MiB) leaves no room above what the agent holds idle (%d MiB): raise "
                      "memory.limit or turn off what is not needed (the OTLP/gRPC receiver, /metrics); buffers get "
                      "%d MiB regardless", limit >> 20, baseline >> 20, (limit // 4) >> 20)
            self.headroom = limit // 4

    def set_budget(self, limit: int, baseline: int = 0, interval: float | None = None,
                   keep_floor: float | None = None) -> dict[str, int]:
        """A new budget while running (a live config): `baseline` 0 keeps the one measured; every part is planned
        again. Returns the new plan."""
        self.limit = limit
        if interval is not None:
            self.interval = interval
        if keep_floor is not None:
            self.keep_floor = keep_floor
        self.set_baseline(baseline or self.baseline)
        return self.plan()

    # -------------------------------------------------------------------------------------------- accounting

    def accounted(self) -> dict[str, int]:
        """Bytes each part holds now."""
        return {p.name: p.measured.bytes for p in self._parts}

    def measure(self) -> float:
        """Read RSS and the buffers; returns the pressure (share of the headroom in use)."""
        st = self.stats
        st.breakdown = self.accounted()
        st.accounted = sum(st.breakdown.values())
        st.span_bytes = sum(st.breakdown[p.name] for p in self._parts if p.spans)
        st.rss = self._rss()
        st.rss_peak = max(st.rss_peak, st.rss)
        st.usage = max(st.rss, self.baseline + st.accounted)
        st.pressure = max(0.0, (st.usage - self.baseline) / self.headroom)
        return st.pressure

    # -------------------------------------------------------------------------------------------- acting

    def check(self) -> float:
        """Measure once and act on the pressure; returns the pressure seen."""
        p = self.measure()
        now = self._clock()
        if self._trim is not None and now - self._trimmed_at >= TRIM_EVERY:
            # Free pages go back to the system as soon as the data on them has gone (with PYTHONMALLOC=malloc,
            # see edge/runtime/libc_malloc.py, that is nearly all the memory a burst took); glibc alone keeps them.
            self._trimmed_at = now
            self._trim(0)
            self.stats.heap_trims += 1
        rising = self._new_high(now, self.stats.usage)
        if rising or p >= LEVELS["burst"] or self._backlog():
            self._unsettled_at = now
        settled = now - self._unsettled_at >= SETTLE
        if settled != self._settled:
            self._settled = settled
            if settled and p >= RELAX:
                log.info("memory usage settled at %.0f%% of the headroom for %.0f s (heap kept from an earlier peak): "
                         "the keep-probability steps back up", p * 100, SETTLE)
        # A settled plateau is heap CPython kept after a peak, not data: shrinking buffers would not give it back,
        # only stitch and tail-sample worse for the rest of the process's life.
        shrinking = p >= LEVELS["shrink"] and not settled
        self.stats.cause = "" if p < LEVELS["raise_threshold"] else "buffers" if self._buffers_cause() else "elsewhere"
        if self.stats.cause == "elsewhere" and self.factor < self._floor() and self.keep is not None:
            self._hold_floor(self.keep)  # lowered while the buffers were the cause; they are not any more
        if shrinking or (p >= LEVELS["raise_threshold"] and rising):
            self._raise_threshold()
        if shrinking:
            self._shrink()
        if p >= LEVELS["drop"]:
            self._drop()
        if p >= 1.0 and self.measure() >= 1.0:  # still past the budget once the drop step let go of what it could
            self._evict_live()
        if p < RELAX:
            self._relax()
        elif settled:
            self._relax(buffers=False)
        return p

    def _backlog(self) -> bool:
        """Spans queue at the door: a burst is still draining.

        The inbox over half its bound, or OTLP/gRPC requests still arriving beyond the receiver's planned share: at
        steady load both stay far below, and a plateau that never settles keeps sampling at its floor.
        """
        br = self.stats.breakdown
        return any(p.backlog_at is not None and br.get(p.name, 0) > p.bound * p.backlog_at for p in self._parts)

    def _buffers_cause(self) -> bool:
        """Whether the span buffers hold enough of the memory in use above the baseline for sampling fewer spans to
        relieve it, or a burst still queues at the door."""
        st = self.stats
        return st.span_bytes >= BUFFER_CAUSE * max(0, st.usage - self.baseline) or self._backlog()

    def _new_high(self, now: float, usage: int) -> bool:
        """Record usage; True when it is above everything seen in the last SETTLE seconds by more than noise."""
        recent = self._recent
        while recent and recent[0][0] < now - SETTLE:
            recent.popleft()
        high = max((u for _, u in recent), default=None)
        recent.append((now, usage))
        return high is None or usage > high + max(256 * 1024, self.headroom // 32)

    def _raise_threshold(self) -> None:
        keep = self.keep
        if keep is None:
            return
        if self.stats.cause == "elsewhere" and self.factor / 2 < self._floor():
            # The buffers are nearly empty: sampling out more would lose spans without freeing the memory.
            self._hold_floor(keep)
            return
        if self.factor > 1 / 1024:
            self.factor /= 2
            keep.set_pressure(self.factor)
            self.stats.actions["raise_threshold"] += 1
            self._threshold_log.warning("memory pressure %.0f%% of %d bytes headroom: keep-probability now %.4g",
                                        self.stats.pressure * 100, self.headroom, keep.effective_ratio)

    def _floor(self) -> float:
        """The lowest keep factor while the pressure is elsewhere: none below 1 short of the burst level, since
        sampling out spans frees nothing there; from it, `keep_floor`."""
        return self.keep_floor if self.stats.pressure >= LEVELS["burst"] else 1.0

    def _hold_floor(self, keep: KeepProbability) -> None:
        """Keep the keep-probability at its floor (one notch back towards it per check if the buffers had taken it
        lower) and say why."""
        st = self.stats
        if self.factor < self._floor():
            self.factor = min(self._floor(), self.factor * 2)
            keep.set_pressure(self.factor)
        st.actions["floor_held"] = st.actions.get("floor_held", 0) + 1
        outside = max(0, st.usage - self.baseline - st.accounted)
        state = st.accounted - st.span_bytes
        self._floor_log.warning(
            "memory pressure %.0f%% of %d MiB headroom is outside the span buffers (they hold %.1f MiB; state tables "
            "%.1f MiB; unaccounted heap %.1f MiB): keep-probability held at %.4g, sampling fewer spans would not free "
            "it. Raise memory.limit (the agent idles at %d MiB here) or trace fewer processes (sources.ebpf.pids)",
            st.pressure * 100, self.headroom >> 20, st.span_bytes / 2**20, state / 2**20, outside / 2**20,
            keep.effective_ratio, self.baseline >> 20)

    # -------------------------------------------------------------------------------------------- planning

    def plan(self) -> dict[str, int]:
        """Bound every part by its share of the headroom (never above its own size); returns the bounds.

        Run again after the budget changes (a live config): bounds are recomputed from the headroom, not from
        what pressure left them at.
        """
        h = self.headroom
        planned: dict[str, int] = {}
        for p in self._parts:
            if p.bounded is None:
                continue
            want = int(h * p.share)
            if p.ceiling is not None:
                want = min(p.ceiling(), want)
            p.bound = p.target = planned[p.name] = max(p.floor, want)
            self._count_dropped(p, p.bounded.set_bound(p.bound))
        self.planned = planned
        log.info("memory plan: limit %d MiB, baseline %d MiB, buffers %s", self.limit >> 20, self.baseline >> 20,
                 " ".join(f"{k}={v >> 10}KiB" for k, v in planned.items()))
        return planned

    def _shrink(self) -> None:
        elsewhere = self.stats.cause == "elsewhere"  # span buffers this empty would give back nothing
        for p in self._parts:
            if not p.elastic or p.bounded is None or p.bound <= p.floor or (elsewhere and not p.shrink_elsewhere):
                continue
            p.bound = max(p.floor, p.bound // 2)
            self._count_dropped(p, p.bounded.set_bound(p.bound))
            self.stats.actions["shrink_" + p.name] += 1

    def _drop(self) -> None:
        """Idle data first; what may still be needed (undecided traces still growing, released spans a late SDK span
        may still join, spans at the door) only where the span buffers are the cause or the budget is exceeded."""
        self.stats.actions["drop"] += 1
        everything = self._buffers_cause() or self.stats.pressure >= 1.0
        if everything:
            self.stats.actions["drop_all"] += 1
        dropped: dict[str, int] = {}
        for p in self._parts:
            if p.budgeted is not None:
                n = p.budgeted.drop_idle()
                if everything:
                    n += p.budgeted.drop_all()
                self._count_dropped(p, n)
                if n:
                    dropped[p.name] = n
        if dropped:
            log.warning("memory pressure %.0f%%: dropped %s", self.stats.pressure * 100,
                        ", ".join(f"{n} spans from the {name}" for name, n in dropped.items()))
        gc.collect()
        if self._trim is not None:
            self._trim(0)

    def _evict_live(self) -> None:
        """The budget is exceeded even after the drop step: live state over its bound goes too, in each part's
        stated order, counted by reason and said in the log."""
        evicted: dict[str, int] = {}
        for p in self._parts:
            if p.state is None or p.measured.bytes <= p.bound:
                continue
            before = sum(p.state.evicted.values())
            self._count_dropped(p, p.state.evict_live(p.bound))
            n = sum(p.state.evicted.values()) - before
            if n:
                evicted[p.name] = n
        if evicted:
            self.stats.actions["evict_live_state"] = self.stats.actions.get("evict_live_state", 0) + 1
            self._live_log.warning(
                "memory pressure %.0f%%: the budget is exceeded, live state evicted (%s): spans of those connections "
                "and threads may be lost or unlinked; raise memory.limit", self.stats.pressure * 100,
                ", ".join(f"{n} entries of {name}" for name, n in evicted.items()))

    def _relax(self, buffers: bool = True) -> None:
        changed = False
        if self.factor < 1.0 and self.keep is not None:
            self.factor = min(1.0, self.factor * 2)
            self.keep.set_pressure(self.factor)
            changed = True
        if buffers:
            changed = self._regrow() or changed
        if changed:
            self.stats.actions["relax"] += 1

    def _regrow(self) -> bool:
        """One notch back towards the planned bounds; True if any bound grew."""
        changed = False
        for p in self._parts:
            if not p.elastic or p.bounded is None:
                continue
            target = min(p.target, p.ceiling()) if p.ceiling is not None else p.target
            if p.bound < target:
                p.bound = min(target, max(p.floor, p.bound * 2))
                self._count_dropped(p, p.bounded.set_bound(p.bound))
                changed = True
        return changed

    def _count_dropped(self, p: _Part, n: int) -> None:
        if n:
            key = p.name + "_pressure"
            self.stats.dropped[key] = self.stats.dropped.get(key, 0) + n

    async def run(self) -> None:
        """Check every `interval` seconds until cancelled."""
        if self._auto_baseline:
            # Measured again once running: receivers and their threads are up, no span has arrived yet.
            self.set_baseline(self._rss())
        self.plan()
        while True:
            try:
                p = self.check()
            except Exception:  # noqa: BLE001 - the governor must outlive a bug in one buffer's accounting
                log.exception("memory governor check failed")
                p = 0.0
            await asyncio.sleep(self.next_interval(p))

    def next_interval(self, pressure: float) -> float:
        """Seconds to the next check: a fifth of the interval once the shrinking steps have started.

        A burst at 10x the steady rate grows the heap by megabytes between two checks half a second apart; near the
        limit the governor looks (a /proc read and a few sums, ~50 µs) more often.
        """
        return self.interval / 5 if pressure >= LEVELS["shrink"] else self.interval

    def status(self) -> dict[str, Any]:
        """Figures for the agent's status and /metrics."""
        st = self.stats
        return {"limit": self.limit, "baseline": self.baseline, "headroom": self.headroom, "usage": st.usage, "rss": st.rss,
                "rss_peak": st.rss_peak, "accounted": st.accounted, "pressure": round(st.pressure, 4),
                "keep_factor": self.factor, "keep_floor": self.keep_floor, "cause": st.cause,
                "span_bytes": st.span_bytes, "outside": max(0, st.usage - self.baseline - st.accounted),
                "planned": dict(self.planned), "heap_trims": st.heap_trims,
                "actions": dict(st.actions), "dropped": dict(st.dropped), "bytes": dict(st.breakdown),
                "state": {p.name: {"bytes": st.breakdown.get(p.name, 0), "live_bytes": p.state.live_bytes,
                                   "bound": p.bound, "evicted": dict(p.state.evicted)}
                          for p in self._parts if p.state is not None}}


def _malloc_trim() -> Callable[[int], int] | None:
    # glibc keeps freed memory in its arenas; malloc_trim hands it back so RSS can actually fall.
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None
