"""Which request a kernel client span was made for (causes.py): the serving thread, the request an event loop read
last, the request thread a pool worker hands its result to (sched_waking), or the one that handed it the work."""
from __future__ import annotations

from edge.model import Span, SpanKind
from edge.sources.ebpf.events import ConnectEvent, Endpoint, ExitEvent, Role, TurnEvent, WakeupEvent
from edge.sources.ebpf.spans.causes import CAUSE, CAUSE_VIA, DECIDE_WAIT_NS, Causes

from ._helpers import CLI, IN, OUT, builder, data, req, resp

DB = Endpoint("10.0.0.7", 5432)
PID = 100


def serve_read(b, sock, ts, tid, rid):
    """Thread `tid` reads request `rid` on server connection `sock`."""
    return b.feed([data(sock, IN, ts, req(target=f"/api?rid={rid}"), pid=PID, tid=tid, remote=Endpoint("10.0.0.9", 50000 + sock))])


def serve_answer(b, sock, ts, tid):
    """Thread `tid` answers on server connection `sock`: the server span is out."""
    r = req()
    return b.feed([data(sock, OUT, ts, resp(), pid=PID, tid=tid, prev_bytes=len(r), prev_end=ts - 500,
                        remote=Endpoint("10.0.0.9", 50000 + sock))])


def call(b, sock, ts, tid, answer_tid=None):
    """Thread `tid` calls the database on client connection `sock` and reads its answer (on `answer_tid`)."""
    r = req(target=f"/db?c={sock}")
    b.feed([data(sock, OUT, ts, r, pid=PID, tid=tid, role=Role.CLIENT, local=Endpoint(CLI.addr, 40000 + sock),
                 remote=DB)])
    return b.feed([data(sock, IN, ts + 1_000, resp(), pid=PID, tid=answer_tid or tid, role=Role.CLIENT,
                        local=Endpoint(CLI.addr, 40000 + sock), remote=DB, prev_bytes=len(r), prev_end=ts + 50)])


def server_span(spans):
    (s,) = [s for s in spans if s.kind == SpanKind.SERVER]
    return s


def two_requests(*handoffs):
    """A builder whose threads 101 and 102 read requests a and b, then the wakeups (waker, wakee, at) given."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    serve_read(b, 2, 1_500, 102, "b")
    for waker, wakee, at in handoffs:
        b.feed([WakeupEvent(at, PID, waker, wakee, 0)])
    return b


def test_thread_serving_one_request_names_it():
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    (c,) = call(b, 10, 5_000, 101)
    s = server_span(serve_answer(b, 1, 20_000, 101))
    assert c.kind == SpanKind.CLIENT
    assert c.attributes[CAUSE] == s.span_id and c.attributes[CAUSE_VIA] == "thread"
    assert b.causes.stats.thread == 1


def test_answered_request_is_no_longer_the_threads_context():
    """After its response the thread serves nothing: a later call (a background job) names no request."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    serve_answer(b, 1, 2_000, 101)
    (c,) = call(b, 10, 5_000, 101)
    assert CAUSE not in c.attributes


def test_event_loop_follows_the_request_it_read_last():
    """One thread serving two requests at once: a call made after it read one request (and called out for the one
    before) takes that request's context."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    (for_a,) = call(b, 10, 1_500, 101)
    serve_read(b, 2, 2_000, 101, "b")
    (for_b,) = call(b, 11, 3_000, 101)
    sb = server_span(serve_answer(b, 2, 7_000, 101))
    sa = server_span(serve_answer(b, 1, 8_000, 101))
    assert for_a.attributes[CAUSE] == sa.span_id and for_a.attributes[CAUSE_VIA] == "thread"
    assert for_b.attributes[CAUSE] == sb.span_id and for_b.attributes[CAUSE_VIA] == "event-loop"
    assert b.causes.stats.event_loop == 1 and b.causes.stats.ambiguous == 0


def test_first_call_on_a_new_connection_takes_the_context_of_its_connect():
    """Node.js opens the connection in the handler that read a, but writes the request once it is up, after reading
    b: the call is a's, the request the loop served when it called connect()."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    b.feed([ConnectEvent(2_600, PID, "node", 10, Endpoint(CLI.addr, 40010), DB, 100)])  # connect() began at 2_500
    (on_kept,) = call(b, 11, 2_600, 101)  # a's call on a kept-alive connection goes out at once
    serve_read(b, 2, 5_000, 101, "b")
    (c,) = call(b, 10, 7_000, 101)
    serve_read(b, 3, 9_000, 101, "d")
    (again,) = call(b, 10, 11_000, 101)  # the next call on that connection: the loop's context now, d
    sa = server_span(serve_answer(b, 1, 13_000, 101))
    sb = server_span(serve_answer(b, 2, 14_000, 101))
    sd = server_span(serve_answer(b, 3, 15_000, 101))
    assert on_kept.attributes[CAUSE] == sa.span_id
    assert c.attributes[CAUSE] == sa.span_id != sb.span_id and c.attributes[CAUSE_VIA] == "event-loop"
    assert again.attributes[CAUSE] == sd.span_id
    assert b.causes.stats.connect == 1


def _turn_of_two_reads():
    """An event loop reads requests a and b in one turn, then makes a call on connection 10 (whose handler's?)."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    serve_read(b, 2, 2_000, 101, "b")
    r = req(target="/db?c=10")
    b.feed([data(10, OUT, 3_000, r, pid=PID, tid=101, role=Role.CLIENT, local=Endpoint(CLI.addr, 40010), remote=DB)])
    return b, r


def _answer_call(b, r):
    return b.feed([data(10, IN, 6_000, resp(), pid=PID, tid=101, role=Role.CLIENT, local=Endpoint(CLI.addr, 40010),
                        remote=DB, prev_bytes=len(r), prev_end=3_050)])


def test_event_loop_call_after_several_reads_in_one_turn_names_no_request():
    """Both handlers run after both reads: the call may be either's. While both are open when it is answered, it
    is left ambiguous, and the assembler's timing rules are told not to guess."""
    b, r = _turn_of_two_reads()
    (c,) = _answer_call(b, r)
    serve_answer(b, 2, 7_000, 101)
    serve_answer(b, 1, 8_000, 101)
    assert CAUSE not in c.attributes and c.attributes[CAUSE_VIA] == "ambiguous"
    assert b.causes.stats.ambiguous == 1 and b.causes.stats.event_loop == 0


def test_event_loop_call_of_one_turn_is_decided_when_the_other_request_was_answered_first():
    """b was answered before the call's response came back: b's handler did not wait for it, so it is a's."""
    b, r = _turn_of_two_reads()
    sb = server_span(serve_answer(b, 2, 5_000, 101))
    (c,) = _answer_call(b, r)
    sa = server_span(serve_answer(b, 1, 8_000, 101))
    assert c.attributes[CAUSE] == sa.span_id != sb.span_id and c.attributes[CAUSE_VIA] == "event-loop"
    # The answer made a's context certain again: a follow-up call is a's.
    serve_read(b, 3, 9_000, 101, "c")
    assert b.causes.stats.event_loop == 1 and b.causes.stats.ambiguous == 0


def test_event_loop_response_makes_its_request_current():
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    r = req(target="/db?c=10")
    b.feed([data(10, OUT, 2_000, r, pid=PID, tid=101, role=Role.CLIENT, local=Endpoint(CLI.addr, 40010), remote=DB)])
    serve_read(b, 2, 3_000, 101, "b")  # b read: b is current
    b.feed([data(10, IN, 4_000, resp(), pid=PID, tid=101, role=Role.CLIENT, local=Endpoint(CLI.addr, 40010),
                 remote=DB, prev_bytes=len(r), prev_end=2_050)])  # a's downstream answer: a is current again
    (follow_up,) = call(b, 11, 5_000, 101)
    sa = server_span(serve_answer(b, 1, 8_000, 101))
    serve_answer(b, 2, 9_000, 101)
    assert follow_up.attributes[CAUSE] == sa.span_id


def test_pool_worker_call_goes_to_the_request_thread_it_wakes():
    """A request thread hands the call to a worker and sleeps; the worker's wakeup of it with the result decides,
    even when another request thread handed the worker work meanwhile."""
    b = two_requests((101, 201, 2_000), (102, 201, 2_100))
    out = call(b, 10, 5_000, 201)
    assert out == []  # waits for the hand-back
    out = b.feed([WakeupEvent(7_000, PID, 201, 102, 1_600)])  # the result goes to b's thread, asleep since 1_600
    (c,) = out
    sb = server_span(serve_answer(b, 2, 9_000, 102))
    serve_answer(b, 1, 9_500, 101)
    assert c.attributes[CAUSE] == sb.span_id and c.attributes[CAUSE_VIA] == "wakeup"
    assert b.causes.stats.wakeup == 1 and b.pending_count == 0


def test_wakeup_of_a_thread_awake_during_the_call_does_not_decide():
    """A thread that was asleep only since after the call began did not wait for it."""
    b = two_requests((101, 201, 2_000))
    assert call(b, 10, 5_000, 201) == []
    assert b.feed([WakeupEvent(7_000, PID, 201, 102, 5_500)]) == []
    (c,) = b.feed([WakeupEvent(7_500, PID, 201, 101, 2_500)])
    sa = server_span(serve_answer(b, 1, 9_000, 101))
    assert c.attributes[CAUSE] == sa.span_id


def test_wakeup_of_a_thread_that_fell_asleep_after_the_call_began_leaves_it_to_the_handoff():
    """The request thread, preempted as it released its lock, fell asleep only after the worker's call began: that
    hand-back alone proves nothing (a GIL wakeup of another thread looks the same); the hand-off decides once the wait
    is over, as the first thread woken after the answer is the one that handed the work."""
    b = two_requests((101, 201, 2_000))
    assert call(b, 10, 5_000, 201) == []
    assert b.feed([WakeupEvent(7_000, PID, 201, 101, 5_500)]) == []
    assert b.feed([WakeupEvent(7_500, PID, 201, 102, 5_500)]) == []
    (c,) = b.flush(7_000 + DECIDE_WAIT_NS)
    sa = server_span(serve_answer(b, 1, 9_000, 101))
    assert c.attributes[CAUSE] == sa.span_id and c.attributes[CAUSE_VIA] == "handoff"


def test_handoff_is_not_certain_when_the_worker_first_wakes_another_requester_after_its_answer():
    """Handed work by a's thread, the worker's first wakeup once answered goes to b's thread, asleep through the
    answer: it may have taken b's work (queued first) while another worker took a's. Neither decides, also once it
    waited for other workers' calls (none tells which request it ran)."""
    b = two_requests((101, 201, 2_000))
    assert call(b, 10, 5_000, 201) == []
    assert b.feed([WakeupEvent(7_000, PID, 201, 102, 5_500)]) == []
    assert b.feed([WakeupEvent(7_500, PID, 201, 101, 5_500)]) == []
    assert b.flush(7_000 + DECIDE_WAIT_NS) == []  # contested: put off once
    (c,) = b.flush(7_000 + 2 * DECIDE_WAIT_NS)
    assert CAUSE not in c.attributes and c.attributes[CAUSE_VIA] == "ambiguous"


def test_crossed_handoffs_are_decided_once_the_other_worker_is_known_to_have_run_one():
    """a's thread hands work to idle worker 201, b's to idle worker 202, and each takes the other's item (recorded in
    the 5 and 5c services). 202's result goes to a's thread, asleep through its whole call (`wakeup`: it ran a); 201's
    first wakeup once answered goes to b's thread. A request runs on one worker: 201 ran b, not a."""
    b = two_requests((101, 201, 2_000), (102, 202, 2_100))
    assert call(b, 10, 5_000, 202) == []
    assert call(b, 11, 5_200, 201) == []
    (for_a,) = b.feed([WakeupEvent(7_000, PID, 202, 101, 2_500)])
    assert b.feed([WakeupEvent(7_100, PID, 201, 102, 5_500)]) == []
    (for_b,) = b.flush(7_200 + DECIDE_WAIT_NS)
    sa = server_span(serve_answer(b, 1, 9_000, 101))
    sb = server_span(serve_answer(b, 2, 9_100, 102))
    assert for_a.attributes[CAUSE] == sa.span_id and for_a.attributes[CAUSE_VIA] == "wakeup"
    assert for_b.attributes[CAUSE] == sb.span_id and for_b.attributes[CAUSE_VIA] == "handback"
    assert b.causes.stats.contest_settled == 1


def test_crossed_handoffs_read_from_both_hand_backs():
    """The same crossing with neither call decided otherwise (both requesters fell asleep after the calls began): 201,
    handed a, hands back to b; 202, handed b, hands back to a. Two lock wakeups landing each on the other's requester
    would be needed for the hand-offs to be right; one swap in the queue explains both: the hand-backs decide."""
    b = two_requests((101, 201, 2_000), (102, 202, 2_100))
    assert call(b, 10, 5_000, 202) == []
    assert call(b, 11, 5_200, 201) == []
    assert b.feed([WakeupEvent(7_000, PID, 202, 101, 5_300)]) == []
    assert b.feed([WakeupEvent(7_100, PID, 201, 102, 5_500)]) == []
    got = {s.attributes["url.query"]: s for s in b.flush(7_200 + DECIDE_WAIT_NS)}
    sa = server_span(serve_answer(b, 1, 9_000, 101))
    sb = server_span(serve_answer(b, 2, 9_100, 102))
    assert got["c=10"].attributes[CAUSE] == sa.span_id and got["c=10"].attributes[CAUSE_VIA] == "handback"
    assert got["c=11"].attributes[CAUSE] == sb.span_id and got["c=11"].attributes[CAUSE_VIA] == "handback"
    assert b.causes.stats.contest_settled == 2


def test_a_worker_woken_again_on_its_way_to_the_work_keeps_the_first_handoff():
    """a's thread wakes idle worker 201 (asleep long before): that is the hand-off. 201 then blocks on a lock (the
    queue's mutex, the GIL) held by b's thread, whose release wakes it again from a sleep begun after the hand-off:
    not more work."""
    b = two_requests((101, 201, 2_000))
    b.feed([WakeupEvent(2_300, PID, 102, 201, 2_100)])
    assert call(b, 10, 5_000, 201) == []
    (c,) = b.flush(7_000 + DECIDE_WAIT_NS)
    sa = server_span(serve_answer(b, 1, 9_000, 101))
    assert c.attributes[CAUSE] == sa.span_id and c.attributes[CAUSE_VIA] == "handoff"


def test_a_workers_wakeup_of_a_thread_serving_none_hands_no_result():
    """Once answered, the worker first wakes another worker (serving none, asleep since before the call: a lock, the
    GIL), then the request thread waiting for its result, which decides. Taking the first for a thread waiting with
    no request left the call to the assembler's timing rules, which linked one of them wrongly in the testbed."""
    b = two_requests((101, 201, 2_000))
    b.feed([WakeupEvent(2_100, PID, 102, 202, 0)])  # 202: another worker, handed b's work
    assert call(b, 10, 5_000, 201) == []
    assert b.feed([WakeupEvent(7_000, PID, 201, 202, 1_000)]) == []
    (c,) = b.feed([WakeupEvent(7_200, PID, 201, 101, 2_500)])
    sa = server_span(serve_answer(b, 1, 9_000, 101))
    assert c.attributes[CAUSE] == sa.span_id and c.attributes[CAUSE_VIA] == "wakeup"


def test_two_handoffs_to_a_worker_before_its_call_leave_it_ambiguous():
    """Woken for a's request and then for b's before it called: a lock (the GIL) wakes a thread as a queue does, so
    which work it took is not known."""
    b = two_requests((101, 201, 2_000), (102, 201, 3_000))
    assert call(b, 10, 5_000, 201) == []
    (c,) = b.flush(7_000 + DECIDE_WAIT_NS)
    assert CAUSE not in c.attributes and c.attributes[CAUSE_VIA] == "ambiguous"


def test_wakeup_of_a_busy_worker_is_not_a_handoff():
    """A request thread waking a worker whose call is in flight (the GIL) hands it nothing: its next call, work it
    took running, is not given to that request."""
    b = two_requests((101, 201, 2_000))
    b.feed([data(10, OUT, 3_000, req(target="/db?c=10"), pid=PID, tid=201, role=Role.CLIENT,
                 local=Endpoint(CLI.addr, 40010), remote=DB)])
    b.feed([WakeupEvent(3_500, PID, 102, 201, 3_200)])  # b's thread releases the GIL to the worker, its call in flight
    b.feed([data(10, IN, 4_000, resp(), pid=PID, tid=201, role=Role.CLIENT, local=Endpoint(CLI.addr, 40010),
                 remote=DB, prev_bytes=len(req(target="/db?c=10")), prev_end=3_050)])
    assert call(b, 11, 6_000, 201) == []
    out = b.flush(10_000 + DECIDE_WAIT_NS)
    (second,) = [s for s in out if "c=11" in str(s.attributes.get("url.query"))]
    assert CAUSE not in second.attributes and second.attributes[CAUSE_VIA] == "ambiguous"


def test_worker_nobody_waits_for_takes_the_request_that_handed_it_work():
    """The worker answers the client itself (an accept thread and a pool): after DECIDE_WAIT_NS with no hand-back,
    the request of the thread that handed it the work."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    b.feed([WakeupEvent(2_000, PID, 101, 201, 0)])
    assert call(b, 10, 5_000, 201) == []
    assert b.flush(7_000 + DECIDE_WAIT_NS - 1) == []
    (c,) = b.flush(7_000 + DECIDE_WAIT_NS)
    sa = server_span(serve_answer(b, 1, 7_000, 101))
    assert c.attributes[CAUSE] == sa.span_id and c.attributes[CAUSE_VIA] == "handoff"


def test_new_worker_takes_the_request_of_the_thread_that_created_it():
    """A pool starting a worker on demand hands it its first work by creating it (sched_wakeup_new: the creator wakes
    a thread never seen). The new thread waking its creator to say it started hands nothing back: it made no call
    yet, so its call still goes to its creator's request."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    b.feed([WakeupEvent(2_000, PID, 101, 201, 0), WakeupEvent(2_500, PID, 201, 101, 0)])
    assert call(b, 10, 5_000, 201) == []
    (c,) = b.flush(7_000 + DECIDE_WAIT_NS)
    sa = server_span(serve_answer(b, 1, 8_000, 101))
    assert c.attributes[CAUSE] == sa.span_id and c.attributes[CAUSE_VIA] == "handoff"


def test_worker_that_handed_its_result_back_no_longer_works_for_that_request():
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    b.feed([WakeupEvent(2_000, PID, 101, 201, 0)])
    call(b, 10, 3_000, 201)
    b.flush(5_000 + DECIDE_WAIT_NS)
    b.feed([WakeupEvent(5_000 + DECIDE_WAIT_NS, PID, 201, 101, 0)])  # the result handed back: the work is done
    assert call(b, 11, 6_000 + DECIDE_WAIT_NS, 201) == []
    (c,) = b.flush(8_000 + 2 * DECIDE_WAIT_NS)
    assert CAUSE not in c.attributes


def test_worker_call_of_no_request_leaves_undecided_and_nothing_is_held():
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    b.feed([WakeupEvent(2_000, PID, 101, 201, 0)])  # makes this process a pool
    serve_answer(b, 1, 3_000, 101)
    b.feed([WakeupEvent(3_500, PID, 201, 101, 0)])  # the worker handed back: it works for nobody now
    assert call(b, 10, 5_000, 201) == []
    (c,) = b.flush(10_000 + DECIDE_WAIT_NS)
    assert CAUSE not in c.attributes and c.attributes[CAUSE_VIA] == "ambiguous"  # no timing rule may guess one
    assert b.causes.stats.undecided == 1 and b.pending_count == 0


def test_process_exit_releases_waiting_calls():
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    b.feed([WakeupEvent(2_000, PID, 101, 201, 0)])
    assert call(b, 10, 5_000, 201) == []
    out = b.feed([ExitEvent(8_000, PID, "api", 0)])
    assert any(s.kind == SpanKind.CLIENT for s in out)
    assert b.pending_count == 0 and len(b.causes) == 0


def test_threads_table_is_bounded():
    c = Causes(max_threads=8)
    for tid in range(100):
        c.request_read(PID, tid, tid.to_bytes(8, "big"))
    assert len(c) == 8 and c.stats.evicted_threads == 92


def test_open_requests_per_thread_are_bounded():
    c = Causes()
    for i in range(1000):
        c.request_read(PID, 1, i.to_bytes(8, "big"))
    call_ = c.call_made(PID, 1, 0)  # after 1,000 reads in one turn: any of the last 64 still open
    assert call_.cause is None and call_.candidates == tuple(i.to_bytes(8, "big") for i in range(936, 1000))
    assert len(c._threads[(PID, 1)].open) <= 64 and len(c._threads[(PID, 1)].run) <= 64


def test_handoff_another_running_worker_may_have_taken_is_left_ambiguous():
    """Thread a hands work to idle worker 201; worker 202, still running after its previous call, takes work off the
    queue without sleeping (it may be a's: queues hand out what came first) and calls: 201's hand-off is no longer
    certain, so its call names no request and no timing rule may guess one."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    serve_read(b, 2, 1_200, 102, "b")
    b.feed([WakeupEvent(1_300, PID, 102, 202, 0)])
    assert call(b, 11, 1_400, 202) == []  # 202's first call: work handed to it
    b.feed([WakeupEvent(2_000, PID, 101, 201, 0)])
    assert call(b, 12, 2_500, 202) == []  # 202 calls again without a hand-off: it took work running
    assert call(b, 10, 3_000, 201) == []
    out = b.flush(10_000 + DECIDE_WAIT_NS)
    (c,) = [s for s in out if s.attributes.get("url.path") == "/db" and "c=10" in str(s.attributes.get("url.query"))]
    assert CAUSE not in c.attributes and c.attributes[CAUSE_VIA] == "ambiguous"
    assert b.causes.stats.handoff_unsure >= 1


def test_a_handoff_the_worker_hands_back_first_stands_though_another_worker_ran():
    """As above, a running worker may have taken a's work; but once answered, 201 first wakes a's thread, asleep
    through the answer: had another worker taken a's work, a's thread would be waiting for that one, and 201's result
    would go to the request whose work it took. The hand-off and the hand-back agree: a."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    serve_read(b, 2, 1_200, 102, "b")
    b.feed([WakeupEvent(1_300, PID, 102, 202, 0)])
    assert call(b, 11, 1_400, 202) == []
    b.feed([WakeupEvent(2_000, PID, 101, 201, 0)])
    assert call(b, 12, 2_500, 202) == []  # 202 calls again without a hand-off: it took work running
    assert call(b, 10, 3_000, 201) == []
    b.feed([WakeupEvent(4_500, PID, 201, 101, 3_500)])  # a's thread fell asleep after 201's call began
    out = b.flush(10_000 + DECIDE_WAIT_NS)
    (c,) = [s for s in out if "c=10" in str(s.attributes.get("url.query"))]
    sa = server_span(serve_answer(b, 1, 20_000, 101))
    assert c.attributes[CAUSE] == sa.span_id and c.attributes[CAUSE_VIA] == "handoff"


def test_handoffs_pending_at_once_are_left_ambiguous():
    """Threads a and b hand work to idle workers 201 and 202 before either began its call: whichever ran first took
    the work queued first, so neither hand-off says whose work each took."""
    b = two_requests((101, 201, 2_000), (102, 202, 2_100))
    assert call(b, 10, 3_000, 201) == []
    assert call(b, 11, 3_100, 202) == []
    out = b.flush(10_000 + DECIDE_WAIT_NS)
    assert len(out) == 2 and all(CAUSE not in c.attributes and c.attributes[CAUSE_VIA] == "ambiguous" for c in out)
    assert b.causes.stats.handoff_unsure == 2


def test_handoff_stands_when_running_workers_took_work_only_before_it():
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    b.feed([WakeupEvent(1_300, PID, 101, 202, 0)])
    assert call(b, 11, 1_400, 202) == []
    assert call(b, 12, 1_600, 202) == []  # took work running, before a's hand-off to 201
    b.feed([WakeupEvent(2_000, PID, 101, 201, 0)])
    assert call(b, 10, 3_000, 201) == []
    out = b.flush(10_000 + DECIDE_WAIT_NS)
    (c,) = [s for s in out if "c=10" in str(s.attributes.get("url.query"))]
    assert c.attributes[CAUSE_VIA] == "handoff"


def loop_learns_lag(b, lag=3, tid=101, t0=1_000_000, n=16):
    """An event loop (turns from epoll) that serves requests one at a time, each call `lag` turns after its read and
    the response in the turn of its answer: 16 calls teach it the distance, 16 more requests the distance from the
    answer to the response. Returns the time after the last."""
    ts = t0
    for i in range(n):
        b.feed([TurnEvent(ts, PID, tid, 1)])
        serve_read(b, 100 + i, ts + 10, tid, f"warm{i}")  # read by ts + 1_010
        for _ in range(lag):
            ts += 2_000
            b.feed([TurnEvent(ts, PID, tid, 0)])
        call(b, 300 + i, ts + 1_100, tid)  # answered 1_000 later
        serve_answer(b, 100 + i, ts + 5_000, tid)
        ts += 10_000
    return ts


def learned_loop_reads_a_then_b():
    """A loop that learned a distance of 3 turns reads request a, and b a turn later."""
    b = builder()
    ts = loop_learns_lag(b)
    b.feed([TurnEvent(ts, PID, 101, 1)])
    serve_read(b, 1, ts + 10, 101, "a")
    b.feed([TurnEvent(ts + 2_000, PID, 101, 1)])
    serve_read(b, 2, ts + 2_010, 101, "b")
    return b, ts


def test_event_loop_call_goes_to_the_request_read_its_learned_number_of_turns_before():
    """aiohttp runs a handler a turn after the read and the call's task turns later: with a and b read in successive
    turns, the call three turns after a's read is a's, and the one a turn later b's."""
    b, ts = learned_loop_reads_a_then_b()
    b.feed([TurnEvent(ts + 4_000, PID, 101, 0)])
    b.feed([TurnEvent(ts + 6_000, PID, 101, 0)])
    (for_a,) = call(b, 10, ts + 6_010, 101)
    b.feed([TurnEvent(ts + 8_000, PID, 101, 0)])
    (for_b,) = call(b, 11, ts + 8_010, 101)
    sa = server_span(serve_answer(b, 1, ts + 19_000, 101))
    sb = server_span(serve_answer(b, 2, ts + 19_500, 101))
    assert for_a.attributes[CAUSE] == sa.span_id and for_a.attributes[CAUSE_VIA] == "loop-turn"
    assert for_b.attributes[CAUSE] == sb.span_id and for_b.attributes[CAUSE_VIA] == "loop-turn"
    assert b.causes.stats.loop_turn == 2


def test_a_call_that_fits_no_learned_distance_turns_the_rule_off():
    """A call no open request was read the learned number of turns before (a second call after a response, a timer)
    breaks the pattern: the following calls are left to the other rules."""
    b, ts = learned_loop_reads_a_then_b()
    (odd,) = call(b, 10, ts + 3_100, 101)  # in b's turn: a distance of 0 or 1, not 3
    assert odd.attributes.get(CAUSE_VIA) != "loop-turn"
    b.feed([TurnEvent(ts + 6_000, PID, 101, 0)])
    b.feed([TurnEvent(ts + 8_000, PID, 101, 0)])
    b.feed([TurnEvent(ts + 10_000, PID, 101, 0)])
    (later,) = call(b, 11, ts + 10_010, 101)
    assert later.attributes.get(CAUSE_VIA) != "loop-turn" and b.causes.stats.loop_turn == 0


def test_loop_calling_in_the_turn_of_the_read_keeps_the_other_rules():
    """Node.js calls in the turn that read the request: it learns 0 and the rules for reads and calls decide."""
    b = builder()
    ts = loop_learns_lag(b, lag=0)
    b.feed([TurnEvent(ts, PID, 101, 2)])
    serve_read(b, 1, ts + 10, 101, "a")  # read by ts + 1_010
    (for_a,) = call(b, 10, ts + 2_000, 101)  # answered at ts + 3_000, in the same turn
    serve_read(b, 2, ts + 4_000, 101, "b")
    (for_b,) = call(b, 11, ts + 6_000, 101)
    serve_answer(b, 1, ts + 9_000, 101)
    sb = server_span(serve_answer(b, 2, ts + 9_500, 101))
    assert for_b.attributes[CAUSE] == sb.span_id and for_b.attributes[CAUSE_VIA] == "event-loop"
    assert b.causes.stats.loop_turn == 0


def test_loop_context_taken_in_an_earlier_turn_does_not_decide_a_call():
    """While the loop's distance is not known, a call made turns after the read of the request the loop touched last
    comes from a continuation that may be any open request's: left to the answers, not to the last read."""
    b = builder()
    b.feed([TurnEvent(1_000, PID, 101, 1)])
    serve_read(b, 1, 1_010, 101, "a")  # read by 2_010
    (_,) = call(b, 10, 2_100, 101)  # a's first call, in a's turn
    b.feed([TurnEvent(5_000, PID, 101, 1)])
    serve_read(b, 2, 5_010, 101, "b")
    b.feed([TurnEvent(8_000, PID, 101, 0)])
    (later,) = call(b, 11, 8_010, 101)  # b is the last read, but a turn ago: a's continuation or b's
    assert CAUSE not in later.attributes and later.attributes[CAUSE_VIA] == "ambiguous"


def test_handoffs_pending_at_once_are_decided_when_the_other_request_was_answered_first():
    """a and b hand work to idle workers 201 and 202 at once; a is answered before 201's call is: a request thread
    waits for the work it handed, so 201 worked for b (and 202, whose call was answered before a was, stays open)."""
    b = two_requests((101, 201, 2_000), (102, 202, 2_100))
    assert call(b, 11, 3_000, 202) == []  # answered by 5_000
    assert b.feed([data(10, OUT, 3_500, req(target="/db?c=10"), pid=PID, tid=201, role=Role.CLIENT,
                        local=Endpoint(CLI.addr, 40010), remote=DB)]) == []
    sa = server_span(serve_answer(b, 1, 5_500, 101))
    b.feed([data(10, IN, 8_000, resp(), pid=PID, tid=201, role=Role.CLIENT, local=Endpoint(CLI.addr, 40010),
                 remote=DB, prev_bytes=len(req(target="/db?c=10")), prev_end=3_550)])
    out = b.flush(20_000 + DECIDE_WAIT_NS)
    sb = server_span(serve_answer(b, 2, 9_000, 102))
    (late,) = [s for s in out if "c=10" in str(s.attributes.get("url.query"))]
    assert late.attributes[CAUSE] == sb.span_id and late.attributes[CAUSE_VIA] == "handoff"
    (early,) = [s for s in out if "c=11" in str(s.attributes.get("url.query"))]
    assert CAUSE not in early.attributes and early.attributes[CAUSE_VIA] == "ambiguous"
    assert sa.span_id != sb.span_id


def test_worker_whose_answered_call_waits_for_its_decision_takes_new_work():
    """A worker's answered call still waiting for its decision does not make it busy: the next hand-off is work."""
    b = two_requests((101, 201, 2_000))
    assert call(b, 10, 3_000, 201) == []  # answered by 5_000; nobody slept through it
    b.feed([WakeupEvent(6_000, PID, 102, 201, 5_500)])  # b hands the idle worker its work
    assert call(b, 11, 7_000, 201) == []
    out = b.flush(20_000 + DECIDE_WAIT_NS)
    sb = server_span(serve_answer(b, 2, 30_000, 102))
    (second,) = [s for s in out if "c=11" in str(s.attributes.get("url.query"))]
    assert second.attributes[CAUSE] == sb.span_id and second.attributes[CAUSE_VIA] == "handoff"


# -- a worker's call decided by the response it writes (gRPC: I/O thread -> dispatcher -> executor worker) ---------

IO, DISPATCH, W1, W2 = 11, 12, 21, 22


def grpc_like(reads: dict[bytes, int]) -> Causes:
    """A process whose I/O thread read the given requests (at the given times) and woke its dispatcher: a pool."""
    c = Causes()
    for request, at in reads.items():
        c.request_read(PID, IO, request, at)
    c.wakeup(WakeupEvent(max(reads.values()) + 10, PID, IO, DISPATCH, 0), [])
    for request, at in reads.items():
        c.request_read(PID, IO, request, at)  # read again now that the process is known for a pool
    return c


def worker_call(c: Causes, tid: int, start: int, end: int) -> tuple[Span, list[Span]]:
    """Worker `tid` calls, reads the answer and the call's span is complete: it waits for its decision."""
    out: list[Span] = []
    call = c.call_made(PID, tid, start)
    c.response_read(call, tid, start + 100)
    span = Span(bytes(16), bytes(8), "GET", start, end, kind=SpanKind.CLIENT)
    c.finish(call, span, end, out)
    assert out == []
    return span, out


def test_worker_call_takes_the_request_whose_response_the_worker_writes_next():
    c = grpc_like({b"a" * 8: 1_000, b"b" * 8: 1_200})
    span, _ = worker_call(c, W1, 5_000, 6_000)
    c.response_written(PID, W1, b"b" * 8, 6_200)
    out: list[Span] = []
    c.flush(6_000 + DECIDE_WAIT_NS, out, 10 * DECIDE_WAIT_NS)
    assert out == [span] and span.attributes[CAUSE] == b"b" * 8 and span.attributes[CAUSE_VIA] == "response"
    assert c.stats.response == 1


def test_response_of_a_request_read_after_the_call_decides_nothing():
    c = grpc_like({b"a" * 8: 1_000})
    span, _ = worker_call(c, W1, 5_000, 6_000)
    c.request_read(PID, IO, b"c" * 8, 6_100)  # the worker's next request, read after its call began
    c.response_written(PID, W1, b"c" * 8, 9_000)
    out: list[Span] = []
    c.flush(6_000 + DECIDE_WAIT_NS, out, 10 * DECIDE_WAIT_NS)
    assert out == [span] and CAUSE not in span.attributes and span.attributes[CAUSE_VIA] == "ambiguous"


def test_two_responses_written_after_the_call_leave_it_undecided():
    """A thread writing for others too (grpcio's combiner flushes other workers' responses): which one was its own
    is unknown."""
    c = grpc_like({b"a" * 8: 1_000, b"b" * 8: 1_200})
    span, _ = worker_call(c, W1, 5_000, 6_000)
    c.response_written(PID, W1, b"a" * 8, 6_200)
    c.response_written(PID, W1, b"b" * 8, 6_300)
    out: list[Span] = []
    c.flush(6_000 + DECIDE_WAIT_NS, out, 10 * DECIDE_WAIT_NS)
    assert CAUSE not in span.attributes and c.stats.response_unsure == 1


def test_call_whose_request_another_thread_answered_is_not_given_to_the_next_response():
    """The worker's own response was written by an I/O thread; the worker took the next request (read before its
    call) and wrote that one's response: a request open at the call, answered between the call's answer and that
    response, may have been the call's."""
    c = grpc_like({b"a" * 8: 1_000, b"b" * 8: 1_200})
    span, _ = worker_call(c, W1, 5_000, 6_000)
    c.response_written(PID, IO, b"a" * 8, 6_300)  # a's response, handed to the I/O thread
    c.response_written(PID, W1, b"b" * 8, 9_000)
    out: list[Span] = []
    c.flush(6_000 + DECIDE_WAIT_NS, out, 10 * DECIDE_WAIT_NS)
    assert CAUSE not in span.attributes and span.attributes[CAUSE_VIA] == "ambiguous"


def test_wakeup_of_a_thread_reading_many_streams_does_not_decide_a_workers_call():
    """The worker wakes the I/O thread (to write for it), which slept through the call but serves several streams:
    it was not waiting for this result."""
    c = grpc_like({b"a" * 8: 1_000, b"b" * 8: 1_200})
    span, _ = worker_call(c, W1, 5_000, 6_000)
    out: list[Span] = []
    c.wakeup(WakeupEvent(6_100, PID, W1, IO, 2_000), out)
    assert out == [] and CAUSE not in span.attributes
    c.response_written(PID, W1, b"a" * 8, 6_200)
    c.flush(6_000 + DECIDE_WAIT_NS, out, 10 * DECIDE_WAIT_NS)
    assert span.attributes[CAUSE] == b"a" * 8


def test_a_thread_with_calls_in_flight_at_once_is_not_a_worker_taking_one_handoff():
    """grpcio's I/O thread writes the streams of several request threads: woken by one of them, the stream it writes
    may be another's. With two calls in flight at once its hand-off decides neither."""
    c = Causes()
    c.request_read(PID, 101, b"a" * 8, 1_000)
    c.request_read(PID, 102, b"b" * 8, 1_100)
    c.wakeup(WakeupEvent(2_000, PID, 101, 201, 0), [])
    calls = [(c.call_made(PID, 201, start), Span(bytes(16), bytes(8), "POST", start, start + 2_000,
                                                 kind=SpanKind.CLIENT)) for start in (3_000, 3_500)]
    for call, span in calls:
        c.response_read(call, 201, span.end_ns)
        c.finish(call, span, span.end_ns, [])
    out: list[Span] = []
    c.flush(6_000 + DECIDE_WAIT_NS, out, 10 * DECIDE_WAIT_NS)
    assert len(out) == 2 and all(CAUSE not in s.attributes for s in out)


# -- a worker's call whose response an I/O thread wrote: the one request open at it that no other worker ran ------

def grpc_streams(reads: dict[bytes, int], workers: tuple[int, ...] = (W1, W2)) -> Causes:
    """A process whose I/O thread read the given HTTP/2 streams, and whose workers (W1 and W2) have each run a handler
    and written its response before: they are known to run handlers."""
    c = Causes()
    for i, tid in enumerate(workers):
        c.request_read(PID, IO, bytes([i]) * 8, 100 + i * 1_000, stream=True)
        c.wakeup(WakeupEvent(200 + i * 1_000, PID, IO, DISPATCH, 0), [])
        worker_call(c, tid, 300 + i * 1_000, 400 + i * 1_000)
        answer(c, tid, bytes([i]) * 8, 500 + i * 1_000)
    assert len(flush_all(c, 3_000 + DECIDE_WAIT_NS)) == len(workers)
    for request, at in reads.items():
        c.request_read(PID, IO, request, at, stream=True)
    return c


def answer(c: Causes, tid: int, request: bytes, at: int, end: bool = True, sock: int = -1) -> None:
    """Thread `tid` writes the response to `request` (on connection `sock`; the span builder reports each), whole unless
    not `end`."""
    c.request_done(PID, tid, request, at)
    c.response_written(PID, tid, request, at, sock)
    if end:
        c.request_ended(PID, request, at)


def flush_all(c: Causes, *at: int) -> list[Span]:
    out: list[Span] = []
    for now in at:
        c.flush(now, out, 10 * DECIDE_WAIT_NS)
    return out


def test_call_whose_response_an_io_thread_wrote_takes_the_one_request_no_other_worker_ran():
    c = grpc_streams({b"a" * 8: 3_000, b"b" * 8: 3_200})
    s1, _ = worker_call(c, W1, 5_000, 6_000)
    s2, _ = worker_call(c, W2, 5_100, 6_100)
    answer(c, W2, b"b" * 8, 6_300)  # W2 writes b's response itself: W2 ran b
    answer(c, IO, b"a" * 8, 6_400)  # W1's response, written by the I/O thread
    # W1 is due first, while W2's call is not decided yet: its decision waits for it, then a is the one left.
    out = flush_all(c, 6_100 + DECIDE_WAIT_NS, 6_000 + 2 * DECIDE_WAIT_NS)
    assert out == [s2, s1]
    assert s2.attributes[CAUSE] == b"b" * 8 and s2.attributes[CAUSE_VIA] == "response"
    assert s1.attributes[CAUSE] == b"a" * 8 and s1.attributes[CAUSE_VIA] == "elimination"
    assert c.stats.elimination == 1 and c.stats.response == 3  # with the setup's two


def test_two_open_requests_no_other_worker_ran_leave_both_calls_ambiguous():
    """grpcio's I/O thread writes both workers' responses at once: either call may be either request's."""
    c = grpc_streams({b"a" * 8: 3_000, b"b" * 8: 3_200})
    s1, _ = worker_call(c, W1, 5_000, 6_000)
    s2, _ = worker_call(c, W2, 5_100, 6_100)
    answer(c, IO, b"a" * 8, 6_400)
    answer(c, IO, b"b" * 8, 6_400)
    out = flush_all(c, 6_100 + DECIDE_WAIT_NS, 6_100 + 2 * DECIDE_WAIT_NS)
    assert sorted(id(s) for s in out) == sorted(id(s) for s in (s1, s2))
    assert all(CAUSE not in s.attributes and s.attributes[CAUSE_VIA] == "ambiguous" for s in out)
    assert c.stats.elimination == 0


def test_request_answered_before_the_call_was_answered_is_not_the_calls():
    """A handler answers only after its calls were answered."""
    c = grpc_streams({b"a" * 8: 3_000, b"b" * 8: 3_200})
    s1, _ = worker_call(c, W1, 5_000, 6_000)  # answered at 5_100
    answer(c, IO, b"b" * 8, 5_050)
    answer(c, IO, b"a" * 8, 6_400)
    flush_all(c, 6_000 + DECIDE_WAIT_NS)
    assert s1.attributes[CAUSE] == b"a" * 8 and s1.attributes[CAUSE_VIA] == "elimination"


def test_request_read_after_the_call_began_is_not_the_calls():
    c = grpc_streams({b"a" * 8: 3_000})
    s1, _ = worker_call(c, W1, 5_000, 6_000)
    c.request_read(PID, IO, b"b" * 8, 5_500, stream=True)
    answer(c, IO, b"a" * 8, 6_400)
    answer(c, IO, b"b" * 8, 6_500)
    flush_all(c, 6_000 + DECIDE_WAIT_NS)
    assert s1.attributes[CAUSE] == b"a" * 8


def test_a_thread_that_never_ran_a_handler_is_not_given_the_one_open_request():
    """A background thread of the server (a cache refresher) calls while one request is open: its call may be for no
    request at all."""
    c = grpc_streams({b"a" * 8: 3_000})
    s, _ = worker_call(c, 31, 5_000, 6_000)
    answer(c, IO, b"a" * 8, 6_400)
    flush_all(c, 6_000 + 2 * DECIDE_WAIT_NS)
    assert CAUSE not in s.attributes


def test_no_elimination_once_the_process_had_more_open_requests_than_are_kept():
    """A request forgotten while open could be the call's: with the table overflowed nothing is decided by it."""
    from edge.sources.ebpf.spans.causes import _MAX_UNANSWERED
    c = grpc_streams({(1000 + i).to_bytes(8, "big"): 3_000 + i for i in range(_MAX_UNANSWERED + 1)})
    for i in range(1, _MAX_UNANSWERED):
        answer(c, IO, (1000 + i).to_bytes(8, "big"), 4_900)  # all but the forgotten first and the last are answered
    s, _ = worker_call(c, W1, 5_000, 6_000)
    flush_all(c, 6_000 + 2 * DECIDE_WAIT_NS)
    assert CAUSE not in s.attributes


def test_requests_read_before_the_process_showed_a_pool_are_decided_by_the_response():
    """The first streams are read before any wakeup told the process is a pool; their calls are still decided."""
    c = Causes()
    c.request_read(PID, IO, b"a" * 8, 1_000, stream=True)
    c.wakeup(WakeupEvent(1_100, PID, IO, DISPATCH, 0), [])
    span, _ = worker_call(c, W1, 5_000, 6_000)
    answer(c, W1, b"a" * 8, 6_200)
    flush_all(c, 6_000 + DECIDE_WAIT_NS)
    assert span.attributes[CAUSE] == b"a" * 8 and span.attributes[CAUSE_VIA] == "response"


def test_no_elimination_in_a_process_whose_requests_may_not_all_have_been_seen():
    """A server connection first seen after its start (or whose bytes were lost) may carry a request never read here:
    the call may be that one's."""
    c = grpc_streams({b"a" * 8: 3_000})
    c.requests_unseen(PID)
    s, _ = worker_call(c, W1, 5_000, 6_000)
    answer(c, IO, b"a" * 8, 6_400)
    flush_all(c, 6_000 + 2 * DECIDE_WAIT_NS)
    assert CAUSE not in s.attributes


def test_a_response_begun_before_the_call_was_answered_does_not_rule_its_request_out():
    """A server-streaming handler writes its response head, then calls, then writes the rest: only the end of its
    exchange shows its handler was done."""
    c = grpc_streams({b"a" * 8: 3_000, b"b" * 8: 3_200})
    s, _ = worker_call(c, W1, 5_000, 6_000)  # answered at 5_100
    answer(c, IO, b"b" * 8, 5_050, end=False)  # b's head, before the call was answered
    answer(c, IO, b"a" * 8, 6_400)
    c.request_ended(PID, b"b" * 8, 6_500)
    flush_all(c, 6_000 + 2 * DECIDE_WAIT_NS)
    assert CAUSE not in s.attributes and s.attributes[CAUSE_VIA] == "ambiguous"


def test_a_workers_first_call_before_any_handoff_was_seen_waits_for_its_response():
    """The first streams of a grpcio server: no wakeup has shown the pool yet, but a thread serving none in a process
    reading HTTP/2 streams is a worker; its call is decided by the response it writes, never left to timing rules."""
    c = Causes()
    c.request_read(PID, IO, b"a" * 8, 1_000, stream=True)
    c.request_read(PID, IO, b"b" * 8, 1_100, stream=True)
    s1, _ = worker_call(c, W1, 5_000, 6_000)
    s2, _ = worker_call(c, W2, 5_100, 6_100)
    answer(c, W1, b"a" * 8, 6_200)
    answer(c, IO, b"b" * 8, 6_300)
    flush_all(c, 6_100 + 2 * DECIDE_WAIT_NS)
    assert s1.attributes[CAUSE] == b"a" * 8 and s1.attributes[CAUSE_VIA] == "response"
    assert CAUSE not in s2.attributes and s2.attributes[CAUSE_VIA] == "ambiguous"  # W2 never showed it runs handlers


def test_a_busy_workers_calls_all_come_out_when_more_wait_than_are_kept():
    """A pool worker making calls faster than their decisions come: past the calls a thread keeps waiting, the oldest
    is decided on what is known then, and its span still comes out (it was dropped)."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    b.feed([WakeupEvent(1_500, PID, 101, 201, 0)])  # a hand-off: 201 is a pool worker, its calls wait
    out = []
    for i in range(100):
        sock, ts, r = 10 + i, 10_000 + i * 5_000, req(target=f"/db?c={10 + i}")
        at = {"pid": PID, "tid": 201, "role": Role.CLIENT, "local": Endpoint(CLI.addr, 40000 + sock), "remote": DB}
        out += b.feed([data(sock, OUT, ts, r, **at)])
        out += b.feed([data(sock, IN, ts + 1_000, resp(), prev_bytes=len(r), prev_end=ts + 50, **at)])
    out += b.flush(10**12)
    assert sorted(s.attributes["url.query"] for s in out if s.kind == SpanKind.CLIENT) == sorted(
        f"c={10 + i}" for i in range(100))


# -- responses an I/O thread wrote for several workers: the order the workers queued them in ----------------------

W3 = 23


def asleep(c: Causes, tid: int, since: int, woken: int) -> None:
    """Worker `tid` slept from `since` until the dispatcher woke it at `woken` (for its next work)."""
    c.wakeup(WakeupEvent(woken, PID, DISPATCH, tid, since), [])


def written_together(w2_end: int = 6_100, sleeps: tuple[tuple[int, int], ...] = ((W1, 6_050), (W2, 6_150)),
                     socks: tuple[int, int] = (7, 7)) -> tuple[Causes, Span, Span]:
    """Workers W1 and W2 call (W1's ends at 6_000, W2's at `w2_end`) and sleep from the given times on; then an I/O
    thread writes b's response and a's at once (on connections `socks`), and the calls are decided."""
    c = grpc_streams({b"a" * 8: 3_000, b"b" * 8: 3_200})
    s1, _ = worker_call(c, W1, 5_000, 6_000)
    s2, _ = worker_call(c, W2, 5_100, w2_end)
    for tid, since in sleeps:
        asleep(c, tid, since, 9_000)
    answer(c, IO, b"b" * 8, 6_400, sock=socks[0])
    answer(c, IO, b"a" * 8, 6_400, sock=socks[1])
    flush_all(c, 6_100 + 2 * DECIDE_WAIT_NS)
    return c, s1, s2


def test_responses_one_write_carried_go_to_the_workers_in_the_order_they_queued_them():
    """Both responses went out in one write of the I/O thread, b's first. W1 had read its whole answer and gone to sleep
    before W2 had read its own: W1 queued its response first, so b is W1's (and a, read first, W2's)."""
    c, s1, s2 = written_together()
    assert s1.attributes[CAUSE] == b"b" * 8 and s1.attributes[CAUSE_VIA] == "write-order"
    assert s2.attributes[CAUSE] == b"a" * 8  # by elimination once W1 is known to have run b
    assert c.stats.write_order == 1 and c.stats.write_order_conflicts == 0


def test_responses_of_one_connection_written_apart_keep_the_order_the_workers_queued_them_in():
    """b's response went out in a write before a's: a worker queuing later cannot have its response written first."""
    c = grpc_streams({b"a" * 8: 3_000, b"b" * 8: 3_200})
    s1, _ = worker_call(c, W1, 5_000, 6_000)
    s2, _ = worker_call(c, W2, 5_100, 6_200)
    asleep(c, W1, 6_050, 9_000)
    answer(c, IO, b"b" * 8, 6_100, sock=7)
    asleep(c, W2, 6_250, 9_100)
    answer(c, IO, b"a" * 8, 6_400, sock=7)
    flush_all(c, 6_200 + DECIDE_WAIT_NS)
    assert s1.attributes[CAUSE] == b"b" * 8 and s2.attributes[CAUSE] == b"a" * 8


def test_workers_that_may_have_queued_in_either_order_stay_ambiguous():
    """W2 read its whole answer before W1 went to sleep: either may have queued first."""
    _, s1, s2 = written_together(sleeps=((W1, 6_150), (W2, 6_200)))
    assert all(CAUSE not in s.attributes and s.attributes[CAUSE_VIA] == "ambiguous" for s in (s1, s2))


def test_a_worker_awake_at_the_write_may_have_queued_up_to_it():
    """W2 was not seen asleep at the write: it may have queued any time before it, so before W1."""
    _, s1, s2 = written_together(w2_end=5_900, sleeps=((W1, 6_050),))
    assert all(CAUSE not in s.attributes for s in (s1, s2))


def test_responses_on_two_connections_are_not_ordered_by_their_writes():
    _, s1, s2 = written_together(socks=(7, 8))
    assert all(CAUSE not in s.attributes for s in (s1, s2))


def test_an_order_that_gives_a_worker_a_request_it_cannot_have_run_turns_the_rule_off():
    """d was read after W1's call began, so W1 cannot have run it; yet W1 queued last and d went out last: this
    process's writes do not follow the order its workers queued in, and the rule is not used there again."""
    c = grpc_streams({b"a" * 8: 3_000, b"b" * 8: 3_100}, workers=(W1, W2, W3))
    s1, _ = worker_call(c, W1, 5_000, 7_000)
    c.request_read(PID, IO, b"d" * 8, 5_500, stream=True)
    s2, _ = worker_call(c, W2, 5_600, 6_000)
    s3, _ = worker_call(c, W3, 5_700, 6_200)
    asleep(c, W2, 6_050, 9_000)
    asleep(c, W3, 6_300, 9_100)
    asleep(c, W1, 7_050, 9_200)
    for r in (b"a", b"b", b"d"):
        answer(c, IO, r * 8, 8_000, sock=7)
    flush_all(c, 7_000 + 2 * DECIDE_WAIT_NS)
    assert c.stats.write_order == 0 and c.stats.write_order_conflicts >= 1
    assert all(s.attributes.get(CAUSE_VIA) != "write-order" for s in (s1, s2, s3))


def test_a_request_another_worker_ran_answered_meanwhile_does_not_unsettle_the_response_rule():
    """W1 answered a (its own call's request, decided) while W2 moved from its call's answer to writing b: a is not
    W2's own request answered by another thread, so b decides W2's call (d, still open, kept elimination out)."""
    c = grpc_streams({b"a" * 8: 3_000, b"b" * 8: 3_200, b"d" * 8: 3_300})
    s1, _ = worker_call(c, W1, 5_000, 6_000)
    s2, _ = worker_call(c, W2, 5_100, 6_100)
    answer(c, W1, b"a" * 8, 6_300)
    answer(c, W2, b"b" * 8, 6_500)
    flush_all(c, 6_100 + DECIDE_WAIT_NS)
    assert s1.attributes[CAUSE] == b"a" * 8 and s1.attributes[CAUSE_VIA] == "response"
    assert s2.attributes[CAUSE] == b"b" * 8 and s2.attributes[CAUSE_VIA] == "response"


# -- an event loop's calls of a turn that read several requests, decided by their order (`loop-order`) ------------

def _write_loop_call(b, sock, ts, tid=101):
    return b.feed([data(sock, OUT, ts, req(target=f"/db?c={sock}"), pid=PID, tid=tid, role=Role.CLIENT,
                        local=Endpoint(CLI.addr, 40000 + sock), remote=DB)])


def _answer_loop_call(b, sock, ts, sent, tid=101):
    return b.feed([data(sock, IN, ts, resp(), pid=PID, tid=tid, role=Role.CLIENT,
                        local=Endpoint(CLI.addr, 40000 + sock), remote=DB,
                        prev_bytes=len(req(target=f"/db?c={sock}")), prev_end=sent + 50)])


def _turn_with_calls_x_y_z(skip_one_call=False):
    """A loop that learned its distances (3 turns from read to call, 0 from last answer to response) reads a and b in
    one turn and, three turns later, writes calls x, y, z; x and y are answered in the next turn, with a's response,
    and z the turn after, with b's. With `skip_one_call`, one request learned on made no call."""
    b = builder()
    ts = loop_learns_lag(b, n=33)
    if skip_one_call:
        b.feed([TurnEvent(ts, PID, 101, 1)])
        serve_read(b, 99, ts + 10, 101, "nocall")
        serve_answer(b, 99, ts + 1_500, 101)
        ts += 10_000
    b.feed([TurnEvent(ts, PID, 101, 2)])
    serve_read(b, 1, ts + 10, 101, "a")
    serve_read(b, 2, ts + 20, 101, "b")
    for i in range(1, 4):
        b.feed([TurnEvent(ts + 2_000 * i, PID, 101, 0)])
    out = []
    for sock, at in ((10, ts + 6_100), (11, ts + 6_200), (12, ts + 6_300)):
        out += _write_loop_call(b, sock, at)
    b.feed([TurnEvent(ts + 8_000, PID, 101, 2)])
    out += _answer_loop_call(b, 10, ts + 8_100, ts + 6_100)
    out += _answer_loop_call(b, 11, ts + 8_200, ts + 6_200)
    out += serve_answer(b, 1, ts + 8_500, 101)
    sa = server_span(out)
    b.feed([TurnEvent(ts + 10_000, PID, 101, 2)])
    out += _answer_loop_call(b, 12, ts + 10_100, ts + 6_300)
    answered = serve_answer(b, 2, ts + 10_500, 101)  # the calls go out with the last response of their turn
    sb = server_span(answered)
    out += answered
    calls = {s.attributes["url.query"]: s for s in out if s.kind == SpanKind.CLIENT}
    return b, calls["c=10"], calls["c=11"], calls["c=12"], sa, sb


def test_loop_calls_of_one_turn_follow_the_order_of_its_reads_and_answers():
    """The loop runs a's handler, then b's: a's calls come first. z was answered after a's response: b's; every
    request of this loop makes a call, so x, the first, is a's; y may be a's last or b's first: left."""
    b, x, y, z, sa, sb = _turn_with_calls_x_y_z()
    assert x.attributes[CAUSE] == sa.span_id and x.attributes[CAUSE_VIA] == "loop-order"
    assert z.attributes[CAUSE] == sb.span_id and z.attributes[CAUSE_VIA] == "loop-order"
    assert CAUSE not in y.attributes and y.attributes[CAUSE_VIA] == "ambiguous"
    assert b.causes.stats.loop_order == 2 and b.causes.stats.loop_order_conflicts == 0


def test_loop_whose_requests_do_not_all_call_leaves_the_first_call():
    """Once a request was seen answered without a call, a may have made none: x may be b's too."""
    b, x, y, z, sa, sb = _turn_with_calls_x_y_z(skip_one_call=True)
    assert z.attributes[CAUSE] == sb.span_id and z.attributes[CAUSE_VIA] == "loop-order"
    assert CAUSE not in x.attributes and x.attributes[CAUSE_VIA] == "ambiguous"
    assert CAUSE not in y.attributes and y.attributes[CAUSE_VIA] == "ambiguous"


def test_loop_order_that_fits_no_assignment_decides_nothing_and_unlearns():
    """A response begun before the last turn any of the turn's answers could be its (a handler that answered without
    awaiting its calls): no assignment fits, nothing is decided and the distances are learned again."""
    b = builder()
    ts = loop_learns_lag(b, n=33)
    b.feed([TurnEvent(ts, PID, 101, 2)])
    serve_read(b, 1, ts + 10, 101, "a")
    serve_read(b, 2, ts + 20, 101, "b")
    for i in range(1, 4):
        b.feed([TurnEvent(ts + 2_000 * i, PID, 101, 0)])
    out = _write_loop_call(b, 10, ts + 6_100) + _write_loop_call(b, 11, ts + 6_200)
    b.feed([TurnEvent(ts + 8_000, PID, 101, 2)])
    out += serve_answer(b, 1, ts + 8_050, 101) + serve_answer(b, 2, ts + 8_060, 101)
    b.feed([TurnEvent(ts + 10_000, PID, 101, 2)])
    out += _answer_loop_call(b, 10, ts + 10_100, ts + 6_100) + _answer_loop_call(b, 11, ts + 10_200, ts + 6_200)
    out += b.flush(ts + 20_000 + DECIDE_WAIT_NS)
    calls = [s for s in out if s.kind == SpanKind.CLIENT]
    assert len(calls) == 2 and all(CAUSE not in s.attributes for s in calls)
    assert b.causes.stats.loop_order == 0 and b.causes.stats.loop_order_conflicts == 1


def worker_took_work_running():
    """Worker 201 ran a call for a's thread and, still running, took the next work off the queue (no hand-off: a's
    thread put it there while 201 was awake) and called: the second call has no certain hand-off."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    serve_read(b, 2, 1_200, 102, "b")
    b.feed([WakeupEvent(1_300, PID, 102, 201, 0)])
    call(b, 11, 1_400, 201)
    b.feed([WakeupEvent(2_600, PID, 201, 102, 1_350)])  # b's result, b's thread asleep through the call
    serve_answer(b, 2, 2_800, 102)
    assert call(b, 10, 3_000, 201) == []  # a's work, taken running
    return b


def test_a_call_without_a_handoff_takes_the_one_requester_its_result_woke():
    """a's thread fell asleep after the call began (it queued the work while the worker was awake) and slept through
    the answer; the worker wakes it once answered, and no other such thread: a's."""
    b = worker_took_work_running()
    assert b.feed([WakeupEvent(4_500, PID, 201, 101, 3_500)]) == []
    (c,) = b.flush(10_000 + DECIDE_WAIT_NS)
    sa = server_span(serve_answer(b, 1, 20_000, 101))
    assert c.attributes[CAUSE] == sa.span_id and c.attributes[CAUSE_VIA] == "handback"
    assert b.causes.stats.handback == 1


def test_a_call_without_a_handoff_whose_worker_woke_two_requesters_is_left_ambiguous():
    """The worker first wakes c's thread (asleep since after the call began: waiting for the GIL, not a result), then
    a's: either could be the requester, so neither decides."""
    b = worker_took_work_running()
    serve_read(b, 3, 3_100, 103, "c")
    assert b.feed([WakeupEvent(4_400, PID, 201, 103, 3_200)]) == []
    assert b.feed([WakeupEvent(4_500, PID, 201, 101, 3_500)]) == []
    (c,) = b.flush(10_000 + DECIDE_WAIT_NS)
    assert CAUSE not in c.attributes and c.attributes[CAUSE_VIA] == "ambiguous"


def test_a_call_without_a_handoff_is_not_given_a_request_another_worker_ran():
    """The one thread the worker woke serves b, whose call another worker's hand-back already decided: it was woken
    for a lock, and the call stays undecided."""
    b = two_requests((101, 201, 1_700))
    assert call(b, 11, 1_800, 202) == []  # 202 handed nothing seen: its call is b's only by the hand-back below
    assert call(b, 12, 1_900, 201) == []  # 201: a's call, decided by its hand-back below
    (first,) = b.feed([WakeupEvent(2_700, PID, 201, 101, 1_750)])
    assert call(b, 10, 3_000, 201) == []  # taken running; nobody's hand-back below is certain
    (bs,) = b.feed([WakeupEvent(3_800, PID, 202, 102, 1_650)])  # b's call decided for b by its worker, 202
    assert bs.attributes[CAUSE_VIA] == "wakeup"
    assert b.feed([WakeupEvent(4_500, PID, 201, 102, 3_500)]) == []  # b's thread woken again: a lock
    (c,) = b.flush(10_000 + DECIDE_WAIT_NS)
    assert CAUSE not in c.attributes and c.attributes[CAUSE_VIA] == "ambiguous"


def test_a_call_without_a_handoff_is_not_given_a_request_handed_to_another_worker():
    """The one thread the worker woke serves b, whose work another worker was handed and is still calling for: b's
    thread was woken for a lock, and the call stays undecided."""
    b = two_requests((102, 202, 1_600), (101, 201, 1_700))
    b.feed([data(11, OUT, 1_800, req(target="/db?c=11"), pid=PID, tid=202, role=Role.CLIENT,
                 local=Endpoint(CLI.addr, 40011), remote=DB)])  # b's call, in flight throughout
    assert call(b, 12, 1_900, 201) == []
    b.feed([WakeupEvent(2_700, PID, 201, 101, 1_750)])  # a's call: decided by its hand-back
    assert call(b, 10, 3_000, 201) == []  # taken running
    assert b.feed([WakeupEvent(4_500, PID, 201, 102, 3_500)]) == []  # b's thread woken: a lock
    out = b.flush(10_000 + DECIDE_WAIT_NS)
    (c,) = [s for s in out if "c=10" in str(s.attributes.get("url.query"))]
    assert CAUSE not in c.attributes and c.attributes[CAUSE_VIA] == "ambiguous"


def test_a_busy_workers_oldest_waiting_call_is_decided_early_counted_and_its_bytes_held_until_then():
    """A worker's finished calls hold their spans while they wait (counted in `held_bytes`, which the builder state the
    memory governor budgets includes); past 64 waiting, the oldest is decided at once, counted."""
    b = builder()
    serve_read(b, 1, 1_000, 101, "a")
    b.feed([WakeupEvent(2_000, PID, 101, 201, 0)])
    assert call(b, 10, 5_000, 201) == [] and b.causes.held_bytes > 0
    one = b.causes.held_bytes
    out = []
    for k in range(1, 64):
        out += call(b, 10 + k, 5_000 + k * 10_000, 201)
    assert out == [] and b.causes.stats.waiting_forced == 0 and b.causes.held_bytes > 60 * one * 0.9
    before = b.causes.held_bytes
    call(b, 80, 900_000, 201)  # the 65th: c=10 is decided and goes out as this one begins
    assert b.causes.stats.waiting_forced == 1 and b.causes.waiting_count == 64 and b.causes.held_bytes == before
    b.flush(10**12)
    assert b.causes.held_bytes == 0
