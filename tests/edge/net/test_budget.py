"""The request budget both OTLP receivers take bytes from before they read or inflate them."""
from __future__ import annotations

import asyncio

import pytest

from edge.net.budget import RequestBudget


def test_within_the_bound_anyone_takes_beyond_it_only_the_oldest() -> None:
    b = RequestBudget(100)
    a, c, d = object(), object(), object()
    assert b.take(a, 60) and b.take(c, 40) and b.bytes == 100
    assert not b.take(c, 1) and not b.take(d, 1)  # over the bound: only the oldest holder goes on
    assert b.take(a, 500) and b.bytes == 600  # the oldest always completes: no deadlock on the bound
    b.release(a)
    assert b.bytes == 40 and b.oldest() is c and b.take(c, 300)
    assert b.stats.peak == 600


def test_forced_bytes_are_counted_and_the_answer_still_says_whether_they_fitted() -> None:
    b = RequestBudget(10)
    a, c = object(), object()
    b.take(a, 5)
    assert not b.take(c, 20, force=True) and b.bytes == 25 and b.held(c) == 20
    b.give_back(c, 15)
    assert b.bytes == 10 and b.held(c) == 5
    b.give_back(c, 99)  # never below zero
    assert b.held(c) == 0 and b.bytes == 5


async def test_waiters_get_room_when_it_is_freed_and_give_up_at_their_deadline() -> None:
    b = RequestBudget(100)
    a, c, d = object(), object(), object()
    b.take(a, 100)
    waiting = asyncio.ensure_future(b.wait_take(c, 50, timeout=5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    b.release(a)
    assert await waiting and b.held(c) == 50
    b.take(c, 50)
    assert not await b.wait_take(d, 10, timeout=0.1)  # c is the oldest now; d never fits
    assert b.stats.refused == 1 and b.stats.waited == 2


async def test_a_stalled_holder_is_reclaimed_for_one_that_waits() -> None:
    now = [0.0]
    b = RequestBudget(100, stall=1.0, clock=lambda: now[0])
    slow, fresh = object(), object()
    evicted: list[object] = []
    b.join(slow, lambda: evicted.append(slow))
    b.take(slow, 100)
    assert b.reclaim() == 0  # nobody waits: a slow client keeps its room
    now[0] = 0.5
    b.touch(slow)
    now[0] = 1.2
    assert b.reclaim(waiting=True) == 0  # it made progress 0.7 s ago
    now[0] = 2.0
    assert b.reclaim(waiting=True) == 1 and evicted == [slow] and b.bytes == 0
    assert b.take(fresh, 100) and b.stats.reclaimed == 1


async def test_holders_waiting_on_the_agent_are_never_reclaimed() -> None:
    # One waiting for room, and one whose request arrived whole (waiting for the pipeline), took nothing for
    # longer than the stall time because of the agent, not the client: neither is a slow client.
    now = [0.0]
    b = RequestBudget(100, stall=1.0, clock=lambda: now[0])
    whole, waiter, slow = object(), object(), object()
    evicted: list[object] = []
    for h in (whole, slow, waiter):
        b.join(h, lambda h=h: evicted.append(h))
    b.take(whole, 50)
    b.settle(whole)
    b.take(slow, 50)
    waiting = asyncio.ensure_future(b.wait_take(waiter, 10, timeout=30))
    await asyncio.sleep(0.01)
    now[0] = 5.0
    assert b.reclaim() == 1 and evicted == [slow]
    assert await waiting and evicted == [slow] and b.held(whole) == 50 and b.held(waiter) == 10
    assert b.reclaim(waiting=True) == 0  # the waiter took just now; the whole request stays settled


def test_listeners_hear_of_freed_bytes_and_a_grown_bound() -> None:
    b = RequestBudget(10)
    heard: list[int] = []
    b.on_freed(lambda: heard.append(b.bytes))
    a = object()
    b.take(a, 10)
    b.set_bound(5)
    b.set_bound(50)
    b.release(a)
    assert heard == [10, 0]


@pytest.mark.parametrize("n", [0, 1])
def test_a_new_holder_into_an_empty_budget_always_fits(n: int) -> None:
    b = RequestBudget(0)
    assert b.take(object(), n + 1000)
