"""Calls of a Python event loop decided by the asyncio task contexts they were written in (tasks.py, `task`): the
nearest handling context in a call's chain names its exchange, where the kernel's own orders cannot tell."""
from __future__ import annotations

from edge.model import SpanKind
from edge.sources.ebpf.events import Endpoint, PyContextEvent, Role
from edge.sources.ebpf.spans.causes import CAUSE, CAUSE_VIA, DECIDE_WAIT_NS
from edge.sources.ebpf.builder_state import BuilderState
from edge.sources.ebpf.spans.tasks import HELD_CALL_BYTES, LONG_WAIT_NS, TaskContexts

from ._helpers import CLI, IN, OUT, builder, data, req, resp

DB = Endpoint("10.0.0.7", 5432)
PID = 100
TID = 101
A, B = 0xA000, 0xB000  # the handlers' task contexts (aiohttp runs each request in a task)
CONN = 0xC000  # what both were copied from


def read(b, sock, ts, rid):
    return b.feed([data(sock, IN, ts, req(target=f"/api?rid={rid}"), pid=PID, tid=TID,
                        remote=Endpoint("10.0.0.9", 50000 + sock))])


def answer(b, sock, ts, contexts):
    """The response to the request on `sock`, written in `contexts` (none: not known)."""
    evs = [PyContextEvent(ts, PID, TID, sock, contexts)] if contexts else []
    evs.append(data(sock, OUT, ts, resp(), pid=PID, tid=TID, prev_bytes=len(req()), prev_end=ts - 500,
                    remote=Endpoint("10.0.0.9", 50000 + sock)))
    return b.feed(evs)


def call(b, sock, ts, contexts):
    """A call on client connection `sock`, written in `contexts`, answered 1 µs later."""
    r = req(target=f"/db?c={sock}")
    peer = dict(pid=PID, tid=TID, role=Role.CLIENT, local=Endpoint(CLI.addr, 40000 + sock), remote=DB)
    out = b.feed([PyContextEvent(ts, PID, TID, sock, contexts), data(sock, OUT, ts, r, **peer)] if contexts
                 else [data(sock, OUT, ts, r, **peer)])
    return out + b.feed([data(sock, IN, ts + 1_000, resp(), prev_bytes=len(r), prev_end=ts + 50, **peer)])


def servers(spans):
    return {s.attributes["url.query"]: s for s in spans if s.kind == SpanKind.SERVER}


def clients(spans):
    return {s.attributes["url.query"]: s for s in spans if s.kind == SpanKind.CLIENT}


def test_calls_of_requests_read_together_follow_their_task_contexts():
    """The loop read a and b back to back: by the kernel's orders either handler may have made either call (the
    second is `ambiguous` without contexts). Their task contexts name their handlers."""
    b = builder()
    out = read(b, 1, 1_000, "a") + read(b, 2, 1_100, "b")
    out += call(b, 10, 2_000, (0x10, B, CONN)) + call(b, 11, 2_100, (0x11, A, CONN))
    out += answer(b, 2, 9_000, (B, CONN)) + answer(b, 1, 9_500, (A, CONN))
    s, c = servers(out), clients(out)
    assert c["c=10"].attributes[CAUSE] == s["rid=b"].span_id and c["c=10"].attributes[CAUSE_VIA] == "task"
    assert c["c=11"].attributes[CAUSE] == s["rid=a"].span_id and c["c=11"].attributes[CAUSE_VIA] == "task"
    assert b.causes.tasks.stats.decided == 2 and b.pending_count == 0


def test_without_contexts_the_same_calls_are_left_ambiguous():
    """The same exchanges with no contexts (another runtime, an unsupported interpreter): the kernel's rules stand."""
    b = builder()
    out = read(b, 1, 1_000, "a") + read(b, 2, 1_100, "b")
    out += call(b, 10, 2_000, ()) + call(b, 11, 2_100, ())
    out += answer(b, 2, 9_000, ()) + answer(b, 1, 9_500, ())
    vias = {c.attributes.get(CAUSE_VIA) for c in clients(out).values()}
    assert "task" not in vias and b.causes.tasks.stats.decided == 0


def test_contexts_override_the_request_the_loop_read_last():
    """a's handler calls again after the loop read b: the kernel's `event-loop` gives that call to b, its context
    to a."""
    b = builder()
    out = read(b, 1, 1_000, "a")
    out += call(b, 10, 2_000, (0x10, A, CONN))
    out += read(b, 2, 3_000, "b")
    out += call(b, 11, 4_000, (0x11, A, CONN))
    out += answer(b, 2, 9_000, (B, CONN)) + answer(b, 1, 9_500, (A, CONN))
    s, c = servers(out), clients(out)
    assert c["c=11"].attributes[CAUSE] == s["rid=a"].span_id and c["c=11"].attributes[CAUSE_VIA] == "task"
    assert b.causes.tasks.stats.overrode >= 1


def test_a_reused_context_address_of_an_answered_request_names_nothing():
    """The address of an earlier handler's context, freed and reused: that exchange ended before the call began,
    so it is not the call's. The call waits for its handler at most DECIDE_WAIT_NS, then keeps the kernel's
    decision."""
    b = builder()
    out = read(b, 1, 1_000, "old") + answer(b, 1, 1_500, (A, CONN))
    out += read(b, 2, 2_000, "b")
    out += call(b, 10, 3_000, (A, B))  # a task whose context got old's address, copied from b's handler
    assert not clients(out)  # waits for a handler's response
    out += answer(b, 2, 9_000, (0xD000,))  # b's handler context is not in the chain as known: nothing names it
    out += b.flush(5_000 + DECIDE_WAIT_NS)  # the answer ended at 5 µs
    (c,) = clients(out).values()
    assert c.attributes[CAUSE] == servers(out)["rid=b"].span_id and c.attributes[CAUSE_VIA] == "thread"
    assert b.causes.tasks.stats.unmatched == 1 and b.causes.tasks.stats.decided == 0


def test_a_client_process_serving_nothing_does_not_wait():
    """Contexts of a thread with no request open (a plain client): its calls go out at once."""
    b = builder()
    out = call(b, 10, 2_000, (0x10, CONN))
    assert len(clients(out)) == 1 and b.causes.tasks.waiting() == 0


def test_chains_are_cut_at_a_repeated_context():
    """A stale edge that leads back into the chain is no ancestry: what follows is dropped, counted."""
    t = TaskContexts()
    t.seen(PyContextEvent(5, PID, TID, 1, (1, 2, 3, 2, 9)))
    assert t.chain(PID, TID, 5) == (1, 2, 3) and t.stats.cut == 1
    assert t.chain(PID, TID, 5) == ()  # taken once


def test_held_calls_are_bounded_and_released_with_their_process():
    t = TaskContexts()
    for i in range(1100):
        released = t.hold(PID, (i,), (b"r",), i, 10**12, i)
    assert [h.payload for h in released] == [1100 - 1024 - 1] and t.stats.held_dropped == 1100 - 1024
    assert len(t.forget_process(PID)) == 1024 and t.waiting() == 0 and t.held_bytes == 0


def test_held_calls_of_all_processes_are_bounded_in_count_and_bytes():
    """Each process below its own bound, together past the bound of all: the fullest process's oldest goes, counted;
    the bytes held (each call's span and its own objects) have a bound of their own."""
    t = TaskContexts(max_held=10)
    released = [h for pid in range(20) for h in t.hold(pid, (1,), (b"r",), 0, 10**12, pid, size=100)]
    assert t.waiting() == 10 and t.stats.held_dropped == 10 and [h.payload for h in released] == list(range(10))
    assert t.held_bytes == 10 * (100 + HELD_CALL_BYTES) and t.stats.held_bytes_peak == 11 * (100 + HELD_CALL_BYTES)
    assert t.stats.held_peak == 11
    t = TaskContexts(max_bytes=5 * (1_000 + HELD_CALL_BYTES))
    for i in range(8):
        t.hold(PID, (i,), (b"r",), i, 10**12, i, size=1_000)
    assert t.waiting() == 5 and t.stats.held_dropped == 3 and t.held_bytes == 5 * (1_000 + HELD_CALL_BYTES)
    assert [h.payload for h in t.due(0, force=True)] == [3, 4, 5, 6, 7] and t.held_bytes == 0


def test_held_calls_count_in_the_builder_state_the_memory_governor_budgets():
    """A call held for its handler's answer holds its span: the state's bytes carry it until it goes."""
    b = builder()
    state = BuilderState(b)
    read(b, 1, 1_000, "a")
    assert call(b, 10, 2_000, (0x10, A, CONN)) == []  # held: a's handler has not answered
    holding = state.bytes
    (c,) = clients(answer(b, 1, 9_000, (A, CONN))).values()
    assert c.attributes[CAUSE_VIA] == "task" and b.causes.held_bytes == 0
    assert holding - state.bytes == c.approx_size() + HELD_CALL_BYTES  # the tables themselves did not change


def test_without_the_longer_wait_a_call_goes_after_the_plain_wait():
    """The longer wait is the owner's to turn off (long_wait_ns at most the plain wait): the call goes unmatched."""
    b = builder()
    b.causes.tasks.long_wait_ns = 0
    out = read(b, 1, 1_000, "a")
    out += call(b, 10, 2_000, (0x10, A, CONN))
    out += b.flush(2_000 + DECIDE_WAIT_NS + 2_000)
    assert clients(out)["c=10"].attributes.get(CAUSE_VIA) != "task"
    assert b.causes.tasks.stats.waited_long == 0 and b.causes.tasks.stats.unmatched == 1


def test_a_match_further_up_waits_for_a_nearer_one():
    """Beyond its live ancestors a chain may follow a freed context's edge to an address another open exchange's
    handler now uses: that match waits, and the call's own handler, answering later, decides it."""
    b = builder()
    out = read(b, 1, 1_000, "a") + read(b, 2, 1_100, "b")
    out += call(b, 10, 2_000, (0x10, A, CONN, 0x77, B))  # B: a stale element far up
    out += answer(b, 2, 9_000, (B, CONN))
    assert not clients(out)  # b's handler is only a far match: it waits
    out += answer(b, 1, 9_500, (A, CONN))
    s, c = servers(out), clients(out)
    assert c["c=10"].attributes[CAUSE] == s["rid=a"].span_id and c["c=10"].attributes[CAUSE_VIA] == "task"
    assert b.causes.tasks.stats.deep == 0


def test_a_match_further_up_is_refused_while_another_open_exchange_is_unanswered():
    """The call's own handler answers after every wait, held up by a slow call of its own (recorded on CPython 3.12 and
    3.13: a sibling call of ~1 s): b's far match is not taken while a, open at the call, may still answer nearer;
    the kernel's rules decide."""
    b = builder()
    out = read(b, 1, 1_000, "a") + read(b, 2, 1_100, "b")
    out += call(b, 10, 2_000, (0x10, A, CONN, 0x77, B))
    out += answer(b, 2, 9_000, (B, CONN))
    out += b.flush(2 * DECIDE_WAIT_NS)  # past the plain wait: a may still answer
    assert not clients(out)
    out += b.flush(LONG_WAIT_NS + 4_000)  # past the long one
    assert clients(out)["c=10"].attributes.get(CAUSE_VIA) != "task"
    st = b.causes.tasks.stats
    assert st.deep_refused == 1 and st.deep == 0 and st.waited_long == 1 and st.long_expired == 1


def test_a_call_waits_past_the_plain_wait_for_a_handler_still_unanswered():
    """Recorded over HTTPS (a TLS handshake per call on the loaded machine): a handler's first call ended ~1 s before
    its handler answered, held up by its next call. While a request open at the call is unanswered the call waits
    (up to LONG_WAIT_NS), and the answer names it."""
    b = builder()
    out = read(b, 1, 1_000, "a") + read(b, 2, 1_100, "b")
    out += call(b, 10, 2_000, (0x10, A, CONN))
    out += answer(b, 2, 9_000, (B, CONN))
    out += b.flush(2 * DECIDE_WAIT_NS)
    assert not clients(out)  # a is not answered yet
    out += answer(b, 1, 2 * DECIDE_WAIT_NS + 1_000, (A, CONN))
    s, c = servers(out), clients(out)
    assert c["c=10"].attributes[CAUSE] == s["rid=a"].span_id and c["c=10"].attributes[CAUSE_VIA] == "task"
    assert b.causes.tasks.stats.waited_long == 1 and b.causes.tasks.stats.unmatched == 0


def test_a_call_no_open_exchange_can_still_name_goes_after_the_plain_wait():
    """Every request open at the call answered without naming it: nothing more can, it does not wait longer."""
    b = builder()
    out = read(b, 1, 1_000, "a")
    out += call(b, 10, 2_000, (0x10, 0x20))
    out += answer(b, 1, 9_000, (A, CONN))
    out += b.flush(DECIDE_WAIT_NS + 4_000)
    assert "c=10" in clients(out)
    assert b.causes.tasks.stats.waited_long == 0 and b.causes.tasks.stats.unmatched == 1


def test_a_match_further_up_stands_once_every_other_open_exchange_is_answered():
    b = builder()
    out = read(b, 1, 1_000, "a") + read(b, 2, 1_100, "b")
    out += call(b, 10, 2_000, (0x10, 0x20, CONN, 0x77, B))  # a's handling context is not in the chain
    out += answer(b, 1, 8_000, (A, CONN)) + answer(b, 2, 9_000, (B, CONN))
    out += b.flush(2 * DECIDE_WAIT_NS)  # past the wait
    s, c = servers(out), clients(out)
    assert c["c=10"].attributes[CAUSE] == s["rid=b"].span_id and c["c=10"].attributes[CAUSE_VIA] == "task"
    assert b.causes.tasks.stats.deep == 1 and b.causes.tasks.stats.deep_refused == 0


def _replayed(strip_contexts: bool, name: str = "aiohttp_tasks.jsonl.gz"):
    from pathlib import Path

    from edge.sources.ebpf.spans import SpanBuilder, SpanBuilderConfig

    from ._grpc_recording import feed_as_agent, load
    from ._loop_recording import judge
    events = load(Path(__file__).with_name(name))
    if strip_contexts:
        events = [e for e in events if not isinstance(e, PyContextEvent)]
    return judge(feed_as_agent(SpanBuilder(SpanBuilderConfig()), events))


def test_recorded_aiohttp_fanout_calls_follow_their_tasks():
    """400 requests of the testbed's aiohttp service (8 keep-alive clients, 1 to 3 calls each through asyncio.gather)
    recorded with the context probes (_loop_recording.py aiohttp-tasks): every call is decided by its task context,
    and right; without the contexts the kernel's orders decide fewer than 95 % of them."""
    served, got = _replayed(strip_contexts=False)
    calls = sum(got.values())
    assert served == 400 and calls >= served
    assert got[("task", "right")] >= 0.99 * calls and not [k for k in got if k[1] == "wrong"], got
    _, kernel_only = _replayed(strip_contexts=True)
    assert sum(n for (via, verdict), n in kernel_only.items() if verdict == "right") < 0.95 * calls, kernel_only


def test_recorded_asyncio_calls_on_cpython_3_13_follow_their_tasks():
    """300 requests of the standard-library asyncio service run by CPython 3.13 (_loop_recording.py asyncio-tasks,
    8 keep-alive clients, 1 to 3 calls each): two calls of one request whose third call took ~1 s, so that its handler
    answered after the wait, were given another open request by a far match before; none is wrong now."""
    served, got = _replayed(strip_contexts=False, name="asyncio_tasks_313.jsonl.gz")
    calls = sum(got.values())
    assert served == 296 and calls >= served
    assert got[("task", "right")] >= 0.98 * calls and not [k for k in got if k[1] == "wrong"], got


def test_recorded_asyncio_calls_over_tls_follow_their_tasks():
    """300 requests of the standard-library asyncio service calling db over HTTPS (_loop_recording.py asyncio-tasks
    with a certificate directory; CPython 3.11, the TLS probes attached, a handshake per call, loaded machine): 8 calls
    whose handler answered 0.9-1.1 s after them, held up by a slow sibling call, were left to the kernel's rules
    (`ambiguous`) after the plain wait; waiting while their handler is unanswered decides every call by its task."""
    served, got = _replayed(strip_contexts=False, name="asyncio_tasks_tls.jsonl.gz")
    calls = sum(got.values())
    assert served == 296 and calls >= served
    assert got[("task", "right")] == calls, got


def test_a_handling_context_reused_by_later_requests_still_names_the_first_to_answer_after_the_call():
    """asyncio frees a handler's context when its task ends and the next handler often gets the same address: the
    call's own handler held it from before the call until its answer, so of the requests answered in that address
    after the call ended the first is the call's (a later one, open at the call too, reused it). Recorded over HTTPS:
    one address served 4 more requests before a call waiting for its turn's order was decided."""
    t = TaskContexts()
    t.handled(PID, b"a", (A, CONN), 100)
    t.handled(PID, b"b", (A, CONN), 200)
    for i in range(6):
        t.handled(PID, b"x%d" % i, (A, CONN), 300 + i)
    assert t.match(PID, (0x10, A, CONN), (b"a", b"b"), 50) == (b"a", 1)


def test_recorded_asyncio_calls_over_tls_with_reused_handler_contexts():
    """Another such HTTPS run (592 calls): 3 calls whose handler's context address served more requests before they
    were decided named none, and 2 whose handler answered 2.1 s after them (past LONG_WAIT_NS) keep the kernel's
    decision (`ambiguous`)."""
    served, got = _replayed(strip_contexts=False, name="asyncio_tasks_tls_2.jsonl.gz")
    calls = sum(got.values())
    assert served == 296 and calls >= served
    assert got[("task", "right")] >= calls - 2 and not [k for k in got if k[1] == "wrong"], got
