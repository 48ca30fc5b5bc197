"""Assembler stage: joins SDK spans (the skeleton) and kernel spans (the flesh) into one trace.

Every span waits `window` seconds after it arrives, so that the spans it relates to — which often end, and
so arrive, later (a server span ends after the calls it made) — are there when it is placed. At release a
kernel span without a parent gets one from the rules in rules.py; the group of spans parent links join leaves in
one trace, decided once at its first release (traces.py): the application's trace where there is one, the trace
an SDK started below a kernel-only caller, else the kernel's own. SDK spans are never re-parented, but for an SDK
root span of a request the kernel saw arrive (it hangs under that kernel server span, `adopted`).

What a late SDK span could still change waits for it (hold.py): an OpenTelemetry SDK exports 5 s after a span
ends by default, long after the window. Spans already released are never contradicted: a group's trace is fixed at
its first release, and what arrives later follows it.

Also here: redeliveries (MQTT QoS 1, OTLP retries) are dropped, span ids that collide across sources are
re-minted on the kernel side, device clock skew is corrected, and the held spans are bounded in count and
bytes (what must leave early is released with what is known then and counted, never dropped).
"""
from __future__ import annotations

import ctypes
import math
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterator
from itertools import takewhile
from dataclasses import dataclass, field
from typing import Any

from ..model import Link, Resource, Span, SpanKind, StatusCode, new_span_id
from .clock import SkewAdjuster
from .config import AssemblerConfig
from .hold import ByStart, SdkPresence
from .index import (WAIT_ORPHAN, WAIT_TWIN, Entry, SpanIndex, TraceCtx, has_wire_context, is_kernel, pid_of)
from .rules import CAUSE, CERTAIN, Slack, infer_parent, kernel_twin
from .traces import TraceMoves, mark_moved

__all__ = ["Assembler", "AssemblerConfig", "AssemblerStats"]

_MAX_DEPTH = 64
# Waiting kernel server spans an SDK root span looks at for its request, latest-started first: its twin started
# just before it; this many covers the requests a process has in flight.
_TWIN_SCAN = 512
# One released span in the index: its Entry and Released record, a kept-attributes dict for kernel spans, and its
# slots in the index tables (measured with tracemalloc on the workload of bench/memory_budget.py: 560), and its slots
# in the tables' expiry queues (8 B in each of the one or two tables a span is in).
_RELEASED_BYTES = 576
# A client span's slot in the wire twin's table (SpanIndex.clients_by_parent), on top (tracemalloc: docs/benchmarks.md).
_PARENT_LINK_BYTES = 32
# One remembered trace (started by an SDK, or moved): its dict slot, the key and the entry or context it names.
_TRACE_BYTES = 200
_BUILDER_ONLY = ("helix.cause", "helix.cause.via")  # evidence for the rules, not sent on


@dataclass(slots=True)
class AssemblerStats:
    """Counters of the assembler; `links` counts parent links made by each rule."""

    spans_in: int = 0
    released: int = 0
    duplicates: int = 0
    id_collisions: int = 0
    evicted_early: int = 0
    links: dict[str, int] = field(default_factory=dict)
    trace_joined: int = 0  # kernel spans that took another span's trace id
    lone_connects: int = 0  # tcp.connect spans that joined nothing (not sent as traces of their own)
    index_trimmed: int = 0  # released spans forgotten before `memory` had passed, to keep max_index_bytes
    born: int = 0  # requests whose SDK started a trace, seen on the wire or from the SDK span
    moved: int = 0  # spans moved out of their application trace under another (original id kept)
    sdk_waits: int = 0  # kernel spans that waited for their process's SDK
    sdk_wait_expired: int = 0  # ... until sdk_wait, no SDK span having come
    sdk_wait_forced: int = 0  # spans held for an SDK that the memory bound released early
    unjoined: int = 0  # SDK root spans whose request's kernel span had left in a trace they could not join
    state_evicted: int = 0  # stitching state entries (SDK-started and moved traces, SDK processes) the byte bound forgot


class Assembler:
    """Holds spans for a short window, infers parents and trace ids, and releases them."""

    def __init__(self, config: AssemblerConfig | None = None) -> None:
        self.config = config or AssemblerConfig()
        self.max_bytes = self.config.max_bytes
        self.max_index_bytes = self.config.max_index_bytes
        # The two parts of the memory budget: spans held for their window, and released spans kept for late joins.
        self.held_budget = _HeldSpans(self)
        self.index_budget = _LateJoins(self)
        self.state_budget = _StitchState(self)
        self.index = SpanIndex()
        self.held: deque[Entry] = deque()
        self.bytes = 0
        self.stats = AssemblerStats()
        self.skew = SkewAdjuster()
        self.sdk = SdkPresence(self.config.sdk_wait)
        self.traces = TraceMoves(self.config.dedup_memory)
        self._seen = _RecentKeys(self.config.dedup_memory)
        self._sdk_resources: dict[int, set[Resource]] = {}  # pid -> resources of SDKs running in it
        self._pid_of_resource: OrderedDict[Resource, int] = OrderedDict()  # an SDK resource -> its process
        self._kernel_by_wire: OrderedDict[bytes, int] = OrderedDict()  # wire parent span id -> pid of the kernel span
        self._last_expire = 0.0
        self.now = -math.inf  # the clock of the latest process() call
        self._renamed: dict[tuple[Resource, str], Resource] = {}
        self._claimants: dict[int, Entry] = {}  # id -> unreleased requests that started a trace or wait for an SDK
        self._waiting: dict[int, dict[int, Entry]] = {}  # pid -> id -> entries waiting for that process's SDK
        # The same by start time, per reason: an arriving SDK span finds the spans around or inside it directly.
        self._twins: dict[int, ByStart[Entry]] = {}
        self._orphans: dict[int, ByStart[Entry]] = {}
        self._deferred: deque[Entry] = deque()  # held past their window, waiting with what they depend on
        self._deferred_n = 0
        self._ready: list[Entry] = []  # deferred spans whose wait is over
        self._adoptable: dict[int, Entry] = {}  # held SDK root server spans whose request's kernel span is not known
        # pid -> when a kernel span the kernel sampled on its own randomness last arrived from it (see _find_twin)
        self._kernel_sampled: OrderedDict[int, float] = OrderedDict()

    # --- intake -------------------------------------------------------------------------------------------

    def _is_duplicate(self, s: Span) -> bool:
        if self._seen.add(hash((s.trace_id, s.span_id))):
            return False
        self.stats.duplicates += 1
        return True

    def _avoid_collision(self, s: Span) -> None:
        other = self.index.by_id.get(s.span_id)
        if other is None or other.span.source is s.source:
            return
        # Kernel span ids are ours to choose; SDK ids are referenced by other SDK spans and must not change.
        victim = s if is_kernel(s) else other.span
        if victim is other.span and other.released:
            return
        self.stats.id_collisions += 1
        if victim is other.span:
            del self.index.by_id[other.span.span_id]
            other.span.span_id = new_span_id()
            self.index.by_id[other.span.span_id] = other
        else:
            s.span_id = new_span_id()

    def _remember(self, table: OrderedDict, key: object, value: object) -> None:
        table[key] = value
        if len(table) > self.traces.max_entries:
            table.popitem(last=False)  # the oldest: its SDK span came long ago, or never will

    def _sdk_pid(self, s: Span) -> int | None:
        pid = pid_of(s)
        return pid if pid is not None else self._pid_of_resource.get(s.resource)

    def _learn_sdk_process(self, e: Entry, now: float) -> None:
        """Which process each SDK runs in: its resource's `process.pid`, or the kernel span of the same request or
        call (a kernel span carrying the SDK span's id as its wire parent)."""
        s = e.span
        if is_kernel(s):
            pid = pid_of(s)
            if pid is None:
                return
            self.sdk.kernel_seen(pid, now)
            if has_wire_context(s) and s.parent_span_id and s.kind in (SpanKind.SERVER, SpanKind.CLIENT):
                key = s.parent_span_id if s.kind == SpanKind.SERVER else b"c" + s.parent_span_id
                self._remember(self._kernel_by_wire, key, pid)
                if s.kind == SpanKind.SERVER:
                    for sdk in self.index.sdk_servers_by_parent.get(s.parent_span_id, ()):
                        self._sdk_process(pid, sdk.span.resource)
            return
        pid = pid_of(s)
        if pid is None and s.kind == SpanKind.SERVER and s.parent_span_id:
            pid = self._kernel_by_wire.get(s.parent_span_id)
        if pid is None and s.kind in (SpanKind.CLIENT, SpanKind.PRODUCER):
            pid = self._kernel_by_wire.get(b"c" + s.span_id)
        if pid is not None:
            self._sdk_process(pid, s.resource)

    def _sdk_process(self, pid: int, resource: Resource) -> None:
        self._sdk_resources.setdefault(pid, set()).add(resource)
        if self._pid_of_resource.get(resource) != pid:
            self._remember(self._pid_of_resource, resource, pid)

    def process(self, spans: list[Span], now: float | None = None, flush: bool = False) -> list[Span]:
        """Take new spans; return those whose window has passed (all of them when `flush`)."""
        now = time.monotonic() if now is None else now
        self.now = now
        for s in spans:
            self.stats.spans_in += 1
            if self._is_duplicate(s):
                continue
            self._avoid_collision(s)
            e = Entry(s, now, size=s.approx_size())
            e.own_r = is_kernel(s) and "rv:" in s.trace_state and not has_wire_context(s)
            if e.own_r:
                pid = pid_of(s)
                self._kernel_sampled[pid or 0] = now
                self._kernel_sampled.move_to_end(pid or 0)
                if len(self._kernel_sampled) > 4096:
                    self._kernel_sampled.popitem(last=False)
            self.index.add(e)
            self._learn_sdk_process(e, now)
            if is_kernel(s):
                self._kernel_arrived(e, now)
            else:
                self._sdk_arrived(e, now)
            self.held.append(e)
            self.bytes += e.size
        for key, e in list(self._adoptable.items()):
            if e.released or self._find_twin(e, now):
                del self._adoptable[key]
        self._end_waits(now, flush)
        self._push_claims()
        out: list[Span] = []
        cfg = self.config
        while (self._deferred_n or self.held) and (len(self) > cfg.max_spans or self.bytes > self.max_bytes):
            self.stats.evicted_early += 1
            e = self._oldest_held()
            if e.waiting or e.dependents is not None or self._blocker(e, now) is not None:
                self.stats.sdk_wait_forced += 1
            self._emit(e, now, out)
        while self.held and (flush or self.held[0].arrived + cfg.window <= now):
            e = self.held.popleft()
            blocker = None if flush else self._blocker(e, now)
            if blocker is not None:
                self._defer(e, blocker)
                continue
            self._emit(e, now, out)
        while self._ready:
            ready, self._ready = self._ready, []
            for e in ready:
                if e.released:
                    continue
                blocker = None if flush else self._blocker(e, now)
                if blocker is not None:
                    self._defer(e, blocker, again=True)
                    continue
                self._deferred_n -= 1
                self._emit(e, now, out)
        while self._deferred and self._deferred[0].released:
            self._deferred.popleft()
        if now - self._last_expire >= 1.0 or flush:
            self._last_expire = now
            self.index.expire(now - cfg.memory)
            self.state_budget.enforce(now)
        keep = self.max_index_bytes // _RELEASED_BYTES
        excess = self.index_excess(self.max_index_bytes)
        if excess > 0:
            # At high rates `memory` seconds of released spans outgrow the bound: the oldest late joins go first,
            # a tenth more than needed so that the index tables are rebuilt once per tenth, not once per batch.
            self.stats.index_trimmed += self.index.expire(float("inf"), at_most=excess + keep // 10)
        return out

    def _emit(self, e: Entry, now: float, out: list[Span]) -> None:
        span = self._release(e, now)
        if _is_lone_connect(span):
            # A successful connect that no request used (gRPC, TLS, pooled) would be a one-span trace: noise for a
            # trace view. Failed connects are kept, they explain errors.
            self.stats.lone_connects += 1
            return
        out.append(span)

    def _oldest_held(self) -> Entry:
        """The span to let go first when the bound is reached: the longest held."""
        while self._deferred:
            e = self._deferred.popleft()
            if not e.released:
                self._deferred_n -= 1
                self._end_wait(e)
                return e
        return self.held.popleft()

    # --- kernel knowledge ---------------------------------------------------------------------------------

    def _kernel_arrived(self, e: Entry, now: float) -> None:
        s = e.span
        if s.kind == SpanKind.CLIENT and has_wire_context(s):
            cause = self.index.by_id.get(s.attributes.get(CAUSE))  # type: ignore[arg-type]
            if (cause is not None and cause is not e and is_kernel(cause.span) and cause.span.kind == SpanKind.SERVER
                    and self._cause_holds(e, now)):
                self._birth(cause, e, now)
        elif s.kind == SpanKind.SERVER:
            for call in self.index.wire_calls_by_cause.pop(s.span_id, ()):
                if self._cause_holds(call, now):
                    self._birth(e, call, now)
            pid = pid_of(s)
            if e.born is None and not has_wire_context(s) and not e.own_r and self.sdk.may_have_sdk(pid, now):
                self._wait(e, WAIT_TWIN, now)

    def _sampled_lately(self, pid: int | None, now: float) -> bool:
        """Whether the kernel kept context-less requests of `pid` on its own randomness lately (sampling on there)."""
        return now - self._kernel_sampled.get(pid or 0, -math.inf) <= self.config.sdk_wait + self.config.window

    def _cause_holds(self, call: Entry, now: float) -> bool:
        """Whether the request the span builder named for `call` can say which request started its trace. The rules
        other than `thread` choose among the requests the builder saw, and where the kernel sampled, the one the call
        was made for may be among those it held back (the thread-pool and event-loop rules assume they see them all)."""
        return call.span.attributes.get("helix.cause.via") == "thread" or not self._sampled_lately(pid_of(call.span), now)

    def _birth(self, server: Entry, call: Entry, now: float) -> None:
        """A call carries trace context its request did not bring: the process's SDK started that trace for it."""
        ctx = (call.span.trace_id, call.span.trace_state, call.span.flags)
        if has_wire_context(server.span) and server.span.trace_id == ctx[0]:
            return  # the context it received, passed on
        if server.born is not None and server.born[0] == ctx[0]:
            return
        first = server.born is None
        self.traces.birth(server, ctx)
        if not first:
            if server.released:
                self._move_into_group(ctx[0], self._top(server))
            return
        self.stats.born += 1
        pid = pid_of(server.span)
        if pid is not None:
            self.sdk.runs_sdk(pid, now)
        if server.waiting == WAIT_TWIN:
            self._end_wait(server)
        if not server.released:
            self._claimants[id(server)] = server

    def _sdk_arrived(self, e: Entry, now: float) -> None:
        s = e.span
        pid = self._sdk_pid(s)
        if pid is None:
            return
        self.sdk.sdk_seen(pid, now, s.end_ns)
        if s.kind == SpanKind.SERVER and not s.parent_span_id and not self._find_twin(e, now):
            self._adoptable[id(e)] = e  # its request's kernel span may come after it (an SDK exporting at once)
        orphans = self._orphans.get(pid)
        if orphans:
            for w in list(orphans.starting_within(s.start_ns - Slack.CONTAIN_NS, s.end_ns + Slack.CONTAIN_NS)):
                if _inside(w, e):
                    self._end_wait(w)  # its container came: the sdk-process rule will find it

    def _find_twin(self, e: Entry, now: float) -> bool:
        """The kernel server span of an SDK root server span's request: the one whose calls carried its trace, else
        the tightest one around it in its process that took no context (one waiting for this very span first)."""
        s = e.span
        twin = self.traces.twin_of(s.trace_id)
        pid = self._sdk_pid(s)
        # Where the kernel sampled this process's requests lately (its threshold may have risen between two
        # concurrent requests), the tightest kernel span around an SDK span may be another request's while its own was
        # held back: only a twin read off the wire is taken.
        if twin is None and pid is not None and not self._sampled_lately(pid, now):
            by_start = self._twins.get(pid)
            twins = [w for w in (by_start.starting_by(s.start_ns + Slack.CONTAIN_NS, _TWIN_SCAN) if by_start else ())
                     if w.born is None and not w.own_r and _inside(e, w)]
            twins.sort(key=lambda w: w.span.duration_ns)
            twin = twins[0] if twins else kernel_twin(self.index, e, pid)
            if twin is not None and twin.born is None:
                self._birth(twin, e, now)
        e.adopt = twin
        return twin is not None

    # --- waiting for an SDK -------------------------------------------------------------------------------

    def _wait(self, e: Entry, why: int, now: float) -> None:
        e.waiting = why
        e.wait_until = e.arrived + self.config.sdk_wait
        pid = pid_of(e.span)
        self._waiting.setdefault(pid or 0, {})[id(e)] = e
        table = self._twins if why == WAIT_TWIN else self._orphans
        by_start = table.get(pid or 0)
        if by_start is None:
            by_start = table[pid or 0] = ByStart(_still_twin if why == WAIT_TWIN else _still_orphan)
        by_start.add(e.span.start_ns, e)
        self.stats.sdk_waits += 1
        if why == WAIT_TWIN:
            self._claimants[id(e)] = e

    def _end_wait(self, e: Entry) -> None:
        """`e` waits no more; what was held back for it is looked at again."""
        if e.waiting:
            e.waiting = 0
            pid = pid_of(e.span) or 0
            by_pid = self._waiting.get(pid)
            if by_pid is not None:
                by_pid.pop(id(e), None)
                if not by_pid:
                    del self._waiting[pid]
                    self._twins.pop(pid, None)
                    self._orphans.pop(pid, None)
        if e.dependents:
            self._ready.extend(e.dependents)
        e.dependents = None

    def _end_waits(self, now: float, flush: bool) -> None:
        for pid, by_pid in list(self._waiting.items()):
            for w in list(by_pid.values()):
                twin = w.waiting == WAIT_TWIN
                if twin and not flush and self.sdk.exported_past(pid, w.span.end_ns):
                    self._end_wait(w)  # its SDK exported past it without a span of this request
                elif flush or now >= (self.sdk.twin_deadline(pid, w.arrived) if twin else w.wait_until):
                    if not flush:
                        self.stats.sdk_wait_expired += 1
                    self._end_wait(w)

    def _maybe_orphan(self, e: Entry, now: float) -> bool:
        """A kernel call with no parent, in a process whose SDK may still send a span containing it: it waits."""
        s = e.span
        if (e.released or e.waiting or e.decided is not None or e.resolved or not is_kernel(s)
                or has_wire_context(s) or s.kind == SpanKind.SERVER or now >= e.arrived + self.config.sdk_wait):
            return False
        if not self.sdk.may_have_sdk(pid_of(s), now):
            return False
        if self._parent(e) is not None:
            return False
        self._wait(e, WAIT_ORPHAN, now)
        return True

    def _blocker(self, e: Entry, now: float) -> Entry | None:
        """What `e`'s trace still depends on: a span of its group waiting for an SDK, or the request whose SDK
        started `e`'s own trace while that request's group is undecided."""
        path = self._path(e)
        top = path[-1]
        if top.decided is None and is_kernel(top.span) and not has_wire_context(top.span):
            # A group under a kernel span with no context: its trace may still come from an SDK below or above.
            self._maybe_orphan(top, now)
            for x in path:
                if x.waiting:
                    return x
                for c in x.claims or ():
                    if c.waiting and not c.released:
                        return c
        s = e.span
        if not is_kernel(s) or has_wire_context(s):
            twin = self.traces.twin_of(s.trace_id)
            if (twin is not None and twin is not e and not twin.released and twin not in path
                    and s.trace_id not in self.traces.moved):
                return twin
        return None

    def _defer(self, e: Entry, blocker: Entry, again: bool = False) -> None:
        """Hold `e` past its window until `blocker` stops waiting or leaves."""
        if blocker.dependents is None:
            blocker.dependents = []
        blocker.dependents.append(e)
        if not again:
            self._deferred_n += 1
            self._deferred.append(e)

    # --- placement ----------------------------------------------------------------------------------------

    def _parent(self, e: Entry) -> Entry | None:
        # Only found links are kept: a span with no parent yet may still get one from spans that arrive later,
        # until it leaves or spans under it have left: what went out is final.
        if not e.resolved and not e.released and e.decided is None:
            parent, link, confidence = infer_parent(self.index, e, self._sdk_resources)
            if parent is not None and not self._would_cycle(e, parent):
                e.parent, e.link, e.confidence, e.resolved = parent, link, confidence, True
        return e.parent

    def _would_cycle(self, e: Entry, parent: Entry) -> bool:
        cur: Entry | None = parent
        for _ in range(_MAX_DEPTH):
            if cur is None:
                return False
            if cur is e:
                return True
            cur = cur.parent
        return True

    def _path(self, e: Entry) -> list[Entry]:
        """`e` and its ancestors, up to the top of its group."""
        path = [e]
        cur = e
        for _ in range(_MAX_DEPTH):
            parent = self._parent(cur)
            if parent is None:
                break
            path.append(parent)
            cur = parent
        return path

    def _top(self, e: Entry) -> Entry:
        return self._path(e)[-1]

    def _certain_top(self, e: Entry) -> tuple[Entry, int]:
        """The top reachable from `e` through links no later span can change (kept as they are found), and how
        many links up that is."""
        cur, depth = e, 0
        for _ in range(_MAX_DEPTH):
            if cur.parent is None and not (cur.resolved or cur.released or cur.decided is not None):
                parent, link, confidence = infer_parent(self.index, cur, self._sdk_resources, certain_only=True)
                if parent is not None and link in CERTAIN and not self._would_cycle(cur, parent):
                    cur.parent, cur.link, cur.confidence, cur.resolved = parent, link, confidence, True
            if cur.parent is None:
                break
            cur, depth = cur.parent, depth + 1
        return cur, depth

    def _push_claims(self) -> None:
        """Requests that started a trace, or wait for their SDK, tell the top of their group so far: whatever of the
        group leaves first decides its trace with them in view."""
        for key, c in list(self._claimants.items()):
            if c.released or (c.born is None and c.waiting != WAIT_TWIN):
                del self._claimants[key]
                continue
            top, _ = self._certain_top(c)
            if top is c:
                continue
            if not is_kernel(top.span) or has_wire_context(top.span):
                # Its group is in the application's trace: a trace started below moves under it now, and an SDK
                # span still to come cannot change the group's trace.
                if c.born is not None:
                    self._move_into_group(c.born[0], top)
                self._end_wait(c)
                del self._claimants[key]
                continue
            if top.claims is None:
                top.claims = []
            if c not in top.claims:
                top.claims.append(c)

    def _group_of(self, top: Entry) -> TraceCtx:
        """The trace of the group under `top`, decided once, when the first of its spans leaves (traces.py)."""
        if top.decided is not None:
            return top.decided
        s = top.span
        ctx: TraceCtx = (s.trace_id, s.trace_state, s.flags)
        if is_kernel(s) and not has_wire_context(s):
            claims = [c for c in self._claims_of(top) if c.born is not None]
            if claims:
                best = min(claims, key=lambda c: (self._certain_top(c)[1] if c is not top else 0, c.span.start_ns))
                ctx = best.born  # type: ignore[assignment]
        top.decided = ctx
        for c in self._claims_of(top):
            if c.born is not None and c.born[0] != ctx[0]:
                self._move_into_group(c.born[0], top)
        return ctx

    def _claims_of(self, top: Entry) -> list[Entry]:
        out = list(top.claims or ())
        if top.born is not None:
            out.append(top)
        return out

    def _move_into_group(self, trace: bytes, top: Entry) -> None:
        """Trace `trace`, started by an SDK inside the group under `top`, leaves in the group's trace — unless that
        is a trace the agent minted (a kernel-only group that took no SDK trace): an application trace never moves
        into one."""
        ctx = self._group_of(top)
        if trace == ctx[0] or self._minted(top):
            return
        self.traces.move(trace, ctx)

    def _minted(self, top: Entry) -> bool:
        """The group under `top` left in a trace id the agent chose."""
        s = top.span
        return (is_kernel(s) and not has_wire_context(s) and top.decided is not None
                and self.traces.twin_of(top.decided[0]) is None)

    def _device_root(self, s: Span) -> Span:
        """The outermost span of the same device above `s` that is still indexed."""
        cur = s
        for _ in range(_MAX_DEPTH):
            up = self.index.by_id.get(cur.parent_span_id) if cur.parent_span_id else None
            if up is None or up.span.resource != s.resource:
                return cur
            cur = up.span
        return cur

    def _release(self, e: Entry, now: float) -> Span:
        self.bytes -= e.size
        s = e.span
        assert isinstance(s, Span)
        own: TraceCtx = (s.trace_id, s.trace_state, s.flags)
        own_parent = s.parent_span_id
        if is_kernel(s):
            path = self._path(e)
            parent = e.parent
            ctx = self._group_of(path[-1])
            if parent is not None:
                s.parent_span_id = parent.span.span_id
                s.attributes["helix.link"] = e.link
                if e.confidence < 1.0:
                    s.attributes["helix.link.confidence"] = e.confidence
                self.stats.links[e.link] = self.stats.links.get(e.link, 0) + 1
            if e.born is not None and e.born[0] != ctx[0]:
                self._move_into_group(e.born[0], path[-1])
            for k in _BUILDER_ONLY:
                s.attributes.pop(k, None)
        else:
            ctx = own
            if SkewAdjuster.applies(s):
                # Children of a device span are released before it (they end first): learn from the device's
                # outermost span and its node-side parent before moving any of them.
                root = self._device_root(s)
                node_parent = self.index.by_id.get(root.parent_span_id) if root.parent_span_id else None
                if node_parent is not None:
                    self.skew.observe(root, node_parent.span, now)
        final = self.traces.resolve(ctx)
        if final[0] != own[0]:
            if not is_kernel(s) or has_wire_context(s):
                # An application trace moved under the group it joined: the id the application logged stays findable.
                mark_moved(s, own[0], own_parent)
                self.stats.moved += 1
            else:
                self.stats.trace_joined += 1
            # The trace state goes with the trace: a kernel span's `ot=rv` named the randomness of the trace it leaves,
            # and a sampler reading it would keep or drop this span apart from the trace it joined.
            s.trace_id, s.trace_state, s.flags = final[0], final[1], final[2]
        if e.adopt is not None:
            self._adopt(e, s)
        self.skew.apply(s, now)
        if is_kernel(s):
            self._name_after_sdk(s)
        self.index.recontext(e, own_parent)
        e.final = s.trace_id
        self._claimants.pop(id(e), None)
        self._end_wait(e)
        e.release()
        self.stats.released += 1
        return s

    def _adopt(self, e: Entry, s: Span) -> None:
        """An SDK root server span hangs under the kernel server span of its request, when that one left in the same
        trace; else (it left in a trace the agent chose before this span came) it stays a root, linked to it."""
        twin = e.adopt
        assert twin is not None
        twin_trace = twin.final if twin.released else None
        if twin_trace is None and not twin.released:
            twin_trace = self.traces.resolve(self._group_of(self._top(twin)))[0]
        if twin_trace == s.trace_id:
            s.parent_span_id = twin.span.span_id
            s.attributes["helix.link"] = "adopted"
            self.stats.links["adopted"] = self.stats.links.get("adopted", 0) + 1
        else:
            s.links = (*s.links, Link(twin_trace or twin.span.trace_id, twin.span.span_id, "",
                                      {"helix.link.type": "kernel_server"}))
            self.stats.unjoined += 1

    def _name_after_sdk(self, s: Span) -> None:
        """A kernel span in a process whose SDK we know takes that SDK's service name."""
        pid = pid_of(s)
        resources = self._sdk_resources.get(pid) if pid is not None else None
        if not resources or len(resources) != 1:
            return
        (sdk_resource,) = resources
        name = sdk_resource.service_name
        if name != s.resource.service_name:
            s.resource = self._renamed.get((s.resource, name)) or self._rename(s.resource, name)

    def _rename(self, resource: Resource, name: str) -> Resource:
        attrs = resource.as_dict()
        attrs["service.name"] = name
        renamed = Resource.of(attrs)
        if len(self._renamed) > 4096:
            self._renamed.clear()
        self._renamed[(resource, name)] = renamed
        return renamed

    @property
    def memory_bytes(self) -> int:
        """Held spans plus the compact records of released spans still indexed (an estimate)."""
        return self.bytes + self.index_bytes

    @property
    def index_bytes(self) -> int:
        """The compact records of released spans still indexed for late joins, and the traces remembered for late
        SDK spans (an estimate)."""
        return (max(0, len(self.index) - len(self)) * _RELEASED_BYTES + self.index.parent_links * _PARENT_LINK_BYTES
                + self.traces.entries * _TRACE_BYTES)

    def index_excess(self, bound: int) -> int:
        """How many released spans to forget for their records, client spans' wire-twin slots included, to fit in
        `bound` bytes."""
        released = len(self.index) - len(self)
        if released <= 0:
            return 0
        each = _RELEASED_BYTES + _PARENT_LINK_BYTES * self.index.parent_links / released
        return released - int(bound // each)

    @property
    def deferred(self) -> int:
        """Spans held past their window, waiting with what their trace depends on."""
        return self._deferred_n

    def held_spans(self) -> Iterator[Span]:
        """Every span held now (in its window, or deferred past it)."""
        for e in self.held:
            if not e.released:
                yield e.span  # type: ignore[misc]
        for e in self._deferred:
            if not e.released:
                yield e.span  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.held) + self._deferred_n


def _still_twin(e: Entry) -> bool:
    return e.waiting == WAIT_TWIN


def _still_orphan(e: Entry) -> bool:
    return e.waiting == WAIT_ORPHAN


def _inside(inner: Entry, outer: Entry) -> bool:
    """`inner` lies within `outer` in time (with the tolerance of rules.Slack)."""
    i, o = inner.span, outer.span
    return o.start_ns - Slack.CONTAIN_NS <= i.start_ns and i.end_ns <= o.end_ns + Slack.CONTAIN_NS and inner is not outer


class _RecentKeys:
    """The last `capacity` to `2 * capacity` keys seen, in two generations of open-addressed tables.

    Keys are 64-bit hashes of (trace id, span id) stored in flat arrays: no Python object per key. Millions of
    small long-lived objects allocated between short-lived spans would pin the interpreter's memory arenas, so
    RSS would stay high long after the spans are gone. At 65,536 ids a false "duplicate" has a chance of about
    1 in 10^10.
    """

    __slots__ = ("capacity", "_mask", "_new", "_old", "_count")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        size = 1 << max(4, (2 * self.capacity - 1).bit_length())  # at most half full: short probe runs
        self._mask = size - 1
        self._new = array("Q", bytes(8 * size))
        self._old = array("Q", bytes(8 * size))
        self._count = 0

    def _slot(self, table: array[int], key: int) -> int:
        """Index of `key` in `table`, or of the empty slot where it would go."""
        mask = self._mask
        i = key & mask
        while True:
            v = table[i]
            if v == key or v == 0:
                return i
            i = (i + 1) & mask

    def add(self, key: int) -> bool:
        """Remember `key`; False when it was already remembered."""
        key = (key & 0xFFFF_FFFF_FFFF_FFFF) or 1  # 0 marks an empty slot
        if self._old[self._slot(self._old, key)] == key:
            return False
        table = self._new
        i = self._slot(table, key)
        if table[i] == key:
            return False
        table[i] = key
        self._count += 1
        if self._count >= self.capacity:
            # The retired table is zeroed in place and reused: allocating a new one made a periodic memory spike
            # the governor reads as pressure (docs/benchmarks.md, memory budget).
            retired = self._old
            ctypes.memset(retired.buffer_info()[0], 0, len(retired) * retired.itemsize)
            self._old, self._new = table, retired
            self._count = 0
        return True

    def __len__(self) -> int:
        return self._count + sum(1 for v in self._old if v)


class _HeldSpans:
    """Spans held for their window, as the memory governor bounds them (Bounded): a lower bound releases spans
    before their window ends, unstitched but never lost."""

    __slots__ = ("_asm",)

    def __init__(self, asm: Assembler) -> None:
        self._asm = asm

    @property
    def bytes(self) -> int:
        """Bytes of the spans held."""
        return self._asm.bytes

    def set_bound(self, n: int) -> int:
        """Hold at most `n` bytes from the next call of `process` on; nothing is dropped."""
        self._asm.max_bytes = n
        return 0


class _LateJoins:
    """Released spans kept indexed for late joins, as the memory governor budgets them (Budgeted): forgetting them
    loses no span (they were sent on), only the late joins they could still have had."""

    __slots__ = ("_asm",)

    def __init__(self, asm: Assembler) -> None:
        self._asm = asm

    @property
    def bytes(self) -> int:
        """Bytes of their compact records."""
        return self._asm.index_bytes

    def set_bound(self, n: int) -> int:
        """Keep at most `n` bytes of them, the oldest forgotten now; returns how many went."""
        asm = self._asm
        asm.max_index_bytes = n
        excess = asm.index_excess(n)
        return asm.index.expire(float("inf"), at_most=excess) if excess > 0 else 0

    def drop_idle(self) -> int:
        """Forget the released spans no late span can still join: those that arrived more than `sdk_wait` ago (an SDK
        span comes within its export delay and retries, the bound the hold rule waits for); returns how many went."""
        asm = self._asm
        return asm.index.expire(asm.now - max(asm.config.sdk_wait, asm.config.window))

    def drop_all(self) -> int:
        """Forget every released span; returns how many went."""
        return self._asm.index.expire(float("inf"))


class _StitchState:
    """What the assembler remembers beyond the spans (traces SDKs started and where moved ones went, which process
    each SDK runs in), as the memory governor budgets it (a StatePart): each table is already capped in entries; the
    byte bound forgets only idle entries, oldest first, counted (`state_evicted`): those older than IDLE_S (late SDK
    spans come within the SDK's export delay and retries), and SDK processes whose SDK exported nothing for as long.
    Live entries go only when the governor finds the budget itself exceeded (`evict_live`): what the kernel learned
    off the wire first, then SDK-started traces, moved traces, SDK processes last. A late SDK span whose trace was
    forgotten is no longer moved or joined: it leaves in the trace its SDK gave it."""

    __slots__ = ("_asm", "bound", "now", "evicted", "_marks")

    # Bytes per entry, estimated: an SDK-started trace keeps its request's Entry and Released record alive; a moved
    # trace, a wire span id or an SDK resource is a key and a small value.
    BORN, MOVED, REMEMBERED = _RELEASED_BYTES + 96, 240, 144
    IDLE_S = 30.0

    def __init__(self, asm: Assembler) -> None:
        self._asm = asm
        self.bound = 0  # 0: only the entry caps
        self.now = -math.inf  # the assembler's clock at the last enforce()
        self.evicted = {"idle": 0, "active": 0, "open": 0}
        # (time, newest key then) of the tables kept in insertion order (moved traces, wire span ids): an entry
        # before a mark older than IDLE_S was inserted before it.
        self._marks: deque[tuple[float, bytes | None, bytes | None]] = deque()

    def _tables(self) -> tuple[tuple[OrderedDict[Any, Any], int], ...]:
        asm = self._asm
        return ((asm.traces.born, self.BORN), (asm.traces.moved, self.MOVED), (asm._kernel_by_wire, self.REMEMBERED),
                (asm._pid_of_resource, self.REMEMBERED))

    @property
    def bytes(self) -> int:
        """Estimated bytes of the stitching state."""
        return sum(len(t) * size for t, size in self._tables())

    @property
    def live_bytes(self) -> int:
        """Estimated bytes of the entries that are not idle."""
        idle = self._idle()
        return self.bytes - sum(len(keys) * size for keys, (_, size) in zip(idle, self._tables()))

    def set_bound(self, n: int) -> int:
        """Keep at most about `n` bytes of idle entries, the oldest forgotten now; no span is dropped."""
        self.bound = n
        self._forget_idle(n)
        return 0

    def drop_all(self) -> int:
        """Forget every idle entry; no span is dropped."""
        self._forget_idle(0)
        return 0

    drop_idle = drop_all  # the drop step takes idle entries only, first or not

    def enforce(self, now: float | None = None) -> None:
        """Mark the time (the assembler's clock), then forget idle entries if the state passed its bound."""
        if now is not None:
            self._mark(now)
        if self.bound and self.bytes > self.bound:
            self._forget_idle(self.bound)

    def evict_live(self, n: int) -> int:
        """The budget itself is exceeded: forget down to `n` bytes, idle entries first, then live ones: wire span ids,
        SDK-started traces (those whose request is still held counted `open`), moved traces, SDK processes. No span
        is dropped."""
        self._forget_idle(n)
        asm = self._asm
        born, moved, wire, resources = (t for t, _ in self._tables())
        for table, size in ((wire, self.REMEMBERED), (born, self.BORN), (moved, self.MOVED),
                            (resources, self.REMEMBERED)):
            while table and self.bytes > n:
                _, value = table.popitem(last=False)
                reason = "open" if table is born and not value.released else "active"
                self.evicted[reason] += 1
                asm.stats.state_evicted += 1
        return 0

    def _mark(self, now: float) -> None:
        self.now = now
        marks = self._marks
        if not marks or now - marks[-1][0] >= 1.0:
            marks.append((now, _newest(self._asm.traces.moved), _newest(self._asm._kernel_by_wire)))
        while len(marks) > 1 and marks[1][0] <= now - self.IDLE_S:
            marks.popleft()  # the newest mark older than IDLE_S is the one needed

    def _idle(self) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """The idle keys of each table, oldest first."""
        asm, cutoff = self._asm, self.now - self.IDLE_S
        born, moved, wire, resources = (t for t, _ in self._tables())
        old_born = [k for k, _ in takewhile(lambda kv: kv[1].arrived <= cutoff, born.items())]
        mark = self._marks[0] if self._marks and self._marks[0][0] <= cutoff else None
        old_moved = _up_to(moved, mark[1]) if mark is not None else []
        old_wire = _up_to(wire, mark[2]) if mark is not None else []
        quiet = [r for r, pid in resources.items() if not asm.sdk.exported_since(pid, cutoff)]
        return old_born, old_moved, old_wire, quiet

    def _forget_idle(self, n: int) -> None:
        if self.bytes <= n:
            return
        for keys, (table, _) in zip(self._idle(), self._tables()):
            for key in keys:
                if self.bytes <= n:
                    return
                del table[key]
                self.evicted["idle"] += 1
                self._asm.stats.state_evicted += 1


def _newest(table: OrderedDict[bytes, Any]) -> bytes | None:
    return next(reversed(table), None) if table else None


def _up_to(table: OrderedDict[bytes, Any], key: bytes | None) -> list[bytes]:
    """The keys of `table` from its oldest up to `key` (included); none if `key` is no longer there."""
    if key is None or key not in table:
        return []
    out = []
    for k in table:
        out.append(k)
        if k == key:
            break
    return out


def _is_lone_connect(s: Span) -> bool:
    return (s.name == "tcp.connect" and not s.parent_span_id and s.status_code != StatusCode.ERROR
            and is_kernel(s))
