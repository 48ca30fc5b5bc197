from __future__ import annotations

import asyncio

from edge.agent.inbox import SpanInbox
from edge.model import Source, Span, new_span_id, new_trace_id


def _spans(n: int) -> list[Span]:
    return [Span(new_trace_id(), new_span_id(), f"s{i}", 0, 1) for i in range(n)]


async def test_keeps_what_fits_and_counts_the_rest() -> None:
    one = _spans(1)[0].approx_size()
    inbox = SpanInbox(max_bytes=one * 10)
    assert inbox.put(_spans(6), Source.SDK_OTLP) == 6
    assert inbox.put(_spans(6), Source.SDK_MQTT) == 4
    assert inbox.stats.dropped_full == {"sdk-mqtt": 2, "sdk-otlp": 0, "ebpf": 0}
    assert inbox.stats.accepted["sdk-otlp"] == 6 and inbox.stats.accepted["sdk-mqtt"] == 4
    assert not inbox.has_room(one)
    got = await asyncio.wait_for(inbox.get(), 1)
    assert len(got) == 10 and inbox.bytes == 0 and inbox.has_room(one * 10)


async def test_get_waits_for_spans() -> None:
    inbox = SpanInbox(max_bytes=1 << 20)
    task = asyncio.create_task(inbox.get())
    await asyncio.sleep(0.01)
    assert not task.done()
    inbox.put(_spans(2), Source.EBPF)
    assert len(await asyncio.wait_for(task, 1)) == 2


async def test_taking_spans_wakes_those_waiting_for_room() -> None:
    inbox = SpanInbox(max_bytes=1 << 20)
    told: list[int] = []
    inbox.on_taken(lambda: told.append(inbox.bytes))
    inbox.put(_spans(3), Source.SDK_MQTT)
    waiter = asyncio.create_task(inbox.taken(timeout=30))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await inbox.get()
    await asyncio.wait_for(waiter, 1)  # at once, not after its 30 s timeout
    assert told == [0]  # listeners run after the spans left
    await asyncio.wait_for(inbox.taken(timeout=0.05), 1)  # nothing taken: the timeout ends the wait quietly
