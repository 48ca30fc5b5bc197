"""Which request an outgoing call was made for, decided from the kernel's own events: each thread's request context.

A kernel client span names the server span of the request that caused it in `helix.cause` (that span's id, chosen
when the request was read, before the span exists) and how that was decided in `helix.cause.via`; the assembler's
first rule for kernel calls reads them (edge/assembler/rules.py).

- thread: the calling thread serves exactly one request (read, not yet answered): that one.
- event-loop: the calling thread serves several requests at once (asyncio, Node.js): the one whose bytes, or whose
  downstream response, it read last among those still open, when it read them in the call's loop turn (for a
  thread whose turns are known: a call made turns later comes from a continuation, which may be any open request's,
  and is decided only by the answers, as below). When it read several requests one after the other
  with no call between (one turn of the loop), the handlers of those requests run after the reads and any of them
  may have made the call: the call is decided when its response is read, if by then all but one of those requests
  were answered (a handler awaits its calls before it answers); else it is `ambiguous` and names no request, so
  that no rule guesses one. Otherwise a call that is the first on a connection the thread opened takes the context
  the thread had when it opened it: a runtime that writes the request only once the connection is up (Node.js) does
  so a loop turn later, after reading other requests (where that context is no longer known, the call is left to
  the answers). A connect() in the turn of the loop's last read, right after it, began a call of that read's handler
  (Node.js runs it in the read's callback): it ends the run of reads as a call does (for a loop that has not learned
  a distance of a turn or more, below; the process's one loop thread, as connects name no thread).
- loop-turn: an event loop whose path from reading a request to its first call takes the same number of loop turns
  every time (asyncio with aiohttp: three; it runs the handler and the call's task as continuations), learned from
  the calls themselves: each call could have come from the requests still open that made no call in an earlier
  turn, each at its own distance in turns; a distance found in every one of the thread's last 16 calls is the loop's.
  A call is then the one request read that many turns before it (for the first call on a new connection: before
  its `connect()`); several read in that turn are its candidates, decided as above when the call is answered. Any
  call that fits no such distance (a second call after a response, a timer) breaks the pattern and the rule stays
  off until 16 calls fit again. A loop that calls in the turn that read the request (Node.js) learns 0 and keeps
  the rules above. Turns come from the return of the thread's epoll wait (bpf/proc.bpf.c).
- loop-order: the calls of one turn of such a loop whose candidates are several requests read together, held until
  all of those were answered (at most DECIDE_WAIT_NS after the call's end). The loop runs what is ready first in,
  first out: the handlers start in the order their requests were read and each starts its calls before the next
  starts any, so the calls, in the order they began (the write, or the connect() of a new connection), fall to the
  requests in read order, each taking a run of them. A handler answers a fixed number of turns after its last call's
  answer ended (asyncio with aiohttp: three, from the awaits chained in between; learned from the requests alone in
  their calls' turn, whose calls are all known: 16 in a row must agree), and two handlers answered in one turn run
  in the order their last answers ended. Each assignment of runs that fits those is weighed; a call is decided where
  all give it the same request, else `ambiguous`. A request may make no call unless the last 16 requests seen alone
  all made one (a request answered without a call resets that). When none fits, nothing is decided and both
  patterns are learned again.
- wakeup: the calling thread serves none (a pool worker): the request of the thread it wakes once the call is
  answered, when that thread slept through the whole call (it was waiting for this result: a future, a condition);
  else, when nobody was waiting, the request of the thread that woke it to hand it the work (`handoff`), when no
  other worker can have taken that work: workers take queued work in an order the kernel does not see, so a
  hand-off is certain only if no worker still running from earlier work (a call since it was last handed work) began
  a call between this hand-off and this call's end, and, where other workers were handed work while this one's was
  pending (between its hand-off and its call), all of those requests but one were answered before this call was
  (a request thread waits for its work). Otherwise, and when nothing handed the work at all, the call is left
  `ambiguous` rather than guessed. The hand-off is the wakeup that ended the worker's idle sleep (a later one before
  its call, from a sleep begun after it, is a lock on the way to that work); the first request thread the worker
  wakes once answered, asleep through the answer, confirms it (it then decides despite those checks) or contests it.
  A contested call is decided where another worker is known to have run one of the two requests (a request runs on one
  worker: the other one is this call's), or where another worker's call crossed it exactly (handed the request this
  hand-back went to, its own hand-back went to this hand-off: each took the other's item, the hand-backs decide);
  else `ambiguous`. A wakeup of a thread that serves none hands no result.
- handback: a worker's call with no certain hand-off (it took the work running, its requester handing it over while
  it was awake) whose requester fell asleep only after the call began: the request of the one thread, asleep from
  after the call began through its answer, that the worker woke once answered, where it woke no other such thread
  before its next call (one woken for a lock, the GIL, would be a second: the requester's wait ends only by the
  worker's result; the worker hands a result back before it takes the next work, so what it wakes after its next
  call began is that work's) and no other worker was handed that request or had a call decided for it. A thread
  whose request another worker's result already reached counts for no hand-back (woken again, it waited for a lock).
  Wakeups come from sched_waking between two threads of one process, and from sched_wakeup_new: a thread that
  creates a worker (a pool that starts them on demand) hands it its first work (bpf/proc.bpf.c).
- response: a worker's call in a process whose requests are read by threads other than those that serve them (gRPC's
  I/O threads hand a stream to a dispatcher, which hands it to an executor worker: hand-offs a wakeup cannot follow),
  when the worker itself then writes the response of a request read before the call began: a handler answers only
  after its calls were answered, and a worker runs one handler at a time. Certain only when that is the one response
  the worker wrote from the call's answer until its decision, and no other request open when the call began (and not
  known to have run on another worker) was answered between the call's whole answer and that response (its handler's
  answer may have been written by another thread, the worker moving on to the next request meanwhile); else the call
  is left to the rules above.
- elimination: such a worker's call whose response another thread wrote (grpcio's I/O thread, for the worker): the one
  request open when the call began (read, exchange not ended) whose exchange did not end before the call was answered
  and that no other worker ran (its call was decided for it by the rules here: a request runs on one worker). Only for a thread known
  to run handlers (it wrote a response after one of its calls) and while the process's open requests are all known
  (none past the bound, no server connection joined after its start or with bytes lost);
  a call with several such requests waits once more for the other workers' decisions, then is `ambiguous`.
- write-order: such calls whose requests' responses went out on one connection (grpcio's I/O thread, holding the
  connection's combiner, writes what the workers queued meanwhile, in the order they queued it): when as many workers'
  calls as there are requests left each may have run only those requests, each worker queued its response between
  its call's end (the whole answer read, by the worker itself; else its head) and the start of a sleep it was in when
  the last of those responses began to be written (asleep, it queued nothing), and those spans do not overlap, the
  workers queued in that order: the first to queue ran the request written first. A process where that order once
  gave a worker a request it cannot have run never uses it again.
  A thread reading HTTP/2 streams waits for no one result and hands on no one request, and a thread with several
  calls in flight at once (an I/O thread writing the streams of many threads) takes no one hand-off: neither
  decides a call by a wakeup; nor does a worker's wakeup of a thread serving none in such a process (grpcio's own
  threads, not a batch job waiting for its result).

A worker's call waits for its decision in the builder (at most DECIDE_WAIT_NS after it was answered). Everything is
bounded: threads in an LRU table, a few open requests and waiting calls per thread, processes dropped at exit.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ....model import Span
from ..events import TurnEvent, WakeupEvent
from .tasks import NEAR as _NEAR_CONTEXT
from .tasks import HELD_CALL_BYTES, TaskContexts

__all__ = ["Call", "Causes", "CausesStats", "CAUSE", "CAUSE_VIA", "DECIDE_WAIT_NS"]

CAUSE = "helix.cause"  # bytes: span id of the kernel server span whose request caused this call
CAUSE_VIA = "helix.cause.via"  # task | thread | event-loop | loop-turn | loop-order | wakeup | handoff | handback |
# response | elimination | write-order | ambiguous

# How long a worker's answered call waits for the wakeup that hands its result to a waiting request thread. The
# hand-off follows the call's last read within microseconds; this only bounds calls nobody waits for.
DECIDE_WAIT_NS = 500_000_000
_MAX_OPEN = 64  # requests one thread serves at once (an event loop), beyond which the oldest is forgotten
_MAX_WAITING = 64  # a worker's calls waiting for their decision
_HISTORY = 32  # an event loop's last contexts, with when it took them: the one it had when it opened a connection
_MAX_CONNECTS = 4096  # connections opened whose first call is still to come
_TURNS = 16  # an event loop's last turn starts: enough to place a call's connect() a few turns back
_LAG_CALLS = 16  # an event loop's last calls whose distances in turns must agree before the distance is used
_MAX_ANSWERED = 512  # pool processes' requests answered lately: hand-offs are decided within DECIDE_WAIT_NS
_MAX_STARTS = 64  # per pool process: the last calls its workers began, with when their work was handed
_NEVER = 1 << 63  # a call still in flight: it ends after anything
_MAX_RESPONDED = 512  # pool processes' requests read and answered lately, for the `response` rule
_MAX_UNANSWERED = 256  # requests of one process read and not yet ended (past it, `elimination` is off there)
_MAX_CANDIDATES = 32  # requests open at a worker's call beyond which `elimination` is not tried for it
_MAX_SLEEPS = 8  # sleeps of a worker's thread kept per waiting call, from its answer on (`write-order`)
_MAX_ORDERED = 8  # requests left to a call beyond which `write-order` is not tried
_MAX_UNRESOLVED = 64  # per stream process: its workers' last calls left without a request (`write-order` counts them)
_MAX_WEIGHED = 64  # calls `write-order` weighs for one decision, beyond which it is not tried (a bound on its cost)
_MAX_GROUPS = 16  # an event loop's turns whose calls wait for `loop-order`
_MAX_GROUP_CALLS = 16  # calls of one such turn, beyond which `loop-order` is not tried for it
_MAX_GROUP_FITS = 8  # requests one such turn's calls may be for, beyond which `loop-order` is not tried
_MAX_ASSIGN = 20_000  # steps `loop-order` may take to weigh the assignments of one turn's calls (a bound on its cost)
_MAX_SOLO = 64  # requests whose calls' ends are followed, to learn the turns from a last answer to the response


@dataclass(slots=True)
class Call:
    """An outgoing call and, once decided, the request it was made for."""

    pid: int
    tid: int
    start_ns: int
    cause: bytes | None = None
    via: str = ""
    decided: bool = False
    answered: bool = False  # its response has been read: its result can be handed on
    handoff: bytes | None = None  # the request of the thread that handed this thread its work, if any
    handoff_ns: int = 0  # when that thread handed it
    end_ns: int = 0
    span: Span | None = None  # the finished span, waiting for the decision
    deadline_ns: int = 0
    candidates: tuple[bytes, ...] = ()  # an event loop's call made after several reads: the requests it may be for
    turn: int = -1  # the loop turn it was made in (or its connection opened in), -1 when not known
    answered_ns: int = 0  # when its response was read
    response: bytes | None = None  # the request whose response its thread wrote first after the call was answered
    response_ns: int = 0  # when that response was written
    responses: int = 0  # responses of requests read before the call that its thread wrote since: more than one, unsure
    concurrent: bool = False  # its thread had another call in flight meanwhile (HTTP/2 streams written for many)
    open_at_start: tuple[bytes, ...] | None = None  # requests of its process read and not ended when it began
    parked: bool = False  # its decision was put off once, for other workers' calls to be decided first
    woke: bytes | None = None  # the request of the first thread its worker woke once it was answered (see wakeup)
    woke_others: bool = False  # its worker woke such a thread of another request too: no hand-back is certain
    sleeps: list[tuple[int, int]] | None = None  # its thread's sleeps (began, woken) begun after its answer
    own_answer: bool = False  # its response was read by the thread that made it
    group: _Group | None = None  # an event loop's call made in a turn whose calls may be for several requests
    pos: int = 0  # where it began in that turn: its write, or the connect() of its new connection
    end_turn: int = -1  # the loop turn its whole answer was read in
    contexts: tuple[int, ...] = ()  # a Python thread's task context it was written in, and that one's ancestors
    open_at_call: tuple[bytes, ...] = ()  # with contexts: the requests open on its thread when it began (`task`)


@dataclass(slots=True)
class _Group:
    # The calls an event loop made in one turn (`loop-order`) and the requests read together that many turns before.
    fits: tuple[bytes, ...]
    calls: list[Call] = field(default_factory=list)
    done: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # request -> (turn, when) its response began
    broken: bool = False  # too many calls, or the loop's patterns were lost meanwhile: left to the other rules


@dataclass(slots=True)
class _Thread:
    # Requests served, last touched last, with the loop turn each was read in (None: not an event loop, or unknown).
    open: OrderedDict[bytes, int | None] = field(default_factory=OrderedDict)
    handoff: bytes | None = None  # request of the thread that handed this one work, until it hands back
    handoff_from: int = 0
    handoff_ns: int = 0  # when it was handed that work
    calls_since_handoff: int = 0  # calls made since it was last handed work: more than none, it took work running
    handoff_conflict: bool = False  # handed work for two requests before its call: which one it took is unknown
    fresh: bool = False  # first handed work by the thread that created it (or first woke it), no call made since
    history: deque[tuple[int, bytes | None]] | None = None  # kept once it serves several requests at once
    since_ns: int = 0  # when it took its present context (the history's first entry, when one is started)
    waiting: list[Call] = field(default_factory=list)
    reads_messages: bool = False  # an MQTT subscriber's network thread: its calls follow the message it read
    reads_streams: bool = False  # reads HTTP/2 streams (many requests on one connection): it waits for none of them
    writes_responses: bool = False  # made a call, then wrote a response to a request other threads read: a worker
    run: list[bytes] = field(default_factory=list)  # requests read one after the other since the last call
    reading: bool = False  # the last thing this thread did was read a request
    turns: deque[tuple[int, int]] | None = None  # (start, number) of its last loop turns: it waits in epoll
    turn_no: int = 0
    called_in: dict[bytes, int] = field(default_factory=dict)  # open request -> the turn of its first decided call
    touched: dict[bytes, int] = field(default_factory=dict)  # open request -> when its request or a response was read
    lags: deque[frozenset[int]] | None = None  # for each of its last calls, the distances in turns it may have
    groups: dict[int, _Group] = field(default_factory=dict)  # turn -> its calls waiting for `loop-order`
    held: list[Call] = field(default_factory=list)  # finished calls of those, waiting for their decision
    solo: dict[bytes, int] = field(default_factory=dict)  # request alone in its calls' turn -> their last answer's turn
    answer_lags: deque[frozenset[int]] | None = None  # for its last requests, the turns their last answer may have
    # ended before their response began
    calls_each: int = 0  # requests in a row seen to make a call in their calls' turn (none seen to make none)
    tick: int = 0  # the state bound's clock when last active (builder_state.py)

    def context(self) -> bytes | None:
        """The request this thread works for now: the one it serves, last touched, else the one handed to it."""
        if self.open:
            return next(reversed(self.open))
        return self.handoff


@dataclass(slots=True)
class CausesStats:
    """How calls were decided."""

    thread: int = 0
    event_loop: int = 0
    wakeup: int = 0
    handoff: int = 0
    handoff_unsure: int = 0  # a hand-off another, running worker may have taken: left ambiguous
    contest_settled: int = 0  # hand-off and hand-back disagreed, and another worker was known to have run one of them
    handback: int = 0  # a worker's call with no certain hand-off, decided by the one requester its result woke
    undecided: int = 0  # a worker's call nobody waited for and nobody handed over (left ambiguous)
    ambiguous: int = 0  # an event loop's call after several requests read in one turn, left undecided
    loop_turn: int = 0  # an event loop's call decided by its distance in turns from the request's read
    turns: int = 0  # loop turn records seen
    connect: int = 0  # a call decided by the context its thread had when it opened the connection
    wakeups: int = 0  # wakeup records seen
    response: int = 0  # a worker's call decided by the response its thread wrote next
    elimination: int = 0  # a worker's call decided as the one request open at it that no other worker ran
    response_unsure: int = 0  # a worker's call whose thread wrote a response, left to the other rules
    write_order: int = 0  # a worker's call decided by the order one write carried its workers' responses in
    write_order_conflicts: int = 0  # that order gave a worker a request it cannot have run: off for its process
    loop_order: int = 0  # an event loop's call decided by the order of its turn's reads, calls, answers and responses
    loop_order_conflicts: int = 0  # no assignment fitted those orders: the loop's learned patterns are dropped
    evicted_threads: int = 0
    waiting_forced: int = 0  # a worker's waiting calls decided early, its bound (_MAX_WAITING) reached


class Causes:
    """Per-thread request context of the traced processes; see the module docstring."""

    def __init__(self, max_threads: int = 16384) -> None:
        self.max_threads = max_threads
        self.stats = CausesStats()
        self._threads: OrderedDict[tuple[int, int], _Thread] = OrderedDict()
        self._pools: set[int] = set()  # processes where a request thread and a worker woke each other
        self._streams: set[int] = set()  # processes that read HTTP/2 server streams
        self._waiting: set[tuple[int, int]] = set()  # threads with calls waiting for their decision
        self._connects: OrderedDict[tuple[int, int], int] = OrderedDict()  # (pid, sock) -> when connect() began
        # Per pool process: (tid, start, hand-off time or -1 when the worker took the work while running, request).
        self._starts: dict[int, deque[tuple[int, int, int, bytes | None]]] = {}
        self._answered: OrderedDict[bytes, int] = OrderedDict()  # request -> when its response began
        self._read_at: OrderedDict[bytes, int] = OrderedDict()  # pool processes: request -> when it was read
        self._responded: OrderedDict[bytes, int] = OrderedDict()  # pool processes: request -> when its response began
        self.tick = 0  # the state bound's clock, stamped on the threads active (builder_state.py)
        # Per process: requests read and not yet ended, with when they were read; processes whose table overflowed.
        self._unanswered: dict[int, OrderedDict[bytes, int]] = {}
        self._ended: OrderedDict[bytes, int] = OrderedDict()  # stream processes: request -> when its exchange ended
        self._unanswered_lost: set[int] = set()
        self._ran_by: OrderedDict[bytes, int] = OrderedDict()  # request -> the worker thread that ran its handler
        self._worked_by: OrderedDict[bytes, int] = OrderedDict()  # pool processes: request -> worker of its decided call
        # Stream processes: request -> (connection, start of the write that began its response, position in the writes).
        self._written: OrderedDict[bytes, tuple[int, int, int]] = OrderedDict()
        self._writes = 0
        self._unresolved: dict[int, deque[Call]] = {}  # per stream process: its workers' last calls left undecided
        self._unordered: set[int] = set()  # stream processes where `write-order` met a contradiction
        self._holding: set[tuple[int, int]] = set()  # event-loop threads with calls held for `loop-order`
        self.tasks = TaskContexts()  # Python task contexts (`task`, tasks.py)
        self._loops: dict[int, set[int]] = {}  # per process: its threads that wait in epoll

    def __len__(self) -> int:
        return len(self._threads)

    @property
    def connect_count(self) -> int:
        """Connections opened whose first call is still to come."""
        return len(self._connects)

    def evict_oldest(self, threads: int, connects: int = 0) -> None:
        """Forget the `threads` least recently active threads (counted) and the `connects` oldest connections
        opened."""
        for _ in range(min(threads, len(self._threads))):
            self.evict_thread(next(iter(self._threads)))
        for _ in range(min(connects, len(self._connects))):
            self._connects.popitem(last=False)

    def evict_thread(self, key: tuple[int, int]) -> None:
        """Forget the request context of thread `key` (pid, tid), counted."""
        gone = self._threads.pop(key, None)
        if gone is None:
            return
        self.stats.evicted_threads += 1
        self._waiting.discard(key)
        self._holding.discard(key)
        loops = self._loops.get(key[0])
        if loops is not None:
            loops.discard(key[1])
        for call in gone.waiting:
            call.decided = True  # its span, if finished, is lost with the thread's state: none is held here

    def threads(self) -> Iterator[tuple[tuple[int, int], int, bool]]:
        """(pid, tid), when last active (the state bound's clock) and whether it serves requests or has calls
        waiting, least recently active first."""
        return ((k, t.tick, bool(t.open or t.waiting or t.held)) for k, t in self._threads.items())

    def connects(self) -> Iterator[tuple[tuple[int, int], int]]:
        """(pid, sock) of connections opened whose first call is still to come, and when connect() began; oldest
        first."""
        return iter(self._connects.items())

    def forget_connect(self, key: tuple[int, int]) -> None:
        """Forget the connect() of (pid, sock)."""
        self._connects.pop(key, None)

    @property
    def waiting_count(self) -> int:
        """Calls waiting for their decision."""
        return (sum(len(t.waiting) for k in self._waiting if (t := self._threads.get(k)) is not None)
                + sum(len(t.held) for k in self._holding if (t := self._threads.get(k)) is not None)
                + self.tasks.waiting())

    @property
    def held_bytes(self) -> int:
        """Estimated bytes of the finished calls waiting for their decision (their spans and their own objects): a
        walk over the threads with such calls, and the `task` rule's running sum."""
        n = self.tasks.held_bytes
        for k in self._waiting | self._holding:
            t = self._threads.get(k)
            if t is not None:
                n += sum(c.span.approx_size() + HELD_CALL_BYTES for c in (*t.waiting, *t.held) if c.span is not None)
        return n

    def _thread(self, pid: int, tid: int) -> _Thread:
        key = (pid, tid)
        t = self._threads.get(key)
        if t is None:
            t = self._threads[key] = _Thread()
            if len(self._threads) > self.max_threads:
                self.evict_oldest(1)
        else:
            self._threads.move_to_end(key)
        t.tick = self.tick
        return t

    # -- requests served ---------------------------------------------------------------------------------------

    def request_read(self, pid: int, tid: int, span_id: bytes, ts_ns: int = 0, stream: bool = False) -> None:
        """Thread `tid` read (at `ts_ns`) a request whose server span will have `span_id` (an HTTP/2 `stream`)."""
        t = self._thread(pid, tid)
        if stream and not t.reads_streams:
            t.reads_streams = True
            self._streams.add(pid)
        before = self._certain(t)
        if pid in self._pools or pid in self._streams:
            _bounded_put(self._read_at, span_id, ts_ns)
        unanswered = self._unanswered.setdefault(pid, OrderedDict())
        unanswered[span_id] = ts_ns
        if len(unanswered) > _MAX_UNANSWERED:
            unanswered.popitem(last=False)
            self._unanswered_lost.add(pid)  # a request still open was forgotten: no call may be decided without it
        t.open[span_id] = _turn_at(t, ts_ns)
        if t.turns is not None:
            t.touched[span_id] = ts_ns
        if len(t.open) > _MAX_OPEN:
            t.open.popitem(last=False)
        if not t.reading:
            t.run.clear()
        t.reading = True
        t.run.append(span_id)
        if len(t.run) > _MAX_OPEN:
            del t.run[0]
        if t.history is None and len(t.open) > 1:
            t.history = deque([(t.since_ns, before)], maxlen=_HISTORY)  # an event loop: only these pay for one
        self._took(t, before, ts_ns)

    def _took(self, t: _Thread, before: bytes | None, ts_ns: int) -> None:
        now = self._certain(t)
        if now != before:
            t.since_ns = ts_ns
            if t.history is not None:
                t.history.append((ts_ns, now))

    @staticmethod
    def _certain(t: _Thread) -> bytes | None:
        """The request this thread works for now, when it is certain."""
        # Span ids in `run` are distinct, so more than one of them open needs more than one open.
        if len(t.open) > 1 and sum(1 for r in t.run if r in t.open) > 1:
            return None
        return next(reversed(t.open)) if t.open else None

    def connected(self, pid: int, sock: int, began_ns: int) -> None:
        """A thread of `pid` opened client connection `sock` with a connect() that began at `began_ns`."""
        self._connects[(pid, sock)] = began_ns
        if len(self._connects) > _MAX_CONNECTS:
            self._connects.popitem(last=False)
        loops = self._loops.get(pid)
        if loops is None or len(loops) != 1:
            return  # which thread opened it is not known
        t = self._threads.get((pid, next(iter(loops))))
        if t is None or not t.reading or not t.open or t.lags is None or _learned(t.lags):
            return  # not right after a read, or a loop that calls turns after its reads
        last = next(reversed(t.open))
        touched = t.touched.get(last)
        turn = _turn_at(t, began_ns)
        if touched is not None and touched <= began_ns and turn is not None and _turn_at(t, touched) == turn:
            # A connect() in the turn of the loop's last read, after it: a call begun by the handler that read ran in
            # (Node.js runs it in the read's callback), as a call written then would be. Reads after it are a new run.
            before = self._certain(t)
            t.run = [last]
            t.reading = False
            self._took(t, before, began_ns)

    def request_done(self, pid: int, tid: int, span_id: bytes, ts_ns: int = 0, out: list[Span] | None = None) -> None:
        """The response to that request started (or it ended without one, at `ts_ns`): the thread no longer works
        for it. Calls it decides (`loop-order`) go to `out`, else out at the next flush."""
        if pid in self._pools:
            self._answered[span_id] = ts_ns
            if len(self._answered) > _MAX_ANSWERED:
                self._answered.popitem(last=False)
        t = self._threads.get((pid, tid))
        if t is not None:
            if t.turns is not None:
                self._loop_answered(t, span_id, ts_ns, out)
            t.open.pop(span_id, None)
            t.called_in.pop(span_id, None)
            t.touched.pop(span_id, None)

    def request_ended(self, pid: int, span_id: bytes, ts_ns: int) -> None:
        """The exchange of that request ended at `ts_ns` (its whole response written, or given up): its handler is
        done. A response begun is not enough: a streaming handler writes its head first and may call afterwards."""
        unanswered = self._unanswered.get(pid)
        if unanswered is not None:
            unanswered.pop(span_id, None)
        if pid in self._streams:
            _bounded_put(self._ended, span_id, ts_ns)

    def response_written(self, pid: int, tid: int, span_id: bytes, ts_ns: int, sock: int = -1) -> None:
        """Thread `tid` began writing (at `ts_ns`, on connection `sock`) the response to the request whose server span
        has `span_id`."""
        if pid not in self._pools and pid not in self._streams:
            return
        _bounded_put(self._responded, span_id, ts_ns)
        if pid in self._streams:
            self._writes += 1  # the span builder reports a write's responses in the order of their frames
            self._written[span_id] = (sock, ts_ns, self._writes)
            if len(self._written) > _MAX_RESPONDED:
                self._written.popitem(last=False)
        t = self._threads.get((pid, tid))
        read = self._read_at.get(span_id)
        if t is None or read is None:
            return
        for call in t.waiting:
            if call.answered and call.start_ns >= read and call.answered_ns <= ts_ns:
                t.writes_responses = not t.reads_streams  # answered its call, then a request other threads read
                call.responses += 1
                if call.response is None:
                    call.response, call.response_ns = span_id, ts_ns

    def requests_unseen(self, pid: int) -> None:
        """A server connection of `pid` was first seen after its start, or lost bytes: requests may be open that were
        never seen, so its open requests are not all known (no `elimination` there until it exits)."""
        self._unanswered_lost.add(pid)

    def elimination_allowed(self, pid: int) -> bool:
        """Whether every open request of `pid` is known, so that `elimination` may decide its workers' calls."""
        return pid not in self._unanswered_lost

    def message_read(self, pid: int, tid: int) -> None:
        """Thread `tid` read an MQTT delivery: its calls follow the message (the assembler's consumer-thread rule)."""
        self._thread(pid, tid).reads_messages = True

    # -- calls made ------------------------------------------------------------------------------------------

    def call_made(self, pid: int, tid: int, start_ns: int, sock: int | None = None,
                  out: list[Span] | None = None, contexts: tuple[int, ...] = ()) -> Call:
        """Thread `tid` wrote a request (on connection `sock`; in Python task `contexts`, if known): its cause now, or
        a Call that waits for its decision. A waiting call pushed out to make room is decided on what is known and its
        span, if finished, goes to `out`."""
        t = self._thread(pid, tid)
        call = Call(pid, tid, start_ns)
        if contexts and t.open:
            call.contexts, call.open_at_call = contexts, tuple(t.open)
        t.reading = False
        t.fresh = False
        opened = self._connects.pop((pid, sock), None) if sock is not None else None
        call.pos = opened if opened is not None else start_ns
        if t.turns is not None and self._by_turns(t, call, opened):
            return call
        run = tuple(r for r in t.run if r in t.open) if len(t.run) > 1 else ()
        then = _context_at(t, opened) if opened is not None and t.open else None
        if len(run) > 1:
            call.candidates = run  # decided when its response is read (response_read)
        elif t.turns is not None and len(t.open) > 1 and not self._in_turn(t, then, opened, call.start_ns):
            # An event loop's context holds for a call only in the turn it was taken: a call made turns later comes
            # from a continuation, which may be any open request's.
            call.candidates = tuple(t.open)
        elif then is not None and then in t.open:
            call.cause, call.via, call.decided = then, "event-loop" if len(t.open) > 1 else "thread", True
            self.stats.connect += 1
        elif t.open:
            call.cause = next(reversed(t.open))
            call.via = "thread" if len(t.open) == 1 else "event-loop"
            call.decided = True
            if call.turn >= 0:
                t.called_in.setdefault(call.cause, call.turn)
            if len(t.open) == 1:
                self.stats.thread += 1
            else:
                self.stats.event_loop += 1
        elif (pid in self._pools or pid in self._streams) and not t.reads_messages:
            # A thread serving none in a pool, or in a process whose requests are HTTP/2 streams read by other threads
            # (before any hand-off was seen): a worker. Its call waits for its decision rather than none being guessed.
            giver = self._threads.get((pid, t.handoff_from))
            if t.handoff is not None and (giver is None or t.handoff not in giver.open):
                t.handoff = None  # that request was answered before this call began: it did not cause it
            if t.calls_since_handoff == 0 and not t.handoff_conflict:
                call.handoff, call.handoff_ns = t.handoff, t.handoff_ns  # else stale, or one of two: not certain
            running = t.handoff is None or t.calls_since_handoff > 0  # took work without being handed it
            if pid in self._streams and self.elimination_allowed(pid):
                unanswered = self._unanswered.get(pid)
                open_now = tuple(r for r, read in unanswered.items() if read <= start_ns) if unanswered else ()
                if len(open_now) <= _MAX_CANDIDATES:
                    call.open_at_start = open_now
            starts = self._starts.setdefault(pid, deque(maxlen=_MAX_STARTS))
            starts.append((tid, start_ns, -1 if running else t.handoff_ns, t.handoff))
            t.calls_since_handoff += 1
            for other in t.waiting:
                if not other.answered:  # a thread writing streams for many threads: not a worker taking one item
                    other.concurrent = call.concurrent = True
            if len(t.waiting) >= _MAX_WAITING:
                # A busy worker's oldest waiting call is decided now rather than dropped: its span still goes out.
                self.stats.waiting_forced += 1
                oldest = t.waiting.pop(0)
                decision = self._by_evidence(oldest, final=True)
                assert decision is not None
                oldest.cause, oldest.via = decision
                self._settle(oldest, out)
            t.waiting.append(call)
            self._waiting.add((pid, tid))
        else:
            call.decided = True
        return call

    def response_read(self, call: Call, tid: int, ts_ns: int = 0) -> None:
        """The call's response is being read by `tid`: on an event loop that request is the current one again."""
        call.answered = True
        call.answered_ns = call.answered_ns or ts_ns
        call.own_answer = tid == call.tid
        t = self._threads.get((call.pid, tid))
        before = self._certain(t) if t is not None else None
        if call.candidates and not call.decided and (call.group is None or call.group.broken):
            self._decide_among(call)
        if call.decided and call.cause is not None:
            if t is not None and call.cause in t.open:
                t.open.move_to_end(call.cause)
                if t.turns is not None:
                    t.touched[call.cause] = ts_ns
                t.run = [call.cause]
                t.reading = False
        if t is not None:
            self._took(t, before, ts_ns)

    def _decide_among(self, call: Call) -> None:
        # A handler answers only after its calls were answered: a candidate answered already is not the one.
        t = self._threads.get((call.pid, call.tid))
        left = [r for r in call.candidates if t is not None and r in t.open]
        call.decided = True
        if len(left) == 1:
            call.cause, call.via = left[0], "event-loop"
            self.stats.event_loop += 1
            if t is not None and call.turn >= 0:
                t.called_in.setdefault(left[0], call.turn)
        else:
            call.via = "ambiguous"
            self.stats.ambiguous += 1

    def finish(self, call: Call, span: Span, end_ns: int, out: list[Span]) -> None:
        """The call's span is complete (its end at kernel time `end_ns`): out now if its cause is decided, else it
        waits for the decision."""
        call.end_ns = end_ns
        t = self._threads.get((call.pid, call.tid)) if call.turn >= 0 else None
        if t is not None:
            end_turn = _turn_at(t, end_ns)
            call.end_turn = -1 if end_turn is None else end_turn
            if call.decided and call.cause is not None and call.cause in t.solo:
                t.solo[call.cause] = max(t.solo[call.cause], call.end_turn) if call.end_turn >= 0 else -2
            if call.group is not None and not call.group.broken and not call.decided:
                # Held until the requests of its turn were all answered (`loop-order`), at most DECIDE_WAIT_NS.
                call.span, call.end_ns, call.deadline_ns = span, end_ns, end_ns + DECIDE_WAIT_NS
                t.held.append(call)
                self._holding.add((call.pid, call.tid))
                self._try_group(t, call.group, out)
                return
        if call.candidates and not call.decided:
            self._decide_among(call)
        if call.decided:
            self._out(call, span, out)
            return
        call.span = span
        call.deadline_ns = end_ns + DECIDE_WAIT_NS
        call.answered = True
        call.answered_ns = call.answered_ns or end_ns

    def _by_turns(self, t: _Thread, call: Call, opened: int | None) -> bool:
        """Decide an event loop's call by its distance in turns from the request's read, once the loop's distance is
        learned (see the module docstring); False leaves it to the other rules."""
        at = _turn_at(t, opened if opened is not None else call.start_ns)
        if at is None:
            return False
        call.turn = at
        live = [(r, read) for r, read in t.open.items()
                if read is not None and read <= at and t.called_in.get(r, at) == at]
        assert t.lags is not None
        t.lags.append(frozenset(at - read for _, read in live))
        lag = _learned(t.lags)
        if not lag:
            return False
        fits = [r for r, read in live if at - read == lag]
        if len(fits) == 1 and fits[0] not in t.called_in:
            t.solo[fits[0]] = -1  # alone in its calls' turn: their answers teach the answer-to-response distance
            if len(t.solo) > _MAX_SOLO:
                del t.solo[next(iter(t.solo))]  # one never answered (its connection dropped) is forgotten
        if len(t.open) < 2:
            return False
        if len(fits) == 1:
            call.cause, call.via, call.decided = fits[0], "loop-turn", True
            t.called_in.setdefault(fits[0], at)
            self.stats.loop_turn += 1
        else:
            call.candidates = tuple(fits) if fits else tuple(t.open)  # decided when answered, if it can be
            if len(fits) > 1:
                self._join_group(t, call, at, tuple(fits))
        return True

    def _join_group(self, t: _Thread, call: Call, at: int, fits: tuple[bytes, ...]) -> None:
        """Hold an event loop's call made in a turn whose calls may be for several requests, for `loop-order`."""
        group = t.groups.get(at)
        if group is None:
            group = t.groups[at] = _Group(fits, broken=len(fits) > _MAX_GROUP_FITS)
            if len(t.groups) > _MAX_GROUPS:
                t.groups.pop(next(iter(t.groups))).broken = True  # its calls are left to the answers, held or not
        call.group = group
        group.calls.append(call)
        if len(group.calls) > _MAX_GROUP_CALLS:
            group.broken = True

    def _loop_answered(self, t: _Thread, request: bytes, ts_ns: int, out: list[Span] | None) -> None:
        """An event loop began the response to `request`: learn from it, and decide the calls it was the last answer
        that `loop-order` waited for."""
        turn = _turn_at(t, ts_ns)
        last = t.solo.pop(request, None)
        assert t.answer_lags is not None
        grouped = [g for g in t.groups.values() if request in g.fits]
        if last is not None:
            if last >= 0 and turn is not None:
                t.answer_lags.append(frozenset((turn - last,)))  # every call of it is known: they fit its turn alone
                t.calls_each += 1
            else:
                t.answer_lags.clear()  # its calls' answers are not all placed in turns: learn again
        elif grouped:
            # Its last call is one of its turn's calls answered by now: the distance is one of theirs.
            ends = frozenset(turn - c.end_turn for g in grouped for c in g.calls
                             if turn is not None and 0 <= c.end_turn <= turn)
            if ends:
                t.answer_lags.append(ends)
        elif request not in t.called_in and t.lags is not None and _learned(t.lags) is not None:
            t.calls_each = 0  # answered without a call in its turn: requests do not all make one
        for at, group in list(t.groups.items()):
            if request in group.fits:
                group.done[request] = (-1 if turn is None else turn, ts_ns)
                self._try_group(t, group, out)

    def _try_group(self, t: _Thread, group: _Group, out: list[Span] | None) -> None:
        """Decide the calls of one turn (`loop-order`) once all their requests were answered and all of them were."""
        if group.broken or len(group.done) < len(group.fits) or any(c.span is None for c in group.calls):
            return
        for at, g in list(t.groups.items()):
            if g is group:
                del t.groups[at]
        group.broken = True  # decided once
        calls = sorted(group.calls, key=_pos_order)
        lag = _answer_lag(t)
        picks: list[int] | None = None
        if lag is not None and all(c.end_turn >= 0 for c in calls) and all(d[0] >= 0 for d in group.done.values()):
            picks = _loop_order([c.end_turn for c in calls], [c.end_ns for c in calls],
                                [group.done[r][0] - lag for r in group.fits], [group.done[r][0] for r in group.fits],
                                [group.done[r][1] for r in group.fits], t.calls_each >= _LAG_CALLS)
            if picks is None:
                self.stats.loop_order_conflicts += 1  # no assignment fits: a pattern learned does not hold here
                t.calls_each = 0
                if t.answer_lags is not None:
                    t.answer_lags.clear()
        for i, c in enumerate(calls):
            if c.decided:
                continue
            pick = picks[i] if picks is not None else -1
            c.decided = True
            if pick >= 0:
                c.cause, c.via = group.fits[pick], "loop-order"
                self.stats.loop_order += 1
                continue
            # A handler answers only after its calls were answered: a request answered first did not make it.
            left = [r for r in group.fits if group.done[r][1] > c.answered_ns] if lag is None else []
            if len(left) == 1:
                c.cause, c.via = left[0], "event-loop"
                self.stats.event_loop += 1
            else:
                c.via = "ambiguous"
                self.stats.ambiguous += 1
        if out is not None:
            self._release(t, out, 0, False)

    def _release(self, t: _Thread, out: list[Span], now_ns: int, force: bool) -> None:
        """Send the held calls of `t` that are decided, and decide those that waited too long (`ambiguous`)."""
        keep: list[Call] = []
        for c in t.held:
            if not c.decided and (force or c.deadline_ns <= now_ns):
                c.decided, c.via = True, "ambiguous"
                self.stats.ambiguous += 1
            if c.decided and c.span is not None:
                self._out(c, c.span, out)
                c.span = None
            else:
                keep.append(c)
        t.held = keep

    @staticmethod
    def _in_turn(t: _Thread, then: bytes | None, opened: int | None, start_ns: int) -> bool:
        """Whether the context the rules below take (at the connect(), else now) was touched in the same loop turn."""
        if then is None and opened is not None and _turn_at(t, opened) != _turn_at(t, start_ns):
            # The first call on a connection opened turns before (Node.js writes it once the connection is up), with
            # the context at its connect() no longer known: what the loop read since says nothing of it.
            return False
        ctx, at = (then, opened) if then is not None and opened is not None else (next(reversed(t.open)), start_ns)
        touched = t.touched.get(ctx)
        if touched is None or touched > at:
            return False
        turn = _turn_at(t, at)
        return turn is not None and _turn_at(t, touched) == turn

    def turn(self, ev: TurnEvent, out: list[Span]) -> None:
        """A thread returned from its epoll wait: a turn of its event loop begins."""
        self.stats.turns += 1
        t = self._thread(ev.pid, ev.tid)
        if t.turns is None:
            self._loops.setdefault(ev.pid, set()).add(ev.tid)
            t.turns = deque(maxlen=_TURNS)
            t.lags = deque(maxlen=_LAG_CALLS)
            t.answer_lags = deque(maxlen=_LAG_CALLS)
        t.turn_no += 1
        t.turns.append((ev.ts_ns, t.turn_no))

    # -- wakeups ---------------------------------------------------------------------------------------------

    def wakeup(self, ev: WakeupEvent, out: list[Span]) -> None:
        """One thread of a process woke another: a hand-off of work, or of a result."""
        self.stats.wakeups += 1
        pid = ev.pid
        waker = self._threads.get((pid, ev.waker_tid))
        wakee = self._threads.get((pid, ev.wakee_tid))
        if wakee is not None and wakee.waiting and ev.wakee_since_ns:
            for c in wakee.waiting:  # asleep from `since` on, a worker queues no response (`write-order`)
                if c.open_at_start is not None and c.answered and c.answered_ns <= ev.wakee_since_ns:
                    if c.sleeps is None:
                        c.sleeps = []
                    if len(c.sleeps) < _MAX_SLEEPS:
                        c.sleeps.append((ev.wakee_since_ns, ev.ts_ns))
        if waker is not None and waker.waiting and ev.wakee_since_ns:
            # The result of answered calls handed to a thread that slept through all of them: it waited for them.
            # (A request thread preempted as it released its lock falls asleep only after the worker's call began:
            # that call is decided by its hand-off when its wait is over, see flush.) Any other wakeup of a thread
            # (a lock, the GIL) decides nothing: waking a thread that was awake during the call proves nothing.
            done = [c for c in waker.waiting if c.answered and c.start_ns >= ev.wakee_since_ns]
            if done and wakee is not None and (len(wakee.open) > 1 or wakee.reads_streams):
                done = []  # a thread serving several requests (one reading many HTTP/2 streams): not one waiting
            # A thread with several calls in flight at once (HTTP/2 streams of many requests on one I/O thread) may
            # wake any of their requesters: it hands a result back only where its call was alone.
            done = [c for c in done if _alone(c, waker.waiting)]
            if wakee is not None and len(wakee.open) == 1 and not wakee.reads_streams:
                # A request thread that fell asleep only after the call began and slept through its answer: the first
                # such thread the worker wakes once answered is its requester, or one waiting for a lock (the GIL).
                # Alone that decides nothing; but a hand-off naming another request is then not certain.
                woken = next(iter(wakee.open))
                # A request whose result another worker handed back already waits for none of this one's: woken
                # now, it waited for a lock (the GIL) — neither its requester nor a contest.
                ran = self._worked_by.get(woken, ev.waker_tid)
                for c in waker.waiting if ran == ev.waker_tid else ():
                    if (c.answered and c.start_ns < ev.wakee_since_ns <= c.answered_ns
                            and not self._moved_on(c, ev.ts_ns)):
                        if c.woke is None:
                            c.woke = woken
                        elif c.woke != woken:
                            c.woke_others = True
            # Handed to a thread that serves a request: that request. A thread that serves none (another worker,
            # grpcio's own threads) was woken for a lock or the GIL, not handed a result: the other rules decide at
            # flush, else `ambiguous`.
            if done and wakee is not None and wakee.open:
                request = next(reversed(wakee.open))
                for c in done:
                    self._decide(waker, c, request, "wakeup", out)
        if waker is not None and waker.handoff is not None and waker.handoff_from == ev.wakee_tid and not waker.fresh:
            # The worker handed its result back to the thread that gave it the work. (A new thread waking its creator
            # before it made any call hands nothing back: it tells its creator it started.)
            waker.handoff = None
        if waker is not None and waker.open and (wakee is None or not wakee.open):
            # A request thread wakes a thread that serves none: work handed to a pool worker.
            self._pools.add(pid)
            if waker.reads_streams:
                return  # a thread reading many streams: which one it handed on is not known
            # The latest hand-off wins: an idle worker woken now takes work now (an earlier one it did not take
            # went to a worker that was still running).
            target = wakee if wakee is not None else self._thread(pid, ev.wakee_tid)
            request = next(reversed(waker.open))
            if target.calls_since_handoff and any(not c.answered for c in target.waiting):
                return  # a worker whose call is in flight is busy: this wakes it for a lock (the GIL), not work
            if target.handoff is not None and target.calls_since_handoff == 0 and ev.wakee_since_ns >= target.handoff_ns:
                # Woken again before its call, from a sleep that began after it was handed work: it blocked on a lock
                # on its way to that work (the queue's mutex, the GIL), which its holder released; not more work.
                return
            target.handoff_conflict = (target.handoff is not None and target.calls_since_handoff == 0
                                       and target.handoff != request)
            target.fresh = wakee is None
            target.handoff = request
            target.handoff_from = ev.waker_tid
            target.handoff_ns = ev.ts_ns
            target.calls_since_handoff = 0

    def _moved_on(self, call: Call, ts_ns: int) -> bool:
        """Whether the worker began another call between `call` and `ts_ns`: a worker hands a result back before it
        takes the next work, so what it wakes after that is the next work's hand-back (or a lock), not this one's."""
        starts = self._starts.get(call.pid, ())
        return any(tid == call.tid and call.start_ns < start < ts_ns for tid, start, _, _ in starts)

    def _decide(self, t: _Thread, call: Call, cause: bytes | None, via: str, out: list[Span]) -> None:
        t.waiting.remove(call)
        if not t.waiting:
            self._waiting.discard((call.pid, call.tid))
        call.cause, call.via = cause, via
        self._settle(call, out)

    def _settle(self, call: Call, out: list[Span] | None) -> None:
        call.decided = True
        if call.via == "ambiguous" and call.handoff is not None:
            self.stats.handoff_unsure += 1
        elif call.cause is None:
            self.stats.undecided += 1
        elif call.via == "wakeup":
            self.stats.wakeup += 1
        elif call.via == "handoff":
            self.stats.handoff += 1
        elif call.via == "handback":
            self.stats.handback += 1
        elif call.via == "response":
            self.stats.response += 1
        elif call.via == "elimination":
            self.stats.elimination += 1
        elif call.via == "write-order":
            self.stats.write_order += 1
        if call.cause is None and call.open_at_start is not None:
            self._unresolved.setdefault(call.pid, deque(maxlen=_MAX_UNRESOLVED)).append(call)
        if call.cause is not None and call.via in ("response", "elimination", "write-order"):
            _bounded_put(self._ran_by, call.cause, call.tid)
        if call.cause is not None and call.via in ("wakeup", "handoff", "handback"):
            _bounded_put(self._worked_by, call.cause, call.tid)
        if call.span is not None and out is not None:
            self._out(call, call.span, out)
            call.span = None

    # -- Python task contexts (`task`) -------------------------------------------------------------------------

    def _out(self, call: Call, span: Span, out: list[Span]) -> None:
        """A decided call's span goes out, unless its task contexts may still name its request: then it waits for
        its handler's response (tasks.py)."""
        if call.open_at_call:
            cause, depth = self.tasks.match(call.pid, call.contexts, call.open_at_call, call.end_ns)
            if cause is None or depth > _NEAR_CONTEXT:
                for h in self.tasks.hold(call.pid, call.contexts, call.open_at_call, call.end_ns,
                                         call.end_ns + DECIDE_WAIT_NS, (call, span), cause, depth,
                                         span.approx_size()):
                    self._release_held(h.payload, h.cause, out, h.depth)
                return
            self._by_task(call, cause)
        _mark(call, span)
        out.append(span)

    def _by_task(self, call: Call, cause: bytes) -> None:
        self.tasks.stats.decided += 1
        if call.cause != cause:
            self.tasks.stats.overrode += 1
        call.cause, call.via = cause, "task"

    def _release_held(self, payload: tuple[Call, Span], cause: bytes | None, out: list[Span], depth: int = -1) -> None:
        call, span = payload
        if cause is not None:
            self._by_task(call, cause)
            if depth > _NEAR_CONTEXT:
                self.tasks.stats.deep += 1
        else:
            self.tasks.stats.unmatched += 1
        _mark(call, span)
        out.append(span)

    def handled(self, pid: int, span_id: bytes, contexts: tuple[int, ...], ts_ns: int, out: list[Span]) -> None:
        """The response to the request of `span_id` began at `ts_ns`, written in Python task `contexts`: the calls
        held for it go out."""
        for h in self.tasks.handled(pid, span_id, contexts, ts_ns):
            self._release_held(h.payload, h.cause, out, h.depth)

    def flush(self, now_ns: int, out: list[Span], stale_ns: int, force: bool = False) -> None:
        """Decide the finished calls that waited DECIDE_WAIT_NS (kernel time `now_ns`) for a hand-back: the request
        of the thread that handed them their work, if any, else none. Calls whose exchange never finished (dropped
        with its connection) are forgotten after `stale_ns`."""
        for key in list(self._holding):
            held = self._threads.get(key)
            if held is not None:
                self._release(held, out, now_ns, force)
            if held is None or not held.held:
                self._holding.discard(key)
        due: list[tuple[int, int, _Thread, Call]] = []
        for key in list(self._waiting):
            t = self._threads.get(key)
            if t is None:
                self._waiting.discard(key)
                continue
            for call in list(t.waiting):
                if call.span is not None and (force or call.deadline_ns <= now_ns):
                    due.append((call.deadline_ns, len(due), t, call))
                elif call.span is None and (force or call.start_ns + stale_ns <= now_ns):
                    self._decide(t, call, None, "", out)
        # In the order they were due: a call decided by elimination builds on the decisions of the calls before it.
        due.sort(key=_due_order)
        again: list[tuple[int, int, _Thread, Call]] = []
        for item in due:
            t, call = item[2], item[3]
            decision = self._by_evidence(call, final=force or call.parked)
            if decision is None:
                call.parked = True  # other workers' calls of that time are decided meanwhile; then it is final
                call.deadline_ns += DECIDE_WAIT_NS
                if call.deadline_ns <= now_ns:
                    again.append(item)  # those were due in this pass too: decided above
                continue
            self._decide(t, call, decision[0], decision[1], out)
        for _, _, t, call in again:
            final = self._by_evidence(call, final=True)
            assert final is not None
            self._decide(t, call, final[0], final[1], out)
        for h in self.tasks.due(now_ns, force):
            self._release_held(h.payload, h.cause, out, h.depth)

    def forget_process(self, pid: int, out: list[Span]) -> None:
        """The process ended: decide what waits, forget its threads."""
        for key in [k for k in self._threads if k[0] == pid]:
            t = self._threads.pop(key)
            self._waiting.discard(key)
            self._holding.discard(key)
            self._release(t, out, 0, True)
            for call in t.waiting:
                decision = self._by_evidence(call, final=True)
                assert decision is not None
                call.cause, call.via = decision
                self._settle(call, out)
        for h in self.tasks.forget_process(pid):
            self._release_held(h.payload, h.cause, out, h.depth)
        self._pools.discard(pid)
        self._loops.pop(pid, None)
        self._unanswered.pop(pid, None)
        self._unanswered_lost.discard(pid)
        self._streams.discard(pid)
        self._starts.pop(pid, None)
        self._unresolved.pop(pid, None)
        self._unordered.discard(pid)

    def _by_evidence(self, call: Call, final: bool) -> tuple[bytes | None, str] | None:
        """A worker's call nobody waited for: the response its thread wrote, else the hand-off, else the one request
        open at it that no other worker ran; where two speak and disagree, ambiguous. None: put off (not `final`),
        as other workers' calls still to be decided may settle it."""
        handed = self._by_handoff(call)
        answered = self._by_response(call) if call.response is not None else None
        if (answered is None and handed[0] is None and not final and call.handoff is not None
                and call.woke is not None and call.woke != call.handoff):
            return None  # contested: the other worker's call, decided meanwhile, may tell which one it ran
        if answered is None and handed[0] is None and call.open_at_start is not None:
            left = self._by_elimination(call)
            if len(left) > 1:
                ordered = self._by_write_order(call, left)
                if ordered is not None:
                    return ordered, "write-order"
                if not final:
                    return None
            if len(left) == 1:
                return left[0], "elimination"
        if call.response is not None and answered is None:
            self.stats.response_unsure += 1
        if answered is None:
            return handed
        if handed[0] is not None and handed[0] != answered:
            return None, "ambiguous"
        return answered, "response"

    def _by_elimination(self, call: Call) -> list[bytes]:
        """The requests a worker's call may have been made for: open when it began, not ended before its answer came
        (a handler ends its response after its calls), and not run by another worker (a request runs on one worker)."""
        t = self._threads.get((call.pid, call.tid))
        if t is None or not t.writes_responses or call.concurrent or call.open_at_start is None:
            return []  # not known to be a worker running handlers: its call may be for no request at all
        answered = call.answered_ns or call.end_ns
        left = []
        for request in call.open_at_start:
            at = self._ended.get(request)
            if at is not None and at < answered:
                continue
            if self._ran_by.get(request, call.tid) != call.tid:
                continue
            left.append(request)
        return left

    def _by_write_order(self, call: Call, left: list[bytes]) -> bytes | None:
        """The request of `left` a worker's call was made for, from the order one write carried their responses in
        (module docstring); None when that order does not decide it."""
        if call.pid in self._unordered or len(left) > _MAX_ORDERED:
            return None
        writes = [self._written.get(r) for r in left]
        first = writes[0]
        if first is None or first[0] < 0 or any(w is None or w[0] != first[0] for w in writes):
            return None  # not all written on one connection: no one queue orders them
        at = max(w[1] for w in writes if w is not None)
        first_read = min(self._read_at.get(r, 0) for r in left)
        wanted = set(left)
        # The workers that ran them: one call each whose requests left lie among them, as many as there are requests.
        # (A call decided for a request is not among them: that request is known to be its worker's.)
        runs: dict[int, Call] = {}
        weighed = 0
        for c in self._undecided(call.pid):
            if c is not call and (c.start_ns < first_read or not c.answered or c.answered_ns >= at):
                continue  # begun before any of them was read, or answered after they went out: it ran none of them
            weighed += 1
            if weighed > _MAX_WEIGHED:
                return None
            mine = left if c is call else self._by_elimination(c)
            if not mine or not wanted.issuperset(mine):
                continue
            if c.tid in runs:
                return None  # two calls of one worker among them: which request each was for is not known
            runs[c.tid] = c
        if len(runs) != len(left) or runs.get(call.tid) is not call:
            return None
        # Each worker queued its response after its call's answer (a synchronous handler reads it all before it
        # returns), and before the last of these writes; asleep at that write, before its sleep began: its own
        # response went out by then, and it queued nothing while asleep.
        spans: list[tuple[int, int, Call]] = []
        for c in runs.values():
            since = c.end_ns if c.own_answer and c.end_ns else c.answered_ns
            until = next((began for began, woken in c.sleeps or () if began < at < woken), at)
            if until <= since:
                return None
            spans.append((since, until, c))
        spans.sort(key=_span_order)
        if any(spans[i][1] >= spans[i + 1][0] for i in range(len(spans) - 1)):
            return None  # two workers may have queued in either order
        order = sorted(left, key=lambda r: self._written[r][2])
        mine_now = None
        for (_, _, c), request in zip(spans, order):
            if request not in (left if c is call else self._by_elimination(c)):
                self._unordered.add(call.pid)  # the order gave a worker a request it cannot have run: not its order
                self.stats.write_order_conflicts += 1
                return None
            if c is call:
                mine_now = request
        return mine_now

    def _undecided(self, pid: int) -> Iterator[Call]:
        """The calls of `pid`'s workers that wait for their decision, and the last ones left without a request."""
        for key in self._waiting:
            t = self._threads.get(key) if key[0] == pid else None
            if t is not None:
                yield from (c for c in t.waiting if c.open_at_start is not None)
        yield from self._unresolved.get(pid, ())

    def _by_response(self, call: Call) -> bytes | None:
        """The request whose response the call's thread wrote after the call, when that is certain (module
        docstring)."""
        if call.responses != 1 or call.response is None:
            return None
        since, until = call.end_ns or call.answered_ns, call.response_ns  # from its whole answer (the body may lag)
        for request, at in self._responded.items():
            # The call's own request, answered by another thread while this one moved on to the next request (not
            # one another worker is known to have run).
            if (since < at < until and request != call.response and self._read_at.get(request, until) <= call.start_ns
                    and self._ran_by.get(request, call.tid) == call.tid):
                return None
        return call.response

    def _by_handoff(self, call: Call) -> tuple[bytes | None, str]:
        """A worker's call nobody waited for: the request that handed it the work, when no other worker can have
        taken that work; without a hand-off, the one requester its result went to (`handback`); else ambiguous."""
        if call.handoff is None and not call.concurrent:
            return self._by_handback(call)
        if call.handoff is None or call.concurrent:
            return None, "ambiguous"
        woke = call.woke
        if woke is not None and woke != call.handoff:
            # Hand-off and hand-back name two requests (two hand-offs crossed: each worker took the other's item; or
            # the hand-back was a lock wakeup). A request runs on one worker: where another worker is known to have
            # run one of the two, the other is this call's.
            handed_elsewhere = self._ran_elsewhere(call.handoff, call.tid)
            woke_elsewhere = self._ran_elsewhere(woke, call.tid)
            partner = None if handed_elsewhere or woke_elsewhere else self._crossed(call, woke)
            if (handed_elsewhere or partner is not None) and not woke_elsewhere:
                # The worker that ran this hand-off's request (or whose hand-back went to it, having been handed the
                # request this one's hand-back went to: the two crossed) took the other item: no rival.
                back = self._by_handback(call, self._worked_by.get(call.handoff) if partner is None else partner)
                if back[0] is not None:
                    self.stats.contest_settled += 1
                return back
            if not woke_elsewhere or handed_elsewhere:
                return None, "ambiguous"
            self.stats.contest_settled += 1
            woke = None  # a lock wakeup: the hand-off is judged alone
        if woke == call.handoff:
            # Handed the work by that request's thread, and once answered it first woke that same thread, asleep
            # through the answer: where another worker took that work, its requester would wait for that worker
            # instead, and this worker's result would go to the request it did take.
            return call.handoff, "handoff"
        end = call.end_ns or call.start_ns
        rivals: set[bytes] = set()
        for tid, start, handed, request in self._starts.get(call.pid, ()):
            if tid == call.tid:
                continue
            if handed < 0 and call.handoff_ns < start <= end:
                return None, "ambiguous"  # a running worker dequeued while this hand-off was pending or after
            if handed >= 0 and handed < call.start_ns and call.handoff_ns < start and request is not None:
                rivals.add(request)  # two hand-offs pending at once: either worker may have taken either
        rivals.discard(call.handoff)
        if rivals:
            # A request thread waits for the work it handed: a request answered before this call was not its.
            left = [r for r in (call.handoff, *rivals) if not 0 < self._answered.get(r, 0) < end]
            if len(left) != 1:
                return None, "ambiguous"
            return left[0], "handoff"
        return call.handoff, "handoff"


    def _crossed(self, call: Call, woke: bytes) -> int | None:
        """Another worker whose waiting call crossed this one: handed the work of the request this call's hand-back
        went to, its own hand-back went to this call's hand-off (both workers took the other's item); its thread."""
        for key in self._waiting:
            t = self._threads.get(key) if key[0] == call.pid and key[1] != call.tid else None
            for c in t.waiting if t is not None else ():
                if c.handoff == woke and c.woke == call.handoff and not c.woke_others and not c.concurrent:
                    return key[1]
        return None

    def _ran_elsewhere(self, request: bytes, tid: int) -> bool:
        """Whether a worker other than `tid` is known to have run `request` (a call of it decided by its wakeup,
        hand-off or hand-back)."""
        return self._worked_by.get(request, tid) != tid

    def _by_handback(self, call: Call, crossed: int | None = None) -> tuple[bytes | None, str]:
        """A worker that took its work running (no hand-off) and whose requester fell asleep after the call began: the
        requester waits for the result, so the worker wakes it once answered. A thread woken for a lock (the GIL) looks
        the same, so this decides only where the worker woke exactly one such request's thread before the decision
        (the requester is always among them: only the worker's result ends its wait), and no other worker was handed
        that request's work or had a call decided for it."""
        woke = call.woke
        if (woke is None or call.woke_others or call.pid in self._streams
                or self._worked_by.get(woke, call.tid) != call.tid):
            return None, "ambiguous"
        for tid, _, _, request in self._starts.get(call.pid, ()):
            if request == woke and tid != call.tid and tid != crossed:
                return None, "ambiguous"
        return woke, "handback"


def _due_order(item: tuple[int, int, _Thread, Call]) -> tuple[int, int]:
    return item[0], item[1]


def _span_order(item: tuple[int, int, Call]) -> tuple[int, int]:
    return item[0], item[1]


def _turn_at(t: _Thread, ts_ns: int) -> int | None:
    """The number of the loop turn thread `t` was in at `ts_ns`, if it is an event loop and that is still known."""
    if not t.turns or ts_ns < t.turns[0][0]:
        return None
    for start, number in reversed(t.turns):
        if start <= ts_ns:
            return number
    return None


def _pos_order(call: Call) -> int:
    return call.pos


def _answer_lag(t: _Thread) -> int | None:
    """The turns from a request's last answer to its response on this loop, when its last requests all agree."""
    return _learned(t.answer_lags) if t.answer_lags is not None else None


def _loop_order(ends: list[int], ends_ns: list[int], last: list[int], done: list[int], done_ns: list[int],
                every: bool) -> list[int] | None:
    """For one turn's calls (in the order they began, with the turns and times their answers ended) and the
    requests read together before it (in the order read; the turn the last answer of each must have ended in, the
    turn and time its response began): the request each call was made for, -1 where the assignments that fit differ;
    None when none fits. Those that fit give each request the calls between the ones of the requests read before and
    after it (a loop runs what is ready first in, first out), a request's last answer ends in its `last` turn, and two
    requests answered in one turn were answered in the order their last answers ended; with `every`, each request
    made a call. Bounded by _MAX_ASSIGN steps, past which nothing is decided."""
    n, k = len(ends), len(last)
    seen: list[set[int]] = [set() for _ in range(n)]
    picks = [0] * n
    found = 0
    steps = 0
    # Depth-first over non-decreasing assignments: stack of (call index, lowest request allowed, next to try).
    stack: list[tuple[int, int]] = [(0, 0)]
    while stack:
        steps += 1
        if steps > _MAX_ASSIGN:
            return [-1] * n
        i, j = stack.pop()
        if j >= k:
            continue
        stack.append((i, j + 1))  # the next request for call i, once this one is explored
        if ends[i] > last[j]:
            continue  # answered after the turn its request's last answer ended in: not that request's
        picks[i] = j
        if i + 1 < n:
            stack.append((i + 1, j))
            continue
        if _fits(picks, ends, ends_ns, last, done, done_ns, every):
            found += 1
            for c in range(n):
                seen[c].add(picks[c])
    if not found:
        return None
    return [next(iter(v)) if len(v) == 1 else -1 for v in seen]


def _fits(picks: list[int], ends: list[int], ends_ns: list[int], last: list[int], done: list[int],
          done_ns: list[int], every: bool) -> bool:
    k = len(last)
    end_turn = [-1] * k
    end_ns = [-1] * k
    for c, j in enumerate(picks):
        if ends_ns[c] > end_ns[j]:
            end_ns[j] = ends_ns[c]
        if ends[c] > end_turn[j]:
            end_turn[j] = ends[c]
    for j in range(k):
        if end_ns[j] < 0:
            if every:
                return False
            continue
        if end_turn[j] != last[j]:
            return False
        for other in range(j + 1, k):
            if end_ns[other] >= 0 and done[other] == done[j] and (done_ns[j] < done_ns[other]) != (
                    end_ns[j] < end_ns[other]):
                return False
    return True


def _learned(lags: deque[frozenset[int]]) -> int | None:
    """The distance in turns every one of the loop's last calls could have: its read-to-call path, when there is
    exactly one."""
    if len(lags) < (lags.maxlen or 0):
        return None
    common = frozenset.intersection(*lags)
    return next(iter(common)) if len(common) == 1 else None


def _context_at(t: _Thread, ts_ns: int) -> bytes | None:
    """The request thread `t` certainly worked for at `ts_ns`, if its history reaches back that far."""
    for at, context in reversed(t.history or ()):
        if at <= ts_ns:
            return context
    return None


def _alone(call: Call, calls: list[Call]) -> bool:
    """Whether no other of a thread's calls was in flight while `call` was."""
    end = call.end_ns or call.answered_ns or _NEVER
    return not any(c is not call and c.start_ns < end and call.start_ns < (c.end_ns or c.answered_ns or _NEVER)
                   for c in calls)


def _bounded_put(table: OrderedDict[bytes, int], key: bytes, value: int) -> None:
    table[key] = value
    if len(table) > _MAX_RESPONDED:
        table.popitem(last=False)


def _mark(call: Call, span: Span) -> None:
    if call.cause is not None:
        span.attributes[CAUSE] = call.cause
        span.attributes[CAUSE_VIA] = call.via
    elif call.via == "ambiguous":
        span.attributes[CAUSE_VIA] = call.via
