"""Assembler stage: joins SDK spans (the skeleton) and kernel spans (the flesh) into one trace.

Every span waits `window` seconds after it arrives, so that the spans it relates to — which often end, and
so arrive, later (a server span ends after the calls it made) — are there when it is placed. At release a
kernel span without a parent gets one from the rules in rules.py, and takes the trace id of the top of its
chain: context read off the wire or given by an SDK wins; a request with no cause anywhere keeps the trace
id it was minted with. SDK spans are never re-parented. Spans stay indexed `memory` seconds for lookups.

Also here: redeliveries (MQTT QoS 1, OTLP retries) are dropped, span ids that collide across sources are
re-minted on the kernel side, device clock skew is corrected, and the held spans are bounded in count and
bytes (what must leave early is released unstitched and counted, never dropped).
"""
from __future__ import annotations

import ctypes
import time
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ..model import Resource, Span, SpanKind, StatusCode, new_span_id
from .clock import SkewAdjuster
from .config import AssemblerConfig
from .index import Entry, SpanIndex, is_kernel, pid_of
from .rules import infer_parent, kernel_twin

__all__ = ["Assembler", "AssemblerConfig", "AssemblerStats"]

_MAX_DEPTH = 64
# One released span in the index: its Entry and Released record, a kept-attributes dict for kernel spans, and its
# slots in the index tables (measured with tracemalloc on the workload of bench/memory_budget.py).
_RELEASED_BYTES = 560


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


class Assembler:
    """Holds spans for a short window, infers parents and trace ids, and releases them in arrival order."""

    def __init__(self, config: AssemblerConfig | None = None) -> None:
        self.config = config or AssemblerConfig()
        self.max_bytes = self.config.max_bytes
        self.max_index_bytes = self.config.max_index_bytes
        # The two parts of the memory budget: spans held for their window, and released spans kept for late joins.
        self.held_budget = _HeldSpans(self)
        self.index_budget = _LateJoins(self)
        self.index = SpanIndex()
        self.held: deque[Entry] = deque()
        self.bytes = 0
        self.stats = AssemblerStats()
        self.skew = SkewAdjuster()
        self._seen = _RecentKeys(self.config.dedup_memory)
        self._sdk_resources: dict[int, set[Resource]] = {}  # pid -> resources of SDKs running in it
        self._kernel_server_by_wire: dict[bytes, int] = {}  # wire parent span id -> pid of the kernel server
        self._last_expire = 0.0
        self._renamed: dict[tuple[Resource, str], Resource] = {}
        # Traces an SDK started because context was lost on an uninstrumented hop, and the trace they join.
        self._remap: OrderedDict[bytes, bytes] = OrderedDict()
        self._adopt: dict[bytes, Entry] = {}  # SDK root span id -> its caller-side parent entry
        self._adoptable: dict[bytes, Entry] = {}  # held SDK root server spans not adopted (yet)

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

    def _learn_sdk_process(self, e: Entry) -> None:
        s = e.span
        if is_kernel(s):
            if s.kind == SpanKind.SERVER and s.attributes.get("helix.context_from") == "wire" and s.parent_span_id:
                pid = pid_of(s)
                if pid is not None:
                    by_wire = self._kernel_server_by_wire
                    by_wire[s.parent_span_id] = pid
                    if len(by_wire) > self.config.dedup_memory:
                        del by_wire[next(iter(by_wire))]  # the oldest: its SDK span came long ago, or never will
                    for sdk in self.index.sdk_servers_by_parent.get(s.parent_span_id, ()):
                        self._sdk_resources.setdefault(pid, set()).add(sdk.span.resource)
            return
        pid = pid_of(s)
        if pid is None and s.kind == SpanKind.SERVER and s.parent_span_id:
            pid = self._kernel_server_by_wire.get(s.parent_span_id)
        if pid is not None:
            self._sdk_resources.setdefault(pid, set()).add(s.resource)

    def process(self, spans: list[Span], now: float | None = None, flush: bool = False) -> list[Span]:
        """Take new spans; return those whose window has passed (all of them when `flush`)."""
        now = time.monotonic() if now is None else now
        for s in spans:
            self.stats.spans_in += 1
            if self._is_duplicate(s):
                continue
            self._avoid_collision(s)
            e = Entry(s, now, size=s.approx_size())
            self.index.add(e)
            self._learn_sdk_process(e)
            self.held.append(e)
            if not is_kernel(s) and s.kind == SpanKind.SERVER and not s.parent_span_id:
                self._adoptable[s.span_id] = e
            self.bytes += e.size
        # An SDK trace restarted after an uninstrumented hop is adopted as soon as the caller's side is known,
        # before any span of it leaves: the spans it holds are then all relabelled alike.
        for sid, entry in list(self._adoptable.items()):
            if entry.released or self._try_adopt(entry):
                del self._adoptable[sid]
        out: list[Span] = []
        cfg = self.config
        while self.held and (len(self.held) > cfg.max_spans or self.bytes > self.max_bytes):
            self.stats.evicted_early += 1
            out.append(self._release(self.held.popleft(), now))
        while self.held and (flush or self.held[0].arrived + cfg.window <= now):
            span = self._release(self.held.popleft(), now)
            if _is_lone_connect(span):
                # A successful connect that no request used (gRPC, TLS, pooled) would be a one-span trace:
                # noise for a trace view. Failed connects are kept, they explain errors.
                self.stats.lone_connects += 1
                continue
            out.append(span)
        if now - self._last_expire >= 1.0 or flush:
            self._last_expire = now
            self.index.expire(now - cfg.memory)
        keep = self.max_index_bytes // _RELEASED_BYTES
        excess = len(self.index) - len(self.held) - keep
        if excess > 0:
            # At high rates `memory` seconds of released spans outgrow the bound: the oldest late joins go first,
            # a tenth more than needed so that the index tables are rebuilt once per tenth, not once per batch.
            self.stats.index_trimmed += self.index.expire(float("inf"), at_most=excess + keep // 10)
        return out

    # --- placement ----------------------------------------------------------------------------------------

    def _parent(self, e: Entry) -> Entry | None:
        # Only found links are kept: a span with no parent yet may still get one from spans that arrive later,
        # until it leaves: what went out with it is final, and a late guess would give its children another trace.
        if not e.resolved and not e.released:
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

    def _top(self, e: Entry) -> Entry:
        cur = e
        for _ in range(_MAX_DEPTH):
            parent = self._parent(cur)
            if parent is None:
                return cur
            cur = parent
        return cur

    def _try_adopt(self, e: Entry) -> bool:
        """An SDK root server span whose request the kernel saw arrive from a caller joins the caller's trace.

        The SDK started a new trace because an uninstrumented caller passed no context; the kernel server
        span of the same request (same process, around it) knows the caller by its connection. The SDK span
        keeps its own id and subtree; its trace id (and that of every span of its trace) becomes the
        caller's, and its parent the caller's client span.
        """
        if e.span.span_id in self._adopt:
            return True
        pid = pid_of(e.span)
        if pid is None:
            return False
        twin = kernel_twin(self.index, e, pid)
        caller = self._parent(twin) if twin is not None else None
        if caller is None:
            return False
        self._adopt[e.span.span_id] = caller
        self._remap[e.span.trace_id] = self._top(caller).span.trace_id
        while len(self._remap) > self.config.dedup_memory:
            self._remap.popitem(last=False)
        if len(self._adopt) > self.config.dedup_memory:
            self._adopt.pop(next(iter(self._adopt)))
        return True

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
        parent = self._parent(e)
        if parent is not None:
            top = self._top(e)
            if s.trace_id != top.span.trace_id:
                self.stats.trace_joined += 1
            s.trace_id = top.span.trace_id
            s.trace_state = top.span.trace_state or s.trace_state
            s.flags = top.span.flags
            s.parent_span_id = parent.span.span_id
            s.attributes["helix.link"] = e.link
            if e.confidence < 1.0:
                s.attributes["helix.link.confidence"] = e.confidence
            self.stats.links[e.link] = self.stats.links.get(e.link, 0) + 1
        elif SkewAdjuster.applies(s):
            # Children of a device span are released before it (they end first): learn from the device's
            # outermost span and its node-side parent before moving any of them.
            root = self._device_root(s)
            node_parent = self.index.by_id.get(root.parent_span_id) if root.parent_span_id else None
            if node_parent is not None:
                self.skew.observe(root, node_parent.span, now)
        if not is_kernel(s) and s.kind == SpanKind.SERVER and not s.parent_span_id and self._try_adopt(e):
            caller = self._adopt.pop(s.span_id)
            s.parent_span_id = caller.span.span_id
            s.attributes["helix.link"] = "adopted"
            self.stats.links["adopted"] = self.stats.links.get("adopted", 0) + 1
        if s.trace_id in self._remap:
            for _ in range(8):  # a trace can be adopted by one that was itself adopted
                if s.trace_id not in self._remap:
                    break
                s.trace_id = self._remap[s.trace_id]
            self.stats.trace_joined += 1
        self.skew.apply(s, now)
        if is_kernel(s):
            self._name_after_sdk(s)
        e.release()
        self.stats.released += 1
        return s

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
        """The compact records of released spans still indexed for late joins (an estimate)."""
        return max(0, len(self.index) - len(self.held)) * _RELEASED_BYTES

    def __len__(self) -> int:
        return len(self.held)


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
        excess = len(asm.index) - len(asm.held) - n // _RELEASED_BYTES
        return asm.index.expire(float("inf"), at_most=excess) if excess > 0 else 0

    def drop_all(self) -> int:
        """Forget every released span; returns how many went."""
        return self._asm.index.expire(float("inf"))


def _is_lone_connect(s: Span) -> bool:
    return (s.name == "tcp.connect" and not s.parent_span_id and s.status_code != StatusCode.ERROR
            and is_kernel(s))
