"""The span builder's tables under the byte bound the memory governor plans: accounted, evicted oldest first, counted."""
from __future__ import annotations

from edge.agent.governor import MemoryGovernor
from edge.sources.ebpf.builder_state import CONN_BYTES, THREAD_BYTES, BuilderState

from .spans._helpers import IN, OUT, builder, data, req, resp

MiB = 1024 * 1024


def serve(b, first_sock: int, n: int, *, pid: int = 100, keep_open: bool = False) -> None:
    """`n` requests, each on its own connection served by its own thread (ThreadingHTTPServer's way); the threads'
    state stays after their requests, as it does when the threads end."""
    for i in range(n):
        sock, tid, t = first_sock + i, 5000 + first_sock + i, (first_sock + i) * 1_000_000
        b.feed([data(sock, IN, t, req(target=f"/r?i={i}"), pid=pid, tid=tid)])
        if not keep_open:
            b.feed([data(sock, OUT, t + 1000, resp(), pid=pid, tid=tid)])


def test_the_builders_tables_are_accounted_by_entry():
    b = builder()
    state = BuilderState(b)
    assert state.bytes == 0
    serve(b, 1, 100)
    assert len(b.conns) == 100 and len(b.causes) == 100
    assert state.bytes >= 100 * (CONN_BYTES + THREAD_BYTES)


def test_the_byte_bound_evicts_the_oldest_and_counts_it():
    b = builder()
    state = BuilderState(b)
    serve(b, 1, 400)  # 400 threads and connections seen long ago
    serve(b, 10_000, 20, keep_open=True)  # the live ones: requests still waiting for their response
    bound = state.bytes // 4
    assert state.set_bound(bound) == 0  # the live requests were the most recent: none went
    assert state.bytes <= bound
    ev = state.evictions
    assert ev.connections > 250 and ev.threads > 250 and ev.enforced >= 1
    assert b.stats.evicted_connections == ev.connections and b.causes.stats.evicted_threads == ev.threads
    # What was used last stays: the live connections and their threads.
    assert all(b.conns.get(10_000 + i) is not None for i in range(20))
    spans = b.feed([data(10_000 + i, OUT, 10**12 + i, resp(), pid=100, tid=15_000 + i) for i in range(20)])
    assert len(spans) == 20


def test_growth_past_the_bound_is_evicted_at_the_next_enforcement():
    b = builder()
    state = BuilderState(b, bound=256 * 1024)
    serve(b, 1, 200)
    assert state.bytes > state.bound
    state.enforce()
    assert state.bytes <= state.bound and state.evictions.threads > 0
    before = state.evictions.enforced
    state.enforce()  # within the bound: nothing to do
    assert state.evictions.enforced == before


def test_the_drop_step_forgets_the_older_half():
    b = builder()
    state = BuilderState(b)
    serve(b, 1, 200)
    state.drop_all()
    assert len(b.conns) == 100 and len(b.causes) == 100


def test_the_governor_plans_the_state_but_does_not_count_it_as_span_buffers():
    b = builder()
    state = BuilderState(b)
    serve(b, 1, 300)
    baseline = 16 * MiB
    gov = MemoryGovernor(baseline + 4 * MiB, baseline, rss=lambda: baseline, keep_floor=0.25)
    gov.register_state("kernel_state", state, 0.08, bound=0, floor=64 * 1024)
    gov.plan()
    assert state.bound == gov.planned["kernel_state"] == int(4 * MiB * 0.08)
    assert state.bytes <= state.bound and state.evictions.connections > 0
    gov.check()
    status = gov.status()
    assert status["bytes"]["kernel_state"] == state.bytes and status["accounted"] == state.bytes
    assert status["span_bytes"] == 0
    # Registered once the plan was made (the probes start after the governor): planned at once.
    late = BuilderState(builder())
    gov.register_state("late_state", late, 0.05, bound=0)
    assert late.bound == gov.planned["late_state"] == int(4 * MiB * 0.05)
