"""The span builder's tables under the byte bound the memory governor plans: accounted, idle entries evicted oldest
first, live ones (a keep-alive connection between requests, an exchange still open) only past the budget, each
eviction counted by reason."""
from __future__ import annotations

from edge.agent.governor import MemoryGovernor
from edge.agent.metrics_http import health_metrics, render_prometheus
from edge.sources.ebpf.builder_state import CONN_BYTES, IDLE_S, THREAD_BYTES, BuilderState

from .spans._helpers import IN, OUT, builder, data, req, resp

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def serve(b, first_sock: int, n: int, *, pid: int = 100, keep_open: bool = False) -> None:
    """`n` requests, each on its own connection served by its own thread (ThreadingHTTPServer's way); the threads'
    state stays after their requests, as it does when the threads end."""
    for i in range(n):
        sock, tid, t = first_sock + i, 5000 + first_sock + i, (first_sock + i) * 1_000_000
        b.feed([data(sock, IN, t, req(target=f"/r?i={i}"), pid=pid, tid=tid)])
        if not keep_open:
            b.feed([data(sock, OUT, t + 1000, resp(), pid=pid, tid=tid)])


def aged(b, clock: Clock, state: BuilderState, seconds: float) -> None:
    """Let `seconds` pass on the state's clock (the source's periodic enforce() reads it)."""
    clock.t += seconds
    state.enforce()


def test_the_builders_tables_are_accounted_by_entry():
    b = builder()
    state = BuilderState(b)
    assert state.bytes == 0
    serve(b, 1, 100)
    assert len(b.conns) == 100 and len(b.causes) == 100
    assert state.bytes >= 100 * (CONN_BYTES + THREAD_BYTES)


def test_the_bound_evicts_idle_entries_oldest_first_and_counts_them():
    b, clock = builder(), Clock()
    state = BuilderState(b, clock=clock)
    serve(b, 1, 400)  # 400 threads and connections seen long ago
    aged(b, clock, state, IDLE_S + 1)
    serve(b, 10_000, 20, keep_open=True)  # the live ones: requests still waiting for their response
    bound = state.bytes // 4
    assert state.set_bound(bound) == 0  # no request waited on what went
    assert state.bytes <= bound
    ev = state.evictions
    assert ev.connections > 250 and ev.threads > 250 and ev.idle == ev.connections + ev.threads + ev.processes
    assert state.evicted == {"idle": ev.idle, "active": 0, "open": 0}
    assert b.stats.evicted_connections == ev.connections and b.causes.stats.evicted_threads == ev.threads
    assert all(b.conns.get(10_000 + i) is not None for i in range(20))
    spans = b.feed([data(10_000 + i, OUT, 10**12 + i, resp(), pid=100, tid=15_000 + i) for i in range(20)])
    assert len(spans) == 20


def test_live_state_stays_over_the_bound():
    # A keep-alive connection with a request read and its response still to come, used before 200 others: it is the
    # least recently used, and the bound is far below what the live state holds. Evicting by recency alone (as the
    # bound did) lost its request's span and every span of the connection until its next request head.
    b, clock = builder(), Clock()
    state = BuilderState(b, clock=clock)
    b.feed([data(1, IN, 1_000, req(target="/first"), pid=100, tid=7)])
    b.feed([data(1, OUT, 2_000, resp(), pid=100, tid=7)])
    b.feed([data(1, IN, 3_000, req(target="/second"), pid=100, tid=7)])  # open: its response is to come
    serve(b, 100, 200)  # active: answered a moment ago, nothing open
    before = state.bytes
    assert state.set_bound(64 * 1024) == 0 and state.drop_all() == 0
    assert state.bytes == before and state.evictions.idle == 0  # nothing was idle
    assert state.live_bytes == before
    spans = b.feed([data(1, OUT, 4_000, resp(), pid=100, tid=7)])
    assert len(spans) == 1 and b.stats.pending_dropped == 0
    # Once unused for IDLE_S, the answered connections go; the open one stays whatever its age.
    b.feed([data(1, IN, 5_000, req(target="/third"), pid=100, tid=7)])
    aged(b, clock, state, IDLE_S + 1)
    state.set_bound(1)
    assert b.conns.get(1) is not None and len(b.conns) == 1 and state.evictions.open == 0
    assert len(b.feed([data(1, OUT, 6_000, resp(), pid=100, tid=7)])) == 1


def test_past_the_budget_live_state_goes_in_the_stated_order_counted():
    b, clock = builder(), Clock()
    state = BuilderState(b, clock=clock)
    serve(b, 1, 50)
    aged(b, clock, state, IDLE_S + 1)  # idle
    serve(b, 1000, 50)  # active: nothing open
    serve(b, 2000, 10, keep_open=True)  # open
    open_bytes = 10 * (CONN_BYTES + THREAD_BYTES)
    # Down to a bound that the active and open state together exceed, but the open state alone does not.
    dropped = state.evict_live(open_bytes + 512 * 2)
    ev = state.evictions
    assert dropped == 0 and ev.idle >= 100 and ev.active > 0 and ev.open == 0
    assert all(b.conns.get(2000 + i) is not None for i in range(10))
    # Past that, the open exchanges go last, and the requests that waited on them are counted as dropped.
    dropped = state.evict_live(0)
    assert dropped == 10 and ev.open == 20 and ev.requests_dropped == 10 and b.stats.pending_dropped == 10
    assert state.bytes == 0


def test_the_governor_takes_live_state_only_past_the_budget_and_says_so():
    b, clock = builder(), Clock()
    state = BuilderState(b, clock=clock)
    serve(b, 1, 300, keep_open=True)  # 300 open exchanges: ~750 KiB estimated
    baseline = 16 * MiB
    rss = [baseline]
    gov = MemoryGovernor(baseline + 4 * MiB, baseline, rss=lambda: rss[0], keep_floor=0.25)
    gov.register_state("kernel_state", state, 0.08, bound=0, floor=64 * 1024)
    gov.plan()
    assert state.bound == gov.planned["kernel_state"] == int(4 * MiB * 0.08) < state.bytes
    held = state.bytes
    # Pressure from elsewhere (the heap), up to the drop step: the bound shrinks, the live state stays.
    for pressure in (0.85, 0.9, 0.96):
        rss[0] = baseline + int(4 * MiB * pressure)
        gov.check()
    assert state.bytes == held and state.evicted == {"idle": 0, "active": 0, "open": 0}
    status = gov.status()
    assert status["bytes"]["kernel_state"] == held and status["span_bytes"] == 0
    assert status["state"]["kernel_state"]["live_bytes"] == held
    assert gov.stats.actions["shrink_kernel_state"] >= 1 and gov.stats.actions["evict_live_state"] == 0
    # Past the budget itself: live state goes down to its bound, counted, and /metrics shows why.
    rss[0] = baseline + 4 * MiB + 1
    gov.check()
    assert state.bytes <= state.bound and state.evicted["open"] > 0 and gov.stats.actions["evict_live_state"] == 1
    assert gov.stats.dropped["kernel_state_pressure"] == b.stats.pending_dropped > 0


def test_state_evictions_and_live_bytes_are_on_metrics():
    from types import SimpleNamespace

    b, clock = builder(), Clock()
    state = BuilderState(b, clock=clock)
    serve(b, 1, 10)
    aged(b, clock, state, IDLE_S + 1)
    serve(b, 100, 5, keep_open=True)
    gov = MemoryGovernor(32 * MiB, 16 * MiB, rss=lambda: 16 * MiB)
    gov.register_state("kernel_state", state, 0.08, bound=0)
    gov.plan()
    state.set_bound(1)
    gov.check()
    status = {"governor": gov.status()}
    text = render_prometheus([health_metrics(SimpleNamespace(status=lambda: _agent_status(status)))])
    assert 'helix_agent_memory_state_evicted_total{service_name="helix-agent",part="kernel_state",reason="idle"} 20' in text
    assert 'helix_agent_memory_state_bytes{service_name="helix-agent",part="kernel_state",kind="live"} ' in text


def _agent_status(extra):
    """The least of an agent's status that health_metrics reads, with the governor's."""
    return {"node": "n1", "inbox": {"accepted": {}, "dropped_full": {}, "bytes": 0},
            "otlp": {"dropped": {}, "requests": 0, "spans": 0}, "mqtt": None,
            "sampler": {"dropped": 0, "kept_head": 0, "kept_tail": 0, "ratio": 1.0}, "uplink": {},
            "assembler": {}, "kernel": {}, **extra}


def test_a_connect_whose_first_call_is_still_to_come_stays_until_it_is_stale():
    b, clock = builder(), Clock()
    state = BuilderState(b, clock=clock)
    b.causes.connected(100, 77, int((clock.t - 1) * 1e9))  # a second ago: its first write is still to come
    b.causes.connected(100, 78, int((clock.t - IDLE_S - 5) * 1e9))  # no data followed for longer than IDLE_S
    state.set_bound(1)
    assert [k for k, _ in b.causes.connects()] == [(100, 77)] and state.evictions.connects == 1
