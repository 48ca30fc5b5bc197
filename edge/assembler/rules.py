"""Parent inference for spans that name no parent: one function per rule, each over the span index.

Rules only ever make a kernel span the child of another span; an SDK span's parent is never changed (the SDK
knows its own structure). In order of preference:

- wire: the kernel span carries context read off the wire; its parent is that remote span — or, for a server
  span, the kernel client span on the other end of the same connection when one carries the same context;
- connection: a kernel server span is the child of the kernel client span on the other end of its connection
  (5-tuple mirrored) that was in flight when the server read the request (the latest begun) and, where both name it,
  wrote the same HTTP request — causality across processes on the node; on an HTTP/2 connection, which multiplexes
  concurrent calls, only the client span of the same stream id;
- sdk-process: a kernel client span inside the innermost SDK span of the same process (of the same request, when
  the request that made the call is known and its trace is);
- cause: a kernel client span is the child of the server span of the request the span builder found it was made
  for (`helix.cause`, edge/sources/ebpf/spans/causes.py): the request its thread serves (`thread`), the one an
  event loop read last in the call's turn (`event-loop`) or its learned number of turns before (`loop-turn`), or
  the one the order of a loop turn's reads, calls and answers leaves it (`loop-order`), or
  the one whose thread waited for a pool worker's result (`wakeup`) or handed it the work (`handoff`); a call the
  builder found `ambiguous` (an event loop's call several open requests may have made, a pool worker's whose work
  another worker may have taken) gets no parent from the timing rules below: it stays the root of what it caused
  rather than be linked to a request it may not belong to;
- thread: a kernel span inside a kernel server span of the same thread (the thread serving a request makes
  the calls that request needs), for spans that name no cause;
- consumer-thread: a kernel client span made by the thread that just received an MQTT message, before it
  receives another one (subscriber callbacks);
- process: a kernel client span inside a kernel server span of the same process (the tightest when several
  are in flight), for thread pools — with the confidence recorded;
- mqtt-topic: a kernel consumer span with no context, after the oldest publish of the same topic not yet
  delivered to that subscriber (brokers deliver in order).
"""
from __future__ import annotations

from ..model import Resource, Span, SpanKind
from .index import STREAM_ID, Entry, SpanIndex, conn_key, is_kernel, pid_of, tid_of

__all__ = ["infer_parent", "kernel_twin", "Slack", "CERTAIN", "CAUSE"]

CAUSE = "helix.cause"  # edge/sources/ebpf/spans/causes.py
# Rules whose answer no later span can change: a parent they find may be kept before the span leaves.
CERTAIN = frozenset({"wire+connection", "connection", "thread", "event-loop", "wakeup", "handoff", "handback"})


class Slack:
    """Tolerances for comparing times taken by different syscalls of one host (nanoseconds)."""

    CONTAIN_NS = 500_000  # a call may be seen to begin or end this much outside its container
    CONSUMER_GAP_NS = 2_000_000_000  # a subscriber callback's calls follow the receive within this
    MQTT_HOP_NS = 5_000_000_000  # a delivery follows its publish within this


def _contains(outer: Entry, inner: Entry, slack: int = Slack.CONTAIN_NS) -> bool:
    o, i = outer.span, inner.span
    return o.start_ns - slack <= i.start_ns and i.end_ns <= o.end_ns + slack and outer is not inner


def _innermost(candidates: list[Entry], inner: Entry) -> list[Entry]:
    """Containers of `inner`, tightest first: the least time before it starts plus after it ends.

    For nested containers that is the innermost; for concurrent requests of a thread pool it is the one whose
    handler started just before the call and answered just after it — the one that waited for it.
    """
    i = inner.span
    hits = [c for c in candidates if _contains(c, inner)]
    hits.sort(key=lambda c: (i.start_ns - c.span.start_ns) + (c.span.end_ns - i.end_ns))
    return hits


def _same_stream(candidates: list[Entry], e: Entry) -> list[Entry]:
    """Client spans of the connection that can be the other end of `e`: on HTTP/2, those of its stream id."""
    sid = e.span.attributes.get(STREAM_ID)
    if not isinstance(sid, int):
        return candidates
    return [c for c in candidates if c.span.attributes.get(STREAM_ID) == sid]


def _wire_twin(index: SpanIndex, e: Entry) -> Entry | None:
    """For a kernel server span with wire context: the kernel client span of the same request, other side."""
    key = conn_key(e.span)
    if key is None:
        return None
    mirrored = (key[2], key[3], key[0], key[1])
    # Same context first (one span of a keep-alive connection's many, where traces differ), then, on HTTP/2, the same
    # stream, then the containers: the tightest of those is the one the sort over all containers would have found
    # first.
    same = _same_stream(index.clients_in_context(mirrored, e.span.trace_id, e.span.parent_span_id), e)
    return _other_end(same, e) if same else None


def _other_end(clients: list[Entry], server: Entry) -> Entry | None:
    """The client exchange of the mirrored connection that `server`'s request came from: the latest to begin before
    the server read its request, if it had not ended by then, and that wrote the request the server read. Only the
    start bounds it: the server's last write can return after the client read its response (the thread preempted at
    the end of its write syscall, or before a TLS library's write returned: 1-2 ms on a loaded node), so the server
    span need not end within the client's."""
    start = server.span.start_ns
    hits = [c for c in clients if c is not server and c.span.name != "tcp.connect"
            and c.span.start_ns - Slack.CONTAIN_NS <= start <= c.span.end_ns + Slack.CONTAIN_NS
            and _may_be_request_of(c.span, server.span)]
    return max(hits, key=lambda c: c.span.start_ns) if hits else None


# What both ends of one HTTP exchange parse from the same bytes of its request head.
_REQUEST_NAMES = ("http.request.method", "url.path", "url.query")
_TRUNCATED = "helix.http.request_truncated"


def _may_be_request_of(client: Span, server: Span) -> bool:
    """False where the client exchange certainly wrote another request than the one the server read: both name it
    (whole HTTP heads) and the names differ. On a keep-alive connection the call before the right one can still be in
    the time slack when the server's read returns (its response's end held ~40 ms by a delayed acknowledgement, the
    next request written within the slack), while the right one is not yet in view (a pool worker's call waits in the
    span builder for its decision): a link to it would be wrong, none waits for the right one."""
    ca, sa = client.attributes, server.attributes
    if "http.request.method" not in ca or "http.request.method" not in sa or _TRUNCATED in ca or _TRUNCATED in sa:
        return True
    return all(ca.get(k) == sa.get(k) for k in _REQUEST_NAMES)


def infer_parent(index: SpanIndex, e: Entry, sdk_resources: dict[int, set[Resource]],
                 certain_only: bool = False) -> tuple[Entry | None, str, float]:
    """The parent the rules give `e` (an entry of the index), the rule's name, and its confidence; with
    `certain_only`, only from the rules in CERTAIN (no rule with a state of its own is asked)."""
    s = e.span
    if not is_kernel(s):
        return None, "", 1.0
    wire = s.attributes.get("helix.context_from") == "wire"
    if wire:
        if s.kind == SpanKind.SERVER:
            twin = _wire_twin(index, e)
            if twin is not None:
                return twin, "wire+connection", 1.0
        return None, "", 1.0
    pid, tid = pid_of(s), tid_of(s)
    cause = s.attributes.get(CAUSE)
    by_cause = index.by_id.get(cause) if isinstance(cause, bytes) else None
    if by_cause is e:
        by_cause = None
    if certain_only:
        if s.kind == SpanKind.SERVER:
            return _by_connection(index, e)
        if by_cause is not None:
            return by_cause, str(s.attributes.get("helix.cause.via", "thread")), 1.0
        return None, "", 1.0
    if s.kind == SpanKind.SERVER:
        return _by_connection(index, e)
    if s.kind == SpanKind.CONSUMER:
        topic = s.attributes.get("messaging.destination.name")
        if isinstance(topic, str):
            before = [p for p in index.producers_by_topic.get(topic, [])
                      if p.span.start_ns <= s.start_ns + Slack.CONTAIN_NS
                      and s.start_ns - p.span.start_ns <= Slack.MQTT_HOP_NS and p is not e
                      and (pid is None or not p.delivered_to or pid not in p.delivered_to)]
            if before:
                # A broker delivers a topic's messages to a subscriber in order: the oldest publish this
                # subscriber has not had yet is the one (a subscriber that falls behind reads publish k after
                # k+1 was sent). Confidence falls with every other publish that could have been the one.
                before.sort(key=lambda p: p.span.start_ns)
                if pid is not None:
                    first = before[0]
                    if first.delivered_to is None:
                        first.delivered_to = set()
                    first.delivered_to.add(pid)
                return before[0], "mqtt-topic", round(1.0 / len(before), 3)
        return None, "", 1.0
    if s.name == "tcp.connect":
        key = conn_key(s)
        if key is not None:
            after = [c for c in index.clients_by_conn.get(key, []) if c is not e and c.span.name != "tcp.connect"
                     and s.end_ns - Slack.CONTAIN_NS <= c.span.start_ns <= s.end_ns + 1_000_000_000]
            if after:
                after.sort(key=lambda c: c.span.start_ns)
                return after[0], "connection", 1.0
    if pid is not None and pid in sdk_resources:
        candidates = [c for r in sdk_resources[pid] for c in index.sdk_by_resource.get(r, ())]
        if by_cause is not None:
            # The request that made the call is known: only its own SDK spans, when its trace is known too.
            trace = _request_trace(by_cause)
            candidates = [c for c in candidates if c.span.trace_id == trace] if trace is not None else []
        hits = _innermost(candidates, e)
        if hits:
            return hits[0], "sdk-process", 1.0
    if by_cause is not None:
        return by_cause, str(s.attributes.get("helix.cause.via", "thread")), 1.0
    if s.attributes.get("helix.cause.via") == "ambiguous":
        return None, "", 1.0
    if pid is not None and tid is not None:
        hits = _innermost(index.servers_by_thread.get((pid, tid), []), e)
        if hits:
            return hits[0], "thread", 1.0
        recv = [c for c in index.consumers_by_thread.get((pid, tid), [])
                if c.span.end_ns - Slack.CONTAIN_NS <= s.start_ns <= c.span.end_ns + Slack.CONSUMER_GAP_NS]
        if recv:
            recv.sort(key=lambda c: c.span.end_ns, reverse=True)
            return recv[0], "consumer-thread", 1.0
    if pid is not None:
        hits = _innermost(index.servers_by_pid.get(pid, []), e)
        if hits:
            return hits[0], "process", round(1.0 / len(hits), 3)
    return None, "", 1.0


def _by_connection(index: SpanIndex, e: Entry) -> tuple[Entry | None, str, float]:
    key = conn_key(e.span)
    if key is not None:
        mirrored = (key[2], key[3], key[0], key[1])
        hit = _other_end(_same_stream(index.clients_by_conn.get(mirrored, []), e), e)
        if hit is not None:
            return hit, "connection", 1.0
    return None, "", 1.0


def _request_trace(server: Entry) -> bytes | None:
    """The trace a kernel server span's request is in as its process's SDK knows it: started there, or read off
    the wire."""
    if server.born is not None:
        return server.born[0]
    if server.span.attributes.get("helix.context_from") == "wire" and not server.released:
        return server.span.trace_id
    return None


def kernel_twin(index: SpanIndex, e: Entry, pid: int) -> Entry | None:
    """The kernel server span of the same request as an SDK root server span: same process, no context taken in,
    not known to be another trace's request, tightest container. Not one the kernel sampled on randomness of its
    own (`own_r`): the true one may have been held back while a concurrent request's was kept, and would be
    taken for it (known twins, read off the wire, are found before this)."""
    trace = e.span.trace_id
    hits = [c for c in _innermost(index.servers_by_pid.get(pid, []), e)
            if c.span.attributes.get("helix.context_from") != "wire" and (c.born is None or c.born[0] == trace)
            and not c.own_r]
    return hits[0] if hits else None
