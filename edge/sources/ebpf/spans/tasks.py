"""Which server exchange's handler made an event loop's call, from CPython's own task contexts (`task`).

Each asyncio Task step runs in the task's contextvars.Context; a task started by another (asyncio.gather, create_task)
runs in a copy of its starter's. The probes (bpf/pyctx.bpf.h) send, before an egress message's first bytes, the
writing thread's context and the contexts each was copied from (a chain, nearest first). A server's response is
written from its handler's task: that context is the exchange's handling context. A call belongs to the exchange
whose handling context is the nearest one in its chain, among the exchanges open on its thread when it began that
were answered after it ended (a handler answers after its calls; a context's address is reused only once it is freed,
which the times tell apart: the call's handler held the address from before the call to its answer, so of the
exchanges answered in it after the call ended the first is the call's). A handler that calls itself is the chain's first context, one that starts a task per
call (asyncio.gather) its second: such a match decides at once. A match further up waits (as long as a call waits
for its handler) for a nearer one: beyond the live ancestors a chain may follow edges of freed contexts whose
addresses were reused, and such an element can be another open exchange's handling context. So a match further up is
taken at the end of the wait only once every other exchange open at the call has been answered: while one is not
(a handler still waiting for a slow call of its own), its response may still name the call nearer.

A call whose chain names no such exchange keeps what the kernel's rules decided (causes.py); the span waits for
the handler's response DECIDE_WAIT_NS past its end, and longer (up to LONG_WAIT_NS) while an exchange open at the
call is still unanswered: its handler answers only after all its calls, so one held up by a slow call of its own (a
TLS handshake per call on a loaded node: ~1 s) has not named the call yet. Once every exchange open at the call has
answered, nothing more can name it and it goes at once. LONG_WAIT_NS stays below the assembler's window, so the
downstream spans the call caused still wait for it there. Chains are cut at a repeated context (an edge left
from a freed context whose address was reused: what lies beyond is not an ancestry).

Held calls keep their spans: bounded per process (_MAX_HELD), for all processes in count (_MAX_HELD_ALL) and in
estimated bytes (MAX_HELD_BYTES); what a bound pushes out goes as it stands, counted (`held_dropped`). The bytes are
part of the builder state the memory governor budgets (builder_state.py).
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from ..events import PyContextEvent

__all__ = ["NEAR", "TaskContexts", "TaskStats"]

_MAX_CHAINS = 4096  # chains of messages not yet parsed (or not HTTP: never taken)
_MAX_HANDLED = 512  # per process: handling contexts of exchanges answered lately
_PER_CONTEXT = 32  # exchanges one handling context address served lately (it is reused once freed)
_MAX_ANSWERED = 2048  # per process: requests answered lately
_MAX_HELD = 1024  # per process: calls waiting for their handler's response
_MAX_HELD_ALL = 4096  # all processes together: calls waiting for their handler's response
MAX_HELD_BYTES = 4 << 20  # all processes together: what those calls hold (their spans), estimated
HELD_CALL_BYTES = 640  # a held call's own objects besides its span (the call, its wait, their tuples), estimated
NEAR = 1  # a match this close in a chain is final: the call's own context, or the one it was copied from
LONG_WAIT_NS = 1_500_000_000  # past the call's end: the longest wait for an open exchange's answer (window: 2 s)


@dataclass(slots=True)
class TaskStats:
    """Counters of the `task` rule."""

    chains: int = 0  # messages sent with their writer's contexts
    cut: int = 0  # chains cut at a repeated context
    decided: int = 0  # calls decided by their contexts
    deep: int = 0  # of those, by a context further up than the second, once no nearer one came
    overrode: int = 0  # of those, calls the kernel's rules had given another request (or none)
    unmatched: int = 0  # held calls whose contexts named no exchange: the kernel's decision stands
    deep_refused: int = 0  # of those, calls whose only match was far up while another open exchange was unanswered
    waited_long: int = 0  # calls held past DECIDE_WAIT_NS because an exchange open at the call had not answered yet
    long_expired: int = 0  # of those, calls still unanswered-for at LONG_WAIT_NS
    held_dropped: int = 0  # held calls released early to keep a bound (per process, all processes, bytes)
    held_peak: int = 0  # the most calls held at once
    held_bytes_peak: int = 0  # the most bytes held at once (estimated: their spans and HELD_CALL_BYTES each)


@dataclass(slots=True)
class _Held:
    pid: int
    contexts: tuple[int, ...]
    open_at_call: tuple[bytes, ...]  # requests open on its thread when it began
    end_ns: int
    deadline_ns: int
    payload: Any = None  # what the owner releases with it (causes.py: the call and its span)
    cause: bytes | None = field(default=None)
    depth: int = -1  # where in `contexts` the cause's handling context is (-1: none yet)
    unanswered: set[bytes] = field(default_factory=set)  # requests open at the call not answered yet
    waited_long: bool = False
    size: int = 0  # bytes it holds, estimated (counted in TaskContexts.held_bytes)


class TaskContexts:
    """Chains seen, handling contexts learned, calls waiting for theirs."""

    def __init__(self, long_wait_ns: int = LONG_WAIT_NS, max_held: int = _MAX_HELD_ALL,
                 max_bytes: int = MAX_HELD_BYTES) -> None:
        self.stats = TaskStats()
        self.long_wait_ns = long_wait_ns  # past a call's end; at most DECIDE_WAIT_NS turns the longer wait off
        self.max_held = max_held
        self.max_bytes = max_bytes
        self.held_bytes = 0  # estimated bytes of the calls held
        self._count = 0  # calls held
        self._chains: OrderedDict[tuple[int, int, int], tuple[int, ...]] = OrderedDict()
        # per process: handling context -> (request, when its response began), the latest last
        self._handled: dict[int, OrderedDict[int, deque[tuple[bytes, int]]]] = {}
        self._held: dict[int, list[_Held]] = {}
        self._answered: dict[int, OrderedDict[bytes, None]] = {}  # per process: requests answered lately

    def seen(self, ev: PyContextEvent) -> None:
        """A message's writer contexts, before its data."""
        chain: list[int] = []
        for ctx in ev.contexts:
            if ctx in chain:
                self.stats.cut += 1
                break
            chain.append(ctx)
        self.stats.chains += 1
        self._chains[(ev.pid, ev.tid, ev.ts_ns)] = tuple(chain)
        if len(self._chains) > _MAX_CHAINS:
            self._chains.popitem(last=False)

    def chain(self, pid: int, tid: int, ts_ns: int) -> tuple[int, ...]:
        """The contexts of the message thread `tid` began writing at `ts_ns` (empty: not known)."""
        return self._chains.pop((pid, tid, ts_ns), ())

    def handled(self, pid: int, request: bytes, contexts: tuple[int, ...], ts_ns: int) -> list[_Held]:
        """The response to `request` began at `ts_ns` in `contexts`: the held calls it decides."""
        if not contexts:
            return []
        table = self._handled.setdefault(pid, OrderedDict())
        served = table.get(contexts[0])
        if served is None:
            served = table[contexts[0]] = deque(maxlen=_PER_CONTEXT)
        table.move_to_end(contexts[0])
        served.append((request, ts_ns))
        if len(table) > _MAX_HANDLED:
            table.popitem(last=False)
        answered = self._answered.setdefault(pid, OrderedDict())
        answered[request] = None
        if len(answered) > _MAX_ANSWERED:
            answered.popitem(last=False)
        held = self._held.get(pid)
        if not held:
            return []
        done: list[_Held] = []
        keep: list[_Held] = []
        for h in held:
            h.unanswered.discard(request)
            self._match(h)
            (done if 0 <= h.depth <= NEAR else keep).append(h)
        self._held[pid] = keep
        self._released(done)
        return done

    def match(self, pid: int, contexts: tuple[int, ...], open_at_call: tuple[bytes, ...],
              end_ns: int) -> tuple[bytes | None, int]:
        """The exchange a finished call's contexts name among the answered ones (None when none does yet), and how far
        up its chain: a match beyond NEAR is not final."""
        h = _Held(pid, contexts, open_at_call, end_ns, 0)
        self._match(h)
        return h.cause, h.depth

    def _match(self, h: _Held) -> None:
        table = self._handled.get(h.pid)
        if not table:
            return
        for k, ctx in enumerate(h.contexts):
            if 0 <= h.depth <= k:
                return  # a nearer one is known
            served = table.get(ctx)
            if served is None:
                continue
            for request, ts in served:
                if ts >= h.end_ns and request in h.open_at_call:
                    h.cause, h.depth = request, k
                    return

    def hold(self, pid: int, contexts: tuple[int, ...], open_at_call: tuple[bytes, ...], end_ns: int,
             deadline_ns: int, payload: Any, cause: bytes | None = None, depth: int = -1, size: int = 0) -> list[_Held]:
        """Wait for the handler's response (a match found further up goes with it); what the bounds push out (this
        process's oldest, else the oldest of the process holding most) is returned as it stands, counted."""
        held = self._held.setdefault(pid, [])
        answered = self._answered.get(pid)
        size += HELD_CALL_BYTES
        held.append(_Held(pid, contexts, open_at_call, end_ns, deadline_ns, payload, cause, depth,
                          {r for r in open_at_call if answered is None or r not in answered}, size=size))
        self._count += 1
        self.held_bytes += size
        st = self.stats
        st.held_peak = max(st.held_peak, self._count)
        st.held_bytes_peak = max(st.held_bytes_peak, self.held_bytes)
        out: list[_Held] = []
        while len(held) > _MAX_HELD:
            out.append(self._push_out(held))
        while self._count > self.max_held or self.held_bytes > self.max_bytes:
            out.append(self._push_out(max(self._held.values(), key=len)))
        st.held_dropped += len(out)
        return out

    def _push_out(self, held: list[_Held]) -> _Held:
        h = held.pop(0)
        self._released([h])
        return self._final(h)

    def _released(self, gone: list[_Held]) -> None:
        self._count -= len(gone)
        self.held_bytes -= sum(h.size for h in gone)

    def _final(self, h: _Held) -> _Held:
        # A match further up stands only when no other exchange open at the call can still answer nearer.
        if h.cause is not None and h.depth > NEAR and h.unanswered - {h.cause}:
            self.stats.deep_refused += 1
            h.cause, h.depth = None, -1
        return h

    def due(self, now_ns: int, force: bool = False) -> list[_Held]:
        """Held calls whose wait is over: with the match found further up, if any."""
        out: list[_Held] = []
        for pid, held in list(self._held.items()):
            keep: list[_Held] = []
            for h in held:
                if force or not self._waits(h, now_ns):
                    out.append(self._final(h))
                else:
                    keep.append(h)
            if keep:
                self._held[pid] = keep
            else:
                del self._held[pid]
        self._released(out)
        return out

    def _waits(self, h: _Held, now_ns: int) -> bool:
        # Past its plain wait, a call still waits while an exchange open at it (other than a far match's) may answer.
        if h.deadline_ns > now_ns:
            return True
        if not (h.unanswered - ({h.cause} if h.cause is not None else set())):
            return False
        if now_ns < h.end_ns + self.long_wait_ns:
            if not h.waited_long:
                h.waited_long = True
                self.stats.waited_long += 1
            return True
        if h.waited_long:
            self.stats.long_expired += 1
        return False

    def forget_process(self, pid: int) -> list[_Held]:
        """The process ended: its held calls, undecided; its contexts forgotten."""
        self._handled.pop(pid, None)
        self._answered.pop(pid, None)
        for key in [k for k in self._chains if k[0] == pid]:
            del self._chains[key]
        gone = self._held.pop(pid, [])
        self._released(gone)
        return gone

    def waiting(self) -> int:
        """Calls held."""
        return self._count
