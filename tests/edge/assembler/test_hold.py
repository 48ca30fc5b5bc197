"""The index of waiting spans by start time (hold.py): lookups around and inside an SDK span, lazy removal."""
from __future__ import annotations

from edge.assembler.hold import ByStart


class Item:
    def __init__(self, start: int) -> None:
        self.start = start
        self.live = True


def test_starting_within_and_starting_by_see_only_live_items_in_order() -> None:
    items = [Item(s) for s in (50, 10, 30, 20, 40)]
    idx: ByStart[Item] = ByStart(lambda x: x.live)
    for it in items:
        idx.add(it.start, it)
    assert [x.start for x in idx.starting_within(20, 40)] == [20, 30, 40]
    assert [x.start for x in idx.starting_by(35, 10)] == [30, 20, 10]
    assert [x.start for x in idx.starting_by(35, 2)] == [30, 20]  # at most `limit` looked at
    items[2].live = False  # 30 stops waiting
    assert [x.start for x in idx.starting_within(0, 100)] == [10, 20, 40, 50]
    assert [x.start for x in idx.starting_by(35, 2)] == [20]  # a dead item still counts towards the limit


def test_dead_items_are_compacted_so_the_index_stays_bounded() -> None:
    idx: ByStart[Item] = ByStart(lambda x: x.live)
    for i in range(10_000):
        it = Item(i)
        idx.add(i, it)
        it.live = i % 100 == 0  # all but one in a hundred stop waiting at once
    assert len(idx) <= 2 * 100 + 64
    assert [x.start for x in idx.starting_within(0, 1_000)] == list(range(0, 1_001, 100))
