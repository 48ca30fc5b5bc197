"""The head sampler's threshold observers: how the kernel learns the threshold the agent applies."""
from __future__ import annotations

from edge.sampler import TraceSampler
from edge.sampler.consistent import threshold_for_ratio


def test_observers_see_the_applied_threshold_now_and_on_every_change() -> None:
    sampler = TraceSampler(0.5)
    seen: list[int] = []
    sampler.on_threshold(seen.append)
    assert seen == [threshold_for_ratio(0.5)]
    sampler.set_rules(ratio=0.25)
    assert seen[-1] == threshold_for_ratio(0.25) == sampler.threshold
    sampler.set_pressure(0.5)  # the governor's lever: ratio 0.25 * 0.5
    assert seen[-1] == threshold_for_ratio(0.125)
    n = len(seen)
    sampler.set_pressure(0.5)  # no change, no call
    sampler.set_rules(ratio=0.25)
    assert len(seen) == n
    sampler.set_pressure(1.0)
    sampler.set_rules(ratio=1.0)
    assert seen[-2:] == [threshold_for_ratio(0.25), 0]
