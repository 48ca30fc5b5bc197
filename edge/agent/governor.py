"""The memory governor: one budget (`memory.limit`) that every queue, buffer and table accounts against.

Every `memory.check_interval` it reads the process RSS (/proc/self/statm) and the bytes each buffer reports
(inbox, assembler, tail buffer, uplink queue, RED series, OTLP/gRPC requests still arriving) and takes usage = max(RSS, baseline + accounted),
where the baseline is what the process held with empty buffers (RSS at start unless configured). The RSS
catches what the estimates miss; the accounted bytes react before the allocator has grown.

Pressure is the share of the headroom (limit - baseline) in use: the interpreter and its libraries cannot be
shed, only what sits in buffers can.

The budget is kept first by planning, not by reacting: once the baseline is known, `plan()` bounds every buffer
by a share of the headroom (SHARES; 40 % is left for what no buffer accounts: requests being decoded,
batches being encoded, allocator slack; 37 % with the OTLP/gRPC receiver, whose requests still arriving are now
bounded and accounted). CPython and glibc rarely give memory back once a burst has grown the
heap, so a budget that is only defended after the fact stays broken: the levers below are for surprises. A budget that leaves less than an eighth of itself above the baseline
cannot be kept; the governor says so once and then governs a headroom of a quarter of the limit above the
baseline (the process then ends up over the limit, visibly in the status and /metrics).

Under pressure it acts in this order, one step further per check while the pressure lasts, and counts each
action:

1. `raise_threshold` (≥ 70 % while usage sets new highs, every check from 80 % until settled): halve the agent's
   keep-probability (down to ratio/1024). The sampler tells its observers, and the agent writes the same
   threshold into the kernel's config map, so the probes stop sending what the agent would drop.
2. `shrink_tail` (≥ 80 %, until settled): halve the tail-sampling buffer; its oldest undecided traces are dropped. And
   `shrink_index`: the assembler forgets released spans older than half its window (late joins are given up;
   at the drop step all released spans), by its `shrink()` if it has one, else through its index's
   `expire()`, and its byte bound for held spans is
   halved (`shrink_assembler`: spans are released before their window ends; nothing is lost), and so is the
   inbox's (`shrink_inbox`: OTLP clients are told to retry later, other sources' overflow is counted).
3. `spill` (≥ 90 %): ask the uplink to move queued spans into its (disk) spool now, if it can.
4. `drop` (≥ 95 %): drop the lowest-value data: every undecided trace in the tail buffer (the head already
   rejected them), then the spans waiting in the inbox, after counting them into the RED metrics so that the
   aggregates stay exact; then return freed memory to the OS (malloc_trim).

Below 60 % it steps back one notch per check: the keep-probability doubles (and with it the kernel's), and the
tail buffer, inbox and assembler bounds regrow towards their planned sizes.

Every TRIM_EVERY seconds it hands free heap pages back to the system (malloc_trim). `helix run` puts every object
on glibc's malloc (edge/runtime/libc_malloc.py), so after a burst that returns what the burst's data took; on CPython's
own allocator it returns little.

RSS measures the heap, not what lives in it: on CPython's own allocator, after a burst its arenas keep most of the
memory the burst needed (bench/memory_budget.py: 3-6 MiB more at steady load than before it, with the buffers at a quarter of
their plan), so the pressure can sit between 60 and 90 % for as long as the process runs. Below the spill level
the governor therefore looks at the trend: between 70 and 80 % it halves the keep-probability only when usage sets
a new high (above everything it saw in the last SETTLE seconds, by a margin), and once for SETTLE seconds usage
has set no new high, reached no spill level and no backlog waited at the door (a burst still draining), the
plateau counts as settled: the keep-probability steps back up, and from 80 % the shrinking steps pause (they
would not get the heap back, only stitch and tail-sample worse). Otherwise one burst would leave a node sampling
at its floor until restart. The buffers' bounds regrow only below 60 %: regrown on such a plateau, they filled the
heap's spare room and the next spike reached the shrinking level, so the tail buffer dropped traces again and
again (the same bench: 73 shrinking steps and 50,861 spans dropped from the tail buffer after one burst, against 6
and 5,390).
"""
from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import gc
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..net.retry import RateLimitedLog

__all__ = ["MemoryGovernor", "GovernorStats", "read_rss", "LEVELS"]

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE")
# Pressure (share of the headroom in use) at which each step starts; below RELAX the governor steps back.
LEVELS = {"raise_threshold": 0.70, "shrink_tail": 0.80, "spill": 0.90, "drop": 0.95}
RELAX = 0.60
TRIM_EVERY = 2.0  # s between two malloc_trim(0) calls: each takes ~0.2-2 ms (17 ms at most seen in a burst)
SETTLE = 10.0  # s without a new high, a check at the spill level or a backlog before a plateau above RELAX is settled
# Shares of the headroom each buffer is planned to fill at most (see plan()). The 40 % left is for what no buffer
# accounts (requests being decoded, batches being encoded, allocator slack): bench/memory_budget.py's 10x burst needs it.
# The receiver's share (OTLP/gRPC requests still arriving) was part of that unaccounted 40 % before it was bounded.
SHARES = {"assembler": 0.16, "index": 0.08, "tail": 0.16, "inbox": 0.12, "uplink": 0.08, "receiver": 0.03}
_MIN_TAIL = 64 * 1024
_MIN_INBOX = 512 * 1024


def read_rss() -> int:
    """Resident set size of this process in bytes (/proc/self/statm, second field)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(slots=True)
class GovernorStats:
    """What the governor saw and did."""

    usage: int = 0
    rss: int = 0
    rss_peak: int = 0
    accounted: int = 0
    pressure: float = 0.0
    actions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("raise_threshold", "shrink_tail", "shrink_index", "shrink_assembler", "shrink_inbox", "spill",
         "spill_unavailable", "drop", "relax"), 0))
    # Spans dropped by the governor; index_pressure counts spans already sent on whose late joins were given up.
    dropped: dict[str, int] = field(default_factory=lambda: {"tail_pressure": 0, "inbox_pressure": 0,
                                                             "index_pressure": 0})
    breakdown: dict[str, int] = field(default_factory=dict)
    heap_trims: int = 0


class MemoryGovernor:
    """Keeps an Agent within `cfg.memory.limit`; run `run()` as a task or call `check()` yourself."""

    def __init__(self, agent: Any, limit: int, baseline: int = 0, interval: float = 0.5,
                 rss: Callable[[], int] = read_rss, clock: Callable[[], float] = time.monotonic) -> None:
        self.agent = agent
        self.limit = limit
        self._rss = rss
        self._clock = clock
        self._recent: deque[tuple[float, int]] = deque()  # (time, usage) of the checks in the last SETTLE s
        self._unsettled_at = clock()  # last new high of usage, check at a shrinking level, or backlog
        self._settled = False
        # Near its budget a node's keep-probability moves every few seconds: one line a minute says so.
        self._threshold_log = RateLimitedLog(log, 60.0)
        self._auto_baseline = not baseline
        self.baseline = self.headroom = 0
        self.set_baseline(baseline or rss())
        self.interval = interval
        self.stats = GovernorStats()
        self.factor = 1.0  # keep-probability multiplier applied to the agent sampler
        self.planned: dict[str, int] = {}
        self._tail_max: int | None = None
        self._trim = _malloc_trim()
        self._trimmed_at = clock()
        self._asm_max_bytes: int | None = None  # the assembler's own bound, restored after pressure
        self._index_max_bytes: int | None = None
        self._inbox_max_bytes: int | None = None

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

    # -------------------------------------------------------------------------------------------- accounting

    def accounted(self) -> dict[str, int]:
        """Bytes each buffer holds now."""
        a = self.agent
        up = getattr(a.uplink, "stats", None)
        out = {
            "inbox": a.inbox.bytes,
            "assembler": _assembler_bytes(a.assembler),
            "tail": a.sampler.bytes if hasattr(a.sampler, "bytes") else 0,
            "uplink": int(getattr(up, "queued_bytes", 0) or 0),
        }
        agg = getattr(a, "aggregator", None)
        if agg is not None:
            out["aggregator"] = agg.bytes
        grpc = getattr(a, "grpc", None)
        if grpc is not None:
            out["receiver"] = grpc.buffered  # OTLP/gRPC requests still arriving, bounded by flow control
        return out

    def measure(self) -> float:
        """Read RSS and the buffers; returns the pressure (share of the headroom in use)."""
        st = self.stats
        st.breakdown = self.accounted()
        st.accounted = sum(st.breakdown.values())
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
        if rising or p >= LEVELS["spill"] or self._backlog():
            self._unsettled_at = now
        settled = now - self._unsettled_at >= SETTLE
        if settled != self._settled:
            self._settled = settled
            if settled and p >= RELAX:
                log.info("memory usage settled at %.0f%% of the headroom for %.0f s (heap kept from an earlier peak): "
                         "the keep-probability steps back up", p * 100, SETTLE)
        # A settled plateau is heap CPython kept after a peak, not data: shrinking buffers would not give it back,
        # only stitch and tail-sample worse for the rest of the process's life.
        shrinking = p >= LEVELS["shrink_tail"] and not settled
        if shrinking or (p >= LEVELS["raise_threshold"] and rising):
            self._raise_threshold()
        if shrinking:
            self._shrink_tail()
            self._shrink_index()
            self._shrink_inbox()
        if p >= LEVELS["spill"]:
            self._spill()
        if p >= LEVELS["drop"]:
            self._drop()
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
        return (br.get("inbox", 0) > self.agent.inbox.max_bytes // 2
                or br.get("receiver", 0) > self.planned.get("receiver", 0))

    def _new_high(self, now: float, usage: int) -> bool:
        """Record usage; True when it is above everything seen in the last SETTLE seconds by more than noise."""
        recent = self._recent
        while recent and recent[0][0] < now - SETTLE:
            recent.popleft()
        high = max((u for _, u in recent), default=None)
        recent.append((now, usage))
        return high is None or usage > high + max(256 * 1024, self.headroom // 32)

    def _sampler(self) -> Any:
        return self.agent.sampler

    def _raise_threshold(self) -> None:
        sampler = self._sampler()
        if hasattr(sampler, "set_pressure") and self.factor > 1 / 1024:
            self.factor /= 2
            sampler.set_pressure(self.factor)
            self.stats.actions["raise_threshold"] += 1
            self._threshold_log.warning("memory pressure %.0f%% of %d bytes headroom: keep-probability now %.4g",
                                        self.stats.pressure * 100, self.headroom,
                                        getattr(sampler, "effective_ratio", self.factor))

    # -------------------------------------------------------------------------------------------- planning

    def plan(self) -> dict[str, int]:
        """Bound every buffer by its share of the headroom (never above its configured size); returns the bounds.

        Run again after the budget changes (a live config): bounds are recomputed from the headroom, not from
        what pressure left them at.
        """
        a, h = self.agent, self.headroom
        planned: dict[str, int] = {}
        asm = a.assembler
        cfg = getattr(asm, "config", None)
        if cfg is not None and dataclasses.is_dataclass(cfg) and isinstance(getattr(cfg, "max_bytes", None), int):
            changes = {"max_bytes": max(_MIN_TAIL, int(h * SHARES["assembler"]))}
            if isinstance(getattr(cfg, "max_index_bytes", None), int):
                changes["max_index_bytes"] = self._index_max_bytes = planned["index"] = max(
                    _MIN_TAIL, int(h * SHARES["index"]))
            asm.config = dataclasses.replace(cfg, **changes)
            self._asm_max_bytes = planned["assembler"] = changes["max_bytes"]
        tail = getattr(self._sampler(), "tail", None)
        if tail is not None:
            bound = max(_MIN_TAIL, min(tail.rules.buffer_bytes, int(h * SHARES["tail"])))
            self.stats.dropped["tail_pressure"] += tail.set_capacity(bound)
            self._tail_max = planned["tail"] = bound
        a.inbox.max_bytes = self._inbox_max_bytes = planned["inbox"] = max(_MIN_INBOX, int(h * SHARES["inbox"]))
        grpc = getattr(a, "grpc", None)
        if grpc is not None:
            planned["receiver"] = max(_MIN_TAIL, int(h * SHARES["receiver"]))
            grpc.set_buffer_limit(planned["receiver"])
        up_cfg = getattr(a.uplink, "cfg", None)
        if hasattr(a.uplink, "queue_limit") and hasattr(up_cfg, "queue_max_bytes"):
            a.uplink.queue_limit = planned["uplink"] = max(_MIN_TAIL, min(up_cfg.queue_max_bytes,
                                                                          int(h * SHARES["uplink"])))
        self.planned = planned
        log.info("memory plan: limit %d MiB, baseline %d MiB, buffers %s", self.limit >> 20, self.baseline >> 20,
                 " ".join(f"{k}={v >> 10}KiB" for k, v in planned.items()))
        return planned

    def _shrink_tail(self) -> None:
        sampler = self._sampler()
        tail = getattr(sampler, "tail", None)
        if tail is None or tail.capacity <= _MIN_TAIL:
            return
        dropped = sampler.shrink(max(_MIN_TAIL, tail.capacity // 2))
        self.stats.dropped["tail_pressure"] += dropped
        self.stats.actions["shrink_tail"] += 1

    def _shrink_index(self, keep: float = 0.5) -> None:
        # Released spans stay indexed for late joins (assembler.memory, 10 s): at thousands of spans per second
        # the index is the largest table in the agent. Under pressure, late joins older than the window go.
        asm = self.agent.assembler
        shrink = getattr(asm, "shrink", None)
        if shrink is not None:
            shrink()
            self.stats.actions["shrink_index"] += 1
            return
        index, cfg = getattr(asm, "index", None), getattr(asm, "config", None)
        if index is None or cfg is None or not hasattr(index, "expire"):
            return
        # Released spans younger than `keep` windows stay findable; the drop step passes 0: all of them go.
        n = index.expire(time.monotonic() - cfg.window * keep)
        if n:
            self.stats.actions["shrink_index"] += 1
            self.stats.dropped["index_pressure"] += n
        # Held spans: a lower byte bound makes the assembler release them before their window ends (nothing is
        # lost; a late child may miss its parent). Restored step by step when the pressure is gone.
        if dataclasses.is_dataclass(cfg) and isinstance(getattr(cfg, "max_bytes", None), int):
            if self._asm_max_bytes is None:
                self._asm_max_bytes = cfg.max_bytes
            smaller = max(_MIN_TAIL, cfg.max_bytes // 2)
            if smaller < cfg.max_bytes:
                asm.config = dataclasses.replace(cfg, max_bytes=smaller)
                self.stats.actions["shrink_assembler"] += 1

    def _shrink_inbox(self) -> None:
        # A smaller inbox pushes back at the door: OTLP clients are told "busy, retry later" (nothing lost), MQTT
        # and kernel spans that do not fit are counted as dropped by the inbox.
        inbox = self.agent.inbox
        if self._inbox_max_bytes is None:
            self._inbox_max_bytes = inbox.max_bytes
        if inbox.max_bytes > _MIN_INBOX:
            inbox.max_bytes = max(_MIN_INBOX, inbox.max_bytes // 2)
            self.stats.actions["shrink_inbox"] += 1

    def _spill(self) -> None:
        spill = getattr(self.agent.uplink, "spill", None)
        if spill is None:
            self.stats.actions["spill_unavailable"] += 1
            return
        spill()
        self.stats.actions["spill"] += 1

    def _drop(self) -> None:
        a = self.agent
        self.stats.actions["drop"] += 1
        self._shrink_index(keep=0.0)
        sampler = self._sampler()
        if hasattr(sampler, "drop_waiting"):
            self.stats.dropped["tail_pressure"] += sampler.drop_waiting()
        spans = a.inbox.drain()
        if spans:
            agg = getattr(a, "aggregator", None)
            if agg is not None:
                agg.consume(spans)  # the spans go, their counts stay
            self.stats.dropped["inbox_pressure"] += len(spans)
            log.warning("memory pressure %.0f%%: dropped %d spans waiting in the inbox (counted in RED metrics)",
                        self.stats.pressure * 100, len(spans))
        gc.collect()
        if self._trim is not None:
            self._trim(0)

    def _relax(self, buffers: bool = True) -> None:
        sampler = self._sampler()
        changed = False
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor * 2)
            sampler.set_pressure(self.factor)
            changed = True
        if buffers:
            changed = self._regrow_buffers() or changed
        if changed:
            self.stats.actions["relax"] += 1

    def _regrow_buffers(self) -> bool:
        """One notch back towards the planned bounds; True if any bound grew."""
        changed = False
        tail = getattr(self._sampler(), "tail", None)
        tail_max = min(self._tail_max or tail.rules.buffer_bytes, tail.rules.buffer_bytes) if tail is not None else 0
        if tail is not None and tail.capacity < tail_max:
            tail.set_capacity(min(tail_max, max(_MIN_TAIL, tail.capacity * 2)))
            changed = True
        inbox = self.agent.inbox
        if self._inbox_max_bytes is not None and inbox.max_bytes < self._inbox_max_bytes:
            inbox.max_bytes = min(self._inbox_max_bytes, inbox.max_bytes * 2)
            changed = True
        asm = self.agent.assembler
        cfg = getattr(asm, "config", None)
        if self._asm_max_bytes is not None and cfg is not None and cfg.max_bytes < self._asm_max_bytes:
            asm.config = dataclasses.replace(cfg, max_bytes=min(self._asm_max_bytes, cfg.max_bytes * 2))
            changed = True
        return changed

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
        return self.interval / 5 if pressure >= LEVELS["shrink_tail"] else self.interval

    def status(self) -> dict[str, Any]:
        """Figures for the agent's status and /metrics."""
        st = self.stats
        return {"limit": self.limit, "baseline": self.baseline, "headroom": self.headroom, "usage": st.usage, "rss": st.rss,
                "rss_peak": st.rss_peak, "accounted": st.accounted, "pressure": round(st.pressure, 4),
                "keep_factor": self.factor, "planned": dict(self.planned), "heap_trims": st.heap_trims,
                "actions": dict(st.actions), "dropped": dict(st.dropped), "bytes": dict(st.breakdown)}


def _assembler_bytes(asm: Any) -> int:
    """Held spans and the compact records of released ones still indexed for late joins."""
    held = getattr(asm, "memory_bytes", None)
    return int(held if held is not None else getattr(asm, "bytes", 0) or 0)


def _malloc_trim() -> Callable[[int], int] | None:
    # glibc keeps freed memory in its arenas; malloc_trim hands it back so RSS can actually fall.
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None
