"""The memory governor on a real Agent (not started): buffers filled with real spans, each step checked."""
from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from bench._workload import realistic_spans
from edge.agent import Agent
from edge.agent.governor import SETTLE, TRIM_EVERY, MemoryGovernor, read_rss
from edge.config import parse_config
from edge.model import Source
from uplink.wire import EMPTY

MiB = 1024 * 1024
H = 32 * MiB  # the headroom the tests govern


@pytest.fixture
def agent() -> Agent:
    # The cold-start table set is one per process and its encoder's memo is counted in the agent's "tables" part:
    # other tests here filled it, where a fresh agent starts with it empty.
    EMPTY.clear_memo()
    cfg = parse_config({"node": {"id": "gov"}, "sources": {"ebpf": {"enabled": False}, "mqtt": {"enabled": False},
                                                           "otlp": {"grpc_listen": "", "http_listen": ""}},
                        "memory": {"limit": "512MiB"}, "metrics": {"listen": ""},
                        "sampler": {"ratio": 0.5, "buffer": "2MiB", "new_route_traces": 0, "decision_wait": "60s"},
                        "uplink": {"transport": "http", "spool_dir": ""}})
    return Agent(cfg)


def governor(agent: Agent, headroom: int) -> MemoryGovernor:
    # A baseline far above the real RSS: usage is then baseline + accounted bytes, so the test steers the pressure
    # with the buffers alone, whatever else the test process holds.
    baseline = read_rss() + 96 * MiB
    agent.governor = agent.govern(MemoryGovernor(baseline + headroom, baseline))
    # A test process that already grew large (after the kernel tests) would trip the "limit leaves no room"
    # guard and get a quarter of the limit instead; the steps are what is under test here, so pin the room.
    agent.governor.headroom = headroom
    return agent.governor


def fill_inbox(agent: Agent, nbytes: int) -> int:
    spans = realistic_spans(500, seed=random.randrange(1000))  # reused: the inbox holds references
    n = 0
    while agent.inbox.bytes < nbytes:
        n += agent.inbox.put([spans[n % len(spans)]], Source.SDK_OTLP)
    return n


def test_rss_is_read_from_proc() -> None:
    rss = read_rss()
    assert 5 * MiB < rss < 4096 * MiB


def test_no_pressure_no_action(agent: Agent) -> None:
    gov = governor(agent, H)
    fill_inbox(agent, H // 8)
    assert gov.check() < 0.7
    assert gov.factor == 1.0 and not any(gov.stats.actions.values())
    assert gov.stats.breakdown["inbox"] == agent.inbox.bytes


def test_steps_in_order_as_pressure_rises(agent: Agent) -> None:
    gov = governor(agent, H)
    # Undecided traces in the tail buffer: the head (ratio 0.5) rejects about half of these.
    kept, _ = agent.sampler.decide(realistic_spans(600, seed=2))
    assert len(agent.sampler.tail) > 0
    tail_before = agent.sampler.bytes

    fill_inbox(agent, int(0.75 * H) - tail_before)  # about 75 %
    p = gov.check()
    assert 0.7 <= p < 0.8
    assert gov.stats.actions["raise_threshold"] == 1 and gov.factor == 0.5
    assert agent.sampler.effective_ratio == 0.25
    assert gov.stats.actions["shrink_tail"] == 0

    fill_inbox(agent, int(0.85 * H) - tail_before)  # about 85 %
    gov.check()
    assert gov.stats.actions["raise_threshold"] == 2 and gov.stats.actions["shrink_tail"] == 1
    assert agent.sampler.tail.capacity == 1 * MiB
    assert agent.sampler.bytes <= 1 * MiB
    assert gov.stats.actions["drop"] == 0

    fill_inbox(agent, int(0.97 * H))  # about 97 %
    waiting = len(agent.inbox)
    red = agent.aggregator.stats
    seen_before = red.spans + red.ignored
    gov.check()
    assert gov.stats.actions["drop"] == 1
    assert len(agent.inbox) == 0 and agent.sampler.bytes < 64 * 1024
    assert gov.stats.dropped["inbox_pressure"] == waiting
    assert red.spans + red.ignored == seen_before + waiting  # dropped spans are still counted in RED
    status = agent.status()["governor"]
    assert status["actions"]["drop"] == 1 and status["dropped"]["inbox_pressure"] == waiting


def test_relaxes_step_by_step_when_pressure_is_gone(agent: Agent) -> None:
    gov = governor(agent, H)
    original_assembler_bound = agent.assembler.max_bytes
    original_inbox_bound = agent.inbox.max_bytes
    fill_inbox(agent, int(0.85 * H))
    gov.check()
    gov.check()
    assert agent.assembler.max_bytes == original_assembler_bound // 4
    assert gov.factor == 0.25 and agent.sampler.tail.capacity == 512 * 1024
    agent.inbox.drain()
    gov.check()
    assert gov.factor == 0.5 and agent.sampler.tail.capacity == 1 * MiB
    gov.check()
    assert gov.factor == 1.0 and agent.sampler.effective_ratio == 0.5
    assert agent.sampler.tail.capacity == 2 * MiB
    # The assembler's bound for held spans was halved twice (released early under pressure): back to its own.
    assert gov.stats.actions["shrink_assembler"] == 2
    assert agent.assembler.max_bytes == original_assembler_bound
    assert agent.inbox.max_bytes == original_inbox_bound and gov.stats.actions["shrink_inbox"] == 2
    relaxed = gov.stats.actions["relax"]
    gov.check()
    assert gov.stats.actions["relax"] == relaxed  # nothing left to relax


def test_a_budget_below_the_idle_process_is_reported_and_governed_anyway(agent: Agent,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    gov = agent.govern(MemoryGovernor(16 * MiB, baseline=40 * MiB))
    assert "raise memory.limit" in caplog.text
    assert gov.headroom == 4 * MiB
    assert gov.check() >= 1.0  # the RSS alone is over: the governor acts
    assert gov.stats.actions["raise_threshold"] == 1


def test_spans_refused_at_the_door_still_count_in_red(agent: Agent) -> None:
    agent.inbox.max_bytes = 64 * 1024  # as the governor leaves it under pressure
    spans = realistic_spans(200, seed=4)
    taken = agent.submit(spans, Source.SDK_MQTT)
    assert 0 < taken < len(spans)
    assert agent.inbox.stats.dropped_full["sdk-mqtt"] == len(spans) - taken
    red = agent.aggregator.stats
    assert red.spans + red.ignored == len(spans) - taken
    agent._process(agent.inbox.drain(), flush=True)
    assert red.spans + red.ignored == len(spans)


def test_plan_bounds_every_buffer_by_its_share_of_the_headroom(agent: Agent) -> None:
    from edge.agent.governor import SHARES

    gov = governor(agent, H)
    before_tail = agent.sampler.tail.capacity  # 2 MiB configured: below its share, so it stays
    planned = gov.plan()
    assert agent.assembler.max_bytes == planned["assembler"] == int(H * SHARES["assembler"])
    assert agent.inbox.max_bytes == planned["inbox"] == int(H * SHARES["inbox"])
    assert agent.uplink.queue_limit == planned["uplink"] == min(8 * MiB, int(H * SHARES["uplink"]))
    assert agent.sampler.tail.capacity == planned["tail"] == before_tail
    assert sum(planned.values()) <= 0.75 * H
    # The inbox now refuses what would not fit its share, at the door (OTLP clients are told to retry).
    filled = fill_inbox(agent, planned["inbox"] - 64 * 1024)
    assert agent.inbox.put(realistic_spans(2000, seed=5), Source.SDK_OTLP) < 22000
    assert filled > 0 and agent.inbox.bytes <= planned["inbox"]


async def test_the_grpc_receiver_is_planned_and_accounted() -> None:
    import grpc as grpcio

    from edge.agent.governor import SHARES

    cfg = parse_config({"node": {"id": "gov"}, "sources": {"ebpf": {"enabled": False}, "mqtt": {"enabled": False},
                                                           "otlp": {"grpc_listen": "127.0.0.1:0", "http_listen": ""}},
                        "memory": {"limit": "512MiB"}, "metrics": {"listen": ""},
                        "uplink": {"transport": "http", "spool_dir": ""}})
    agent = Agent(cfg)
    gov = governor(agent, H)
    planned = gov.plan()
    assert agent.grpc.server.max_buffered == planned["receiver"] == int(H * SHARES["receiver"])
    # Bytes of a request still arriving are counted while they arrive: hold one open with a stalled client.
    await agent.grpc.start()
    try:
        async with grpcio.aio.insecure_channel(f"127.0.0.1:{agent.grpc.port}") as ch:
            seen: list[int] = []
            export = agent.grpc.server.methods["/opentelemetry.proto.collector.trace.v1.TraceService/Export"]
            # Asked when the request is complete and before it is handled: its bytes are still counted.
            export.ready = lambda n: seen.append(gov.accounted()["receiver"]) or True
            call = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                  request_serializer=None, response_deserializer=None)
            with pytest.raises(grpcio.aio.AioRpcError):  # not OTLP: INVALID_ARGUMENT, after it was fully received
                await call(b"\xff" * 50_000, timeout=5)
        assert len(seen) == 1 and seen[0] >= 50_000 + 5  # counted until handed over
        assert agent.grpc.server.stats.buffered_peak >= 50_000 and gov.accounted()["receiver"] == 0
    finally:
        await agent.grpc.stop()


def test_after_pressure_buffers_regrow_to_the_plan_not_beyond(agent: Agent) -> None:
    gov = governor(agent, 8 * MiB)
    planned = gov.plan()
    agent.sampler.decide(realistic_spans(600, seed=3))
    fill_inbox(agent, int(0.55 * planned["inbox"]))
    for _ in range(3):
        gov._shrink()
    assert agent.sampler.tail.capacity < planned["tail"] and agent.inbox.max_bytes < planned["inbox"]
    agent.inbox.drain()
    for _ in range(20):
        gov.check()
    assert agent.sampler.tail.capacity == planned["tail"] and agent.inbox.max_bytes == planned["inbox"]


def test_released_spans_are_accounted_by_their_compact_records(agent: Agent) -> None:
    gov = governor(agent, H)
    spans = realistic_spans(300, seed=9)
    held = sum(s.approx_size() for s in spans)
    agent.assembler.process(spans, now=0.0)
    assert gov.accounted()["assembler"] == held
    agent.assembler.process([], now=agent.assembler.config.window + 0.1)  # all released, still indexed
    after = gov.accounted()["index"]
    assert 0 < after < held / 2 and gov.accounted()["assembler"] == 0


async def test_a_live_budget_change_replans_every_buffer(agent: Agent) -> None:
    import dataclasses

    from edge.fleet.apply import ConfigApplier

    gov = agent.governor
    gov.set_baseline(read_rss())
    before = gov.plan()
    bigger = dataclasses.replace(agent.cfg, memory=dataclasses.replace(agent.cfg.memory,
                                                                       limit=agent.cfg.memory.limit + 256 * MiB))
    res = await ConfigApplier(agent).apply(bigger)
    assert "memory" in res.applied and gov.limit == bigger.memory.limit
    after = gov.planned
    assert after["inbox"] > before["inbox"] and after["assembler"] > before["assembler"]
    assert agent.inbox.max_bytes == after["inbox"] and agent.assembler.max_bytes == after["assembler"]


def test_checks_come_faster_near_the_limit(agent: Agent) -> None:
    gov = MemoryGovernor(64 * MiB, 32 * MiB, interval=0.5)
    assert gov.next_interval(0.5) == gov.next_interval(0.79) == 0.5
    assert gov.next_interval(0.8) == gov.next_interval(1.2) == 0.1


class Plateau:
    """RSS and time under the test's control: usage is RSS here.

    `in_buffers`: half of what RSS holds above the baseline is reported as spans in a buffer (the pressure is the
    buffers'), as after a burst of spans; else the buffers stay empty and the pressure is elsewhere."""

    def __init__(self, agent: Agent, baseline: int = 100 * MiB, headroom: int = H, in_buffers: bool = True,
                 keep_floor: float = 0.25) -> None:
        self.t, self.baseline, self.headroom = 0.0, baseline, headroom
        self.rss = baseline
        self.gov = agent.govern(MemoryGovernor(baseline + headroom, baseline, rss=lambda: self.rss, clock=lambda: self.t,
                                               keep_floor=keep_floor))
        if in_buffers:
            self.gov.account("spans", _Held(lambda: (self.rss - self.baseline) // 2))

    def hold(self, pressure: float, seconds: float, every: float = 0.5) -> None:
        """Keep RSS at `pressure` of the headroom for `seconds`, checking every `every` seconds."""
        self.rss = self.baseline + int(pressure * self.headroom)
        end = self.t + seconds
        while self.t < end:
            self.gov.check()
            self.t += every


def test_a_plateau_left_by_a_burst_settles_and_the_keep_probability_recovers(agent: Agent) -> None:
    run = Plateau(agent)
    gov = run.gov
    planned = gov.plan()
    run.hold(0.75, 1.0)
    run.hold(0.93, 2 * SETTLE)  # the burst: the burst level never settles, however long it lasts
    assert gov.stats.actions["relax"] == 0
    assert gov.factor == 1 / 1024 and agent.sampler.tail.capacity < planned["tail"]
    shrunk = (agent.sampler.tail.capacity, agent.inbox.max_bytes, agent.assembler.max_bytes)
    assert shrunk[1] < planned["inbox"] and shrunk[2] < planned["assembler"]
    raised = gov.stats.actions["raise_threshold"]

    # After it the heap stays at 72 %: above RELAX, but usage sets no new high.
    run.hold(0.72, SETTLE - 1.0)
    assert gov.factor == 1 / 1024 and gov.stats.actions["relax"] == 0  # not settled yet
    run.hold(0.72, 10.0)
    assert gov.stats.actions["raise_threshold"] == raised  # a flat 72 % lowers nothing
    assert gov.factor == 1.0 and agent.sampler.effective_ratio == 0.5
    # The buffers stay bounded: regrown, they would fill the heap's spare room and the next spike would shrink them.
    assert (agent.sampler.tail.capacity, agent.inbox.max_bytes, agent.assembler.max_bytes) == shrunk
    run.hold(0.5, 5.0)  # below RELAX they regrow
    assert agent.sampler.tail.capacity == planned["tail"] and agent.inbox.max_bytes == planned["inbox"]
    assert agent.assembler.max_bytes == planned["assembler"]


def test_a_plateau_at_the_shrinking_level_settles_too(agent: Agent) -> None:
    run = Plateau(agent)
    gov = run.gov
    gov.plan()
    run.hold(0.93, 3.0)  # the burst
    run.hold(0.84, 2.0)
    assert gov.factor == 1 / 1024
    shrinks = (gov.stats.actions["shrink_tail"], gov.stats.actions["shrink_inbox"], gov.stats.actions["shrink_index"])
    tail = agent.sampler.tail.capacity
    # The heap the burst grew stays at 84 %: flat, no backlog. Shrinking would not give it back.
    run.hold(0.84, SETTLE + 12.0)
    assert gov.factor == 1.0 and gov.stats.actions["relax"] >= 10
    assert agent.sampler.tail.capacity == tail  # not regrown above RELAX either
    assert (gov.stats.actions["shrink_tail"], gov.stats.actions["shrink_inbox"],
            gov.stats.actions["shrink_index"]) == shrinks
    # Growth again (a new high) ends the truce at once: the probability halves at every check from 80 % again.
    raised = gov.stats.actions["raise_threshold"]
    run.hold(0.89, 1.0)
    assert gov.stats.actions["raise_threshold"] == raised + 2 and gov.factor == 0.25


def test_between_70_and_80_percent_only_new_highs_lower_the_keep_probability(agent: Agent) -> None:
    run = Plateau(agent)
    gov = run.gov
    run.hold(0.72, 0.5)  # the first reading is a new high
    assert gov.factor == 0.5
    run.hold(0.72, 5.0)
    run.hold(0.725, 2.0)  # within the margin (a thirty-second of the headroom): noise, not growth
    assert gov.factor == 0.5 and gov.stats.actions["raise_threshold"] == 1
    run.hold(0.78, 0.5)
    assert gov.factor == 0.25
    run.hold(0.78, 5.0)
    assert gov.factor == 0.25
    run.hold(0.78, SETTLE)  # settled: it steps back although the pressure is still above RELAX
    assert gov.factor == 1.0


def test_a_burst_still_draining_at_the_door_is_not_settled(agent: Agent) -> None:
    run = Plateau(agent)
    gov = run.gov
    gov.plan()
    run.hold(0.93, 3.0)
    after_burst = gov.factor
    fill_inbox(agent, agent.inbox.max_bytes * 3 // 4)  # the backlog the burst left
    run.hold(0.72, 3 * SETTLE)
    assert gov.factor == after_burst < 1 and gov.stats.actions["relax"] == 0
    agent.inbox.drain()
    run.hold(0.72, SETTLE + 6.0)
    assert gov.factor == 1.0


def test_a_keep_probability_that_keeps_moving_is_logged_once_a_minute(agent: Agent,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    run = Plateau(agent)
    with caplog.at_level("WARNING", logger="edge.agent.governor"):
        for _ in range(8):  # a new high, then a settled plateau, in turn: the probability halves and recovers
            run.hold(0.62, SETTLE + 1.0)
            run.hold(0.72, SETTLE + 2.0)
    assert run.gov.stats.actions["raise_threshold"] >= 8 and run.gov.stats.actions["relax"] >= 8
    assert len([r for r in caplog.records if "keep-probability now" in r.getMessage()]) == 1


def test_free_heap_pages_go_back_every_trim_interval(agent: Agent) -> None:
    run = Plateau(agent)
    calls: list[int] = []
    run.gov._trim = lambda pad: calls.append(pad) or 1
    run.hold(0.3, TRIM_EVERY - 0.5)  # checks every 0.5 s: none yet
    assert calls == []
    run.hold(0.3, 3 * TRIM_EVERY)
    assert calls == [0, 0, 0] and run.gov.status()["heap_trims"] == 3


def test_pressure_outside_the_buffers_holds_the_keep_probability_at_its_floor(
        agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    # The heap grows to the limit while the span buffers stay empty (state tables, the allocator): sampling out more
    # would free nothing, so the probability stops at the floor, and the log and status say why.
    run = Plateau(agent, in_buffers=False)
    gov = run.gov
    planned = gov.plan()
    lowest = 1.0
    with caplog.at_level("WARNING", logger="edge.agent.governor"):
        for step in range(10):
            run.hold(0.70 + step * 0.02, 1.0)  # a new high every second, up to the burst level
        # Short of the burst level sampling fewer spans would only lose them: not lowered, buffers not shrunk.
        assert gov.factor == 1.0 and gov.stats.actions["floor_held"] > 5
        assert agent.assembler.max_bytes == planned["assembler"] and gov.stats.actions["shrink_assembler"] == 0
        for step in range(10):
            run.hold(0.90 + step * 0.01, 1.0)  # at the burst level and beyond: down to the floor, no further
            lowest = min(lowest, gov.factor)
    assert lowest == gov.factor == 0.25 and agent.sampler.effective_ratio == 0.125
    status = gov.status()
    assert status["cause"] == "elsewhere" and status["keep_floor"] == 0.25 and status["span_bytes"] == 0
    assert status["outside"] > 0.95 * H
    said = [r.getMessage() for r in caplog.records if "outside the span buffers" in r.getMessage()]
    assert len(said) == 1 and "memory.limit" in said[0]  # once a minute at most, with what to do


class _Held:
    def __init__(self, of: Callable[[], int]) -> None:
        self.of = of

    @property
    def bytes(self) -> int:
        return self.of()


def test_pressure_in_the_buffers_still_lowers_the_keep_probability_past_the_floor(agent: Agent) -> None:
    gov = governor(agent, H)
    gov.keep_floor = 0.25
    fill_inbox(agent, int(0.85 * H))  # the spans themselves are the pressure
    for _ in range(4):
        gov.check()
    assert gov.stats.cause == "buffers"
    assert gov.factor == 1 / 16 and gov.stats.actions["floor_held"] == 0


def test_the_keep_probability_comes_back_to_the_floor_once_the_buffers_are_not_the_cause(agent: Agent) -> None:
    run = Plateau(agent, in_buffers=False)
    gov = run.gov
    gov.plan()
    fill_inbox(agent, agent.inbox.max_bytes * 3 // 4)  # a burst at the door: sampling is the lever
    run.hold(0.92, 2.0)
    assert gov.stats.cause == "buffers" and gov.factor <= 0.25 / 4
    lowered = gov.factor
    agent.inbox.drain()  # the burst has passed; the heap it grew has not
    run.hold(0.92, 0.5)
    assert gov.stats.cause == "elsewhere" and lowered < gov.factor <= 0.25  # one notch per check
    run.hold(0.92, 2.0)
    assert gov.factor == 0.25
    run.hold(0.85, 3.0)  # below the burst level: back to the configured probability
    assert gov.factor == 1.0


def test_keep_floor_is_configurable_and_applied_live(agent: Agent) -> None:
    cfg = parse_config({"memory": {"keep_floor": 0.5}})
    assert cfg.memory.keep_floor == 0.5 and parse_config({}).memory.keep_floor == 0.25
    with pytest.raises(Exception, match="memory.keep_floor"):
        parse_config({"memory": {"keep_floor": 0}})
    gov = MemoryGovernor(64 * MiB, 32 * MiB)
    gov.set_budget(64 * MiB, keep_floor=0.125)
    assert gov.keep_floor == 0.125


def test_the_drop_step_takes_idle_data_first_and_empties_the_buffers_only_where_they_are_the_cause(
        agent: Agent) -> None:
    import time
    run = Plateau(agent, in_buffers=False)
    gov = run.gov
    asm, tail = agent.assembler, agent.sampler.tail
    # Late joins: released spans that arrived 9 s ago (past sdk_wait: no late SDK span joins them) and 3 s ago.
    old, recent = realistic_spans(50, seed=3), realistic_spans(60, seed=4)
    asm.process(old, now=102.0)
    asm.process(recent, now=108.0)
    asm.process([], now=109.0 + asm.config.window)
    assert len(asm.index) == len(old) + len(recent)
    # Undecided traces (the fixture's wait is 60 s): one quiet for 40 s, others still getting spans.
    now = time.monotonic()
    agent.sampler.decide(realistic_spans(300, seed=5), now=now - 40)
    quiet = len(tail)
    agent.sampler.decide(realistic_spans(300, seed=6), now=now)
    growing = len(tail) - quiet
    assert growing > 0 and quiet > 0
    run.hold(0.96, 0.5)  # the heap, not the buffers: emptying them would free little and lose what they still hold
    assert gov.stats.cause == "elsewhere" and gov.stats.actions["drop"] == 1 and gov.stats.actions["drop_all"] == 0
    assert len(asm.index) == len(recent) and len(tail) == growing
    assert gov.stats.dropped["index_pressure"] == len(old)

    run.hold(1.0, 0.5)  # past the budget itself: the rest goes too
    assert gov.stats.actions["drop_all"] == 1 and len(asm.index) == 0 and len(tail) == 0


def test_the_samplers_decision_memory_is_accounted_planned_and_shrunk_under_pressure(agent: Agent) -> None:
    from edge.agent.governor import SHARES
    from edge.sampler.decisions import ENTRY_BYTES

    gov = governor(agent, 8 * MiB)
    planned = gov.plan()
    memory = agent.sampler.decisions
    assert planned["decisions"] == min(memory.ceiling, int(8 * MiB * SHARES["decisions"]))
    assert memory.max_entries == planned["decisions"] // ENTRY_BYTES
    spans = realistic_spans(3000, seed=6)
    agent.sampler.decide(spans)
    traces = len({s.trace_id for s in spans})
    assert len(memory) == min(traces, memory.max_entries) > 2000
    gov.measure()
    assert gov.stats.breakdown["decisions"] == memory.bytes == len(memory) * ENTRY_BYTES
    # Decisions are not spans: sampling fewer would not empty them, so they never make the buffers the cause.
    assert gov.stats.span_bytes == gov.stats.accounted - memory.bytes

    held = [int(0.85 * 8 * MiB)]  # spans in some buffer: the pressure is the buffers'
    gov.account("spans", _Held(lambda: held[0]))
    gov.check()
    assert gov.stats.actions["shrink_decisions"] == 1
    assert memory.max_entries == (planned["decisions"] // 2) // ENTRY_BYTES and len(memory) <= memory.max_entries
    forgotten = memory.stats.forgotten_pressure
    assert forgotten > 0 and agent.status()["sampler"]["decisions_forgotten"] == forgotten
    held[0] = 0
    for _ in range(5):
        gov.check()
    assert memory.max_entries == planned["decisions"] // ENTRY_BYTES  # regrown to the plan


def test_the_decision_memory_is_not_shrunk_while_the_pressure_is_outside_the_span_buffers(agent: Agent) -> None:
    """Forgetting decisions frees little and splits traces: only where the span buffers are the cause."""
    gov = governor(agent, 8 * MiB)
    planned = gov.plan()
    agent.sampler.decide(realistic_spans(3000, seed=7))
    outside = [int(0.85 * 8 * MiB)]  # state, not spans: the pressure is elsewhere
    gov.account("elsewhere", _Held(lambda: outside[0]))
    gov._parts[-1].spans = False
    gov.check()
    assert gov.stats.cause == "elsewhere"
    assert gov.stats.actions["shrink_decisions"] == 0
    assert agent.sampler.decisions.max_entries == planned["decisions"] // 136


async def test_table_sets_held_in_memory_are_accounted(agent: Agent) -> None:
    from uplink.wire import columnar

    gov = governor(agent, H)
    learner = agent.uplink.learner
    await agent.uplink.tables.open(None)  # no spool directory: the messages stay in memory
    cand = learner.learn(realistic_spans(30, seed=9)[:320], learner.current, 32)
    await agent.uplink.tables.adopt(cand.tables, cand.message)
    learner.adopt(cand)
    gov.measure()
    assert gov.stats.breakdown["table_messages"] == len(cand.message) > 0
    assert gov.stats.breakdown["tables"] == learner.bytes >= cand.node_bytes > 0

    # The encoder's memo grows with what the node sends under the set: counted as it does.
    spans = realistic_spans(40, seed=10)[:64]
    for i, s in enumerate(spans):
        s.attributes = {f"device.reading.{i}": float(i)}
    before, memo = gov.stats.breakdown["tables"], learner.current.memo_bytes()
    columnar.encode(spans, "gov", 0, learner.current)
    grown = learner.current.memo_bytes() - memo
    gov.measure()
    assert grown > 64 * 100 and gov.stats.breakdown["tables"] - before == grown
