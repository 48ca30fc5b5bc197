"""Recent spans indexed the ways the stitching rules look them up: by id, thread, process, connection, topic."""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from ..model import Resource, Source, Span, SpanKind

__all__ = ["SpanIndex", "Entry", "Released", "TraceCtx", "conn_key", "is_kernel", "has_wire_context", "pid_of",
           "tid_of", "WAIT_TWIN", "WAIT_ORPHAN", "STREAM_ID"]

ConnKey = tuple[str, int, str, int]  # (local addr, local port, peer addr, peer port)
TraceCtx = tuple[bytes, str, int]  # trace id, trace state, trace flags

# Why a kernel span waits for its process's SDK (Entry.waiting; edge/assembler/hold.py).
WAIT_TWIN = 1  # a request served without context whose SDK span, still to come, says which trace it is in
WAIT_ORPHAN = 2  # a call with no parent found, that an SDK span still to come may contain


def is_kernel(span: Span) -> bool:
    """Spans the probes made (the flesh); everything else is SDK skeleton."""
    return span.source is Source.EBPF


def pid_of(span: Span) -> int | None:
    """The process of a span: its attribute, else its resource's `process.pid`."""
    v = span.attributes.get("process.pid")
    if isinstance(v, int):
        return v
    for k, rv in span.resource.attributes:
        if k == "process.pid" and isinstance(rv, int):
            return rv
    return None


def has_wire_context(span: Span | Released) -> bool:
    """A kernel span whose trace context was read off the wire (its trace id and parent are the application's)."""
    return span.attributes.get("helix.context_from") == "wire"


def tid_of(span: Span) -> int | None:
    """The thread that made a kernel span."""
    v = span.attributes.get("thread.id")
    return v if isinstance(v, int) else None


def conn_key(span: Span) -> ConnKey | None:
    """The connection a kernel span travelled on, seen from its own side."""
    a = span.attributes
    la, lp, pa, pp = (a.get("network.local.address"), a.get("network.local.port"),
                      a.get("network.peer.address"), a.get("network.peer.port"))
    if isinstance(la, str) and isinstance(lp, int) and isinstance(pa, str) and isinstance(pp, int):
        return (la, lp, pa, pp)
    return None


STREAM_ID = "helix.http2.stream_id"  # an HTTP/2 stream's id: the same on both ends of the connection
# What the rules and the assembler read from a span after it has left (see Released).
_KEPT_ATTRIBUTES = ("helix.context_from", "messaging.destination.name", "helix.clock.adjusted_ns", STREAM_ID)
_NO_ATTRIBUTES: dict[str, object] = {}  # shared by every Released without kept attributes; never written to


class Released:
    """What the index keeps of a span once it has left the assembler: times, ids and the few attributes late
    lookups read, not its payload.

    The index remembers released spans for `assembler.memory` seconds so that late spans can still join them; at
    thousands of spans per second, holding the whole spans (≈1.7 KiB each as decoded) was most of the agent's
    memory. A Released is ≈0.2 KiB and lets the span itself be freed as soon as the uplink has encoded it.
    """

    __slots__ = ("trace_id", "span_id", "parent_span_id", "name", "start_ns", "end_ns", "kind", "source",
                 "resource", "trace_state", "flags", "attributes")

    def __init__(self, s: Span) -> None:
        self.trace_id = s.trace_id
        self.span_id = s.span_id
        self.parent_span_id = s.parent_span_id
        self.name = "tcp.connect" if s.name == "tcp.connect" else ""  # the only name a rule compares
        self.start_ns = s.start_ns
        self.end_ns = s.end_ns
        self.kind = s.kind
        self.source = s.source
        self.resource = s.resource  # shared with every span of the same resource
        self.trace_state = s.trace_state
        self.flags = s.flags
        a = s.attributes
        kept = {k: a[k] for k in _KEPT_ATTRIBUTES if k in a}
        self.attributes = kept or _NO_ATTRIBUTES

    @property
    def duration_ns(self) -> int:
        """End minus start, never negative."""
        return max(0, self.end_ns - self.start_ns)


@dataclass(slots=True)
class Entry:
    """A span while it is indexed: when it arrived, the parent the rules chose for it (if any), and what decides the
    trace of the spans joined under it (edge/assembler/traces.py, hold.py)."""

    span: Span | Released
    arrived: float
    parent: Entry | None = None
    link: str = ""  # which rule made the parent link ("" for an explicit or no parent)
    confidence: float = 1.0
    resolved: bool = False
    released: bool = False
    size: int = 0
    delivered_to: set[int] | None = None  # for a publish: subscriber pids already matched to it
    born: TraceCtx | None = None  # a kernel server span: the trace its process's SDK started for this request
    claims: list[Entry] | None = None  # requests below this span that started a trace, or wait for their SDK
    decided: TraceCtx | None = None  # the top of a joined group: the trace its spans leave in, fixed at the first
    final: bytes | None = None  # the trace id it left with
    waiting: int = 0  # WAIT_TWIN or WAIT_ORPHAN while it waits for its process's SDK
    wait_until: float = 0.0
    dependents: list[Entry] | None = None  # spans held back until this one stops waiting
    adopt: Entry | None = None  # an SDK root server span: the kernel server span of the same request
    # A kernel span of a context-less exchange the kernel kept on randomness it chose (sampling on): the exchanges
    # around it in its process were kept or held back each on their own, so timing cannot tell which is whose.
    own_r: bool = False

    def release(self) -> None:
        """The span has left: keep only what lookups need (the entry stays indexed until it expires)."""
        self.released = True
        if isinstance(self.span, Span):
            self.span = Released(self.span)


class _Bucket(list):  # type: ignore[type-arg]
    """One key's entries in an index table, oldest first, knowing its key (expiry deletes it once empty)."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        super().__init__()
        self.key = key


@dataclass
class SpanIndex:
    """Bounded in time by the caller, which calls `expire(before)`; every lookup is over what is indexed."""

    by_id: dict[bytes, Entry] = field(default_factory=dict)
    servers_by_thread: dict[tuple[int, int], list[Entry]] = field(default_factory=lambda: defaultdict(list))
    servers_by_pid: dict[int, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    consumers_by_thread: dict[tuple[int, int], list[Entry]] = field(default_factory=lambda: defaultdict(list))
    clients_by_conn: dict[ConnKey, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    # The same client spans by connection, then by the parent they name (that bytes object itself: no key made per
    # span), a list only where several name one: a server span with wire context finds its other end in one lookup,
    # where a pass over every client span of a keep-alive connection cost each request time in proportion to the
    # connection's rate (docs/benchmarks.md). Spans naming no parent are not in it.
    clients_by_parent: dict[ConnKey, dict[bytes, Entry | list[Entry]]] = field(default_factory=dict)
    parent_links: int = 0  # client spans in clients_by_parent: their slots there are counted in the memory budget
    producers_by_topic: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    sdk_by_resource: dict[Resource, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    sdk_servers_by_parent: dict[bytes, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    # Kernel calls carrying context they did not receive, by the request that made them (helix.cause): where an SDK
    # started a trace, seen before the server span of that request arrives.
    wire_calls_by_cause: dict[bytes, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    order: deque[Entry] = field(default_factory=deque)
    # Per table, the bucket each of its entries went into, in arrival order: expiry takes the heads of these, work in
    # proportion to what expires, where a pass over every key of every table cost in proportion to what is held.
    _queues: tuple[deque[_Bucket], ...] = field(default_factory=lambda: tuple(deque() for _ in range(8)))

    def _put(self, t: int, table: dict[Any, list[Entry]], key: Any, e: Entry) -> None:
        bucket = table.get(key)
        if bucket is None:
            bucket = table[key] = _Bucket(key)
        bucket.append(e)
        self._queues[t].append(bucket)  # type: ignore[arg-type]

    def add(self, e: Entry) -> None:
        """Index one span."""
        s = e.span
        self.by_id[s.span_id] = e
        self.order.append(e)
        if is_kernel(s):
            pid, tid = pid_of(s), tid_of(s)
            if s.kind == SpanKind.SERVER and pid is not None:
                self._put(1, self.servers_by_pid, pid, e)
                if tid is not None:
                    self._put(0, self.servers_by_thread, (pid, tid), e)
            elif s.kind == SpanKind.CONSUMER and pid is not None and tid is not None:
                self._put(2, self.consumers_by_thread, (pid, tid), e)
            if s.kind == SpanKind.CLIENT:
                key = conn_key(s)
                if key is not None:
                    self._put(3, self.clients_by_conn, key, e)
                    self._by_parent_add(key, e)
                cause = s.attributes.get("helix.cause")
                if isinstance(cause, bytes) and has_wire_context(s):
                    self._put(7, self.wire_calls_by_cause, cause, e)
        else:
            self._put(5, self.sdk_by_resource, s.resource, e)
            if s.kind == SpanKind.SERVER and s.parent_span_id:
                self._put(6, self.sdk_servers_by_parent, s.parent_span_id, e)
        if s.kind == SpanKind.PRODUCER:
            topic = s.attributes.get("messaging.destination.name")
            if isinstance(topic, str):
                self._put(4, self.producers_by_topic, topic, e)

    def clients_in_context(self, key: ConnKey, trace_id: bytes, parent_span_id: bytes) -> list[Entry]:
        """Kernel client spans of connection `key` whose trace and parent are these now."""
        if not parent_span_id:
            return [c for c in self.clients_by_conn.get(key, ())
                    if c.span.trace_id == trace_id and not c.span.parent_span_id]
        parents = self.clients_by_parent.get(key)
        had = parents.get(parent_span_id) if parents is not None else None
        if had is None:
            return []
        if type(had) is list:
            return [c for c in had if c.span.trace_id == trace_id]
        return [had] if had.span.trace_id == trace_id else []  # type: ignore[union-attr]

    def recontext(self, e: Entry, parent_span_id: bytes) -> None:
        """`e`'s span was indexed naming this parent and may name another now (the assembler sets it as it releases
        the span): look it up by what it names."""
        s = e.span
        if s.parent_span_id == parent_span_id or s.kind != SpanKind.CLIENT or not is_kernel(s):
            return
        key = conn_key(s)
        if key is not None:
            self._by_parent_remove(key, parent_span_id, e)
            self._by_parent_add(key, e)

    def _by_parent_add(self, key: ConnKey, e: Entry) -> None:
        parent = e.span.parent_span_id
        if not parent:
            return
        parents = self.clients_by_parent.get(key)
        if parents is None:
            parents = self.clients_by_parent[key] = {}
        had = parents.get(parent)
        self.parent_links += 1
        if had is None:
            parents[parent] = e
        elif type(had) is list:
            had.append(e)
        else:
            parents[parent] = [had, e]  # type: ignore[list-item]

    def _by_parent_remove(self, key: ConnKey, parent: bytes, e: Entry) -> None:
        parents = self.clients_by_parent.get(key)
        had = parents.get(parent) if parents is not None and parent else None
        if had is None:
            return
        assert parents is not None
        if had is e:
            del parents[parent]
            self.parent_links -= 1
        elif type(had) is list:
            rest = [x for x in had if x is not e]
            self.parent_links -= len(had) - len(rest)
            if len(rest) > 1:
                parents[parent] = rest
            elif rest:
                parents[parent] = rest[0]
            else:
                del parents[parent]
        if not parents:
            del self.clients_by_parent[key]

    def expire(self, before: float, at_most: int | None = None) -> int:
        """Forget released spans that arrived before `before` (at most `at_most` of them, oldest first); returns
        how many went. Spans still held (waiting for their SDK) are stepped over and stay."""
        n = 0
        order = self.order
        limit = len(order) if at_most is None else at_most
        kept: list[Entry] = []
        gone: set[int] = set()
        while order and n < limit and order[0].arrived < before:
            e = order.popleft()
            if not e.released:
                kept.append(e)
                if len(kept) > 4096:
                    break  # a long run of held spans: the rest waits for the next expiry
                continue
            if self.by_id.get(e.span.span_id) is e:
                del self.by_id[e.span.span_id]
            gone.add(id(e))
            n += 1
        order.extendleft(reversed(kept))
        if n and not kept:
            # What went is the oldest of `order`, and every table's lists keep `order`'s order: it is their heads.
            self._drop_heads(gone)
        elif n:
            self._rebuild()
        return n

    def _tables(self) -> tuple[dict[Any, list[Entry]], ...]:
        # in the order of _queues
        return (self.servers_by_thread, self.servers_by_pid, self.consumers_by_thread, self.clients_by_conn,
                self.producers_by_topic, self.sdk_by_resource, self.sdk_servers_by_parent, self.wire_calls_by_cause)

    def _drop_heads(self, gone: set[int]) -> None:
        """Take the entries in `gone` off the front of the tables' lists (where expiry found them all)."""
        for t, table in enumerate(self._tables()):
            queue = self._queues[t]
            counts: dict[int, list[Any]] = {}  # id(bucket) -> [bucket, entries gone from its head]
            while queue:
                bucket = queue[0]
                seen = counts.get(id(bucket))
                at = seen[1] if seen is not None else 0
                if at >= len(bucket) or id(bucket[at]) not in gone:
                    break
                queue.popleft()
                if seen is None:
                    counts[id(bucket)] = [bucket, 1]
                else:
                    seen[1] += 1
            for bucket, k in counts.values():
                if table is self.clients_by_conn:
                    for x in bucket[:k]:
                        self._by_parent_remove(bucket.key, x.span.parent_span_id, x)
                del bucket[:k]
                if not bucket and table.get(bucket.key) is bucket:  # a bucket popped whole is no longer there
                    del table[bucket.key]

    def _rebuild(self) -> None:
        """Drop every entry no longer in `order` from every table, and queue the rest again (after an expiry that
        stepped over held spans, so that what went is not the heads)."""
        pos = {id(x): i for i, x in enumerate(self.order)}
        for key, clients in self.clients_by_conn.items():
            for x in clients:
                if id(x) not in pos:
                    self._by_parent_remove(key, x.span.parent_span_id, x)
        for t, table in enumerate(self._tables()):
            slots: list[tuple[int, _Bucket]] = []
            for key in list(table):
                bucket = _Bucket(key)
                bucket.extend(x for x in table[key] if id(x) in pos)
                if bucket:
                    table[key] = bucket
                    slots.extend((pos[id(x)], bucket) for x in bucket)
                else:
                    del table[key]
            slots.sort(key=lambda p: p[0])
            self._queues[t].clear()
            self._queues[t].extend(b for _, b in slots)

    def __len__(self) -> int:
        return len(self.order)
