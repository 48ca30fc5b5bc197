"""The decision-hold bench (bench/decision_hold.py): its workload is decided as it means to be, and its switch works."""
from __future__ import annotations

from bench.decision_hold import _late, run, workload


def test_late_handlers_calls_are_decided_by_task_only_with_the_longer_wait() -> None:
    events, ends = workload(rate=1000, seconds=2.0, late=0.2)
    late = _late(events)
    assert late  # some asyncio handlers answer past the plain wait
    long = run(events, ends, late, long_wait=True, measure=False)
    plain = run(events, ends, late, long_wait=False, measure=False)
    assert long["late_asyncio_calls_by_task"] == f"{len(late)}/{len(late)}" and long["waited_long"] > 0
    decided, total = map(int, plain["late_asyncio_calls_by_task"].split("/"))
    assert total == len(late) and decided < total and plain["waited_long"] == 0
    for r in (long, plain):  # every call went out, each pool call by its hand-back or, nobody waiting, its hand-off
        assert r["delay_ms"]["asyncio"]["calls"] == r["delay_ms"]["pool"]["calls"] == len(ends) // 2
        assert set(r["vias"]) <= {"task", "wakeup", "handoff", "event-loop", "thread"} and r["held_bytes_peak"] > 0
