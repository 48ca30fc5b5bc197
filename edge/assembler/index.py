"""Recent spans indexed the ways the stitching rules look them up: by id, thread, process, connection, topic."""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

from ..model import Resource, Source, Span, SpanKind

__all__ = ["SpanIndex", "Entry", "Released", "conn_key", "is_kernel", "pid_of", "tid_of"]

ConnKey = tuple[str, int, str, int]  # (local addr, local port, peer addr, peer port)


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


# What the rules and the assembler read from a span after it has left (see Released).
_KEPT_ATTRIBUTES = ("helix.context_from", "messaging.destination.name", "helix.clock.adjusted_ns")
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
    """A span while it is indexed: when it arrived, and the parent the rules chose for it (if any)."""

    span: Span | Released
    arrived: float
    parent: Entry | None = None
    link: str = ""  # which rule made the parent link ("" for an explicit or no parent)
    confidence: float = 1.0
    resolved: bool = False
    released: bool = False
    size: int = 0
    delivered_to: set[int] | None = None  # for a publish: subscriber pids already matched to it

    def release(self) -> None:
        """The span has left: keep only what lookups need (the entry stays indexed until it expires)."""
        self.released = True
        if isinstance(self.span, Span):
            self.span = Released(self.span)


@dataclass
class SpanIndex:
    """Bounded in time by the caller, which calls `expire(before)`; every lookup is over what is indexed."""

    by_id: dict[bytes, Entry] = field(default_factory=dict)
    servers_by_thread: dict[tuple[int, int], list[Entry]] = field(default_factory=lambda: defaultdict(list))
    servers_by_pid: dict[int, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    consumers_by_thread: dict[tuple[int, int], list[Entry]] = field(default_factory=lambda: defaultdict(list))
    clients_by_conn: dict[ConnKey, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    producers_by_topic: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    sdk_by_resource: dict[Resource, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    sdk_servers_by_parent: dict[bytes, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    order: deque[Entry] = field(default_factory=deque)

    def add(self, e: Entry) -> None:
        """Index one span."""
        s = e.span
        self.by_id[s.span_id] = e
        self.order.append(e)
        if is_kernel(s):
            pid, tid = pid_of(s), tid_of(s)
            if s.kind == SpanKind.SERVER and pid is not None:
                self.servers_by_pid[pid].append(e)
                if tid is not None:
                    self.servers_by_thread[(pid, tid)].append(e)
            elif s.kind == SpanKind.CONSUMER and pid is not None and tid is not None:
                self.consumers_by_thread[(pid, tid)].append(e)
            if s.kind == SpanKind.CLIENT:
                key = conn_key(s)
                if key is not None:
                    self.clients_by_conn[key].append(e)
        else:
            self.sdk_by_resource[s.resource].append(e)
            if s.kind == SpanKind.SERVER and s.parent_span_id:
                self.sdk_servers_by_parent[s.parent_span_id].append(e)
        if s.kind == SpanKind.PRODUCER:
            topic = s.attributes.get("messaging.destination.name")
            if isinstance(topic, str):
                self.producers_by_topic[topic].append(e)

    def expire(self, before: float, at_most: int | None = None) -> int:
        """Forget released spans that arrived before `before` (at most `at_most` of them, oldest first); returns
        how many went."""
        n = 0
        order = self.order
        limit = len(order) if at_most is None else at_most
        while order and n < limit and order[0].arrived < before and order[0].released:
            e = order.popleft()
            if self.by_id.get(e.span.span_id) is e:
                del self.by_id[e.span.span_id]
            n += 1
        if n:
            live = set(map(id, self.order))
            for table in (self.servers_by_thread, self.servers_by_pid, self.consumers_by_thread, self.clients_by_conn,
                          self.producers_by_topic, self.sdk_by_resource, self.sdk_servers_by_parent):
                for key in list(table):
                    kept = [x for x in table[key] if id(x) in live]
                    if kept:
                        table[key] = kept
                    else:
                        del table[key]
        return n

    def __len__(self) -> int:
        return len(self.order)
