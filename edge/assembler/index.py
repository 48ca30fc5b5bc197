"""Recent spans indexed the ways the stitching rules look them up: by id, thread, process, connection, topic."""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

from ..model import Resource, Source, Span, SpanKind

__all__ = ["SpanIndex", "Entry", "conn_key", "is_kernel", "pid_of", "tid_of"]

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


@dataclass(slots=True)
class Entry:
    """A span while it is indexed: when it arrived, and the parent the rules chose for it (if any)."""

    span: Span
    arrived: float
    parent: Entry | None = None
    link: str = ""  # which rule made the parent link ("" for an explicit or no parent)
    confidence: float = 1.0
    resolved: bool = False
    released: bool = False
    size: int = 0
    delivered_to: set[int] = field(default_factory=set)  # for a publish: subscriber pids already matched to it


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

    def expire(self, before: float) -> int:
        """Forget spans that arrived before `before` and were released; returns how many."""
        n = 0
        while self.order and self.order[0].arrived < before and self.order[0].released:
            e = self.order.popleft()
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
