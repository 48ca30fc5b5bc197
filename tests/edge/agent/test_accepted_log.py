"""Durable mode's accepted log: group commit, bound, recovery of what a crash left, retirement, and the receivers'
answers (success only once on disk, busy when it cannot be written)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from edge.agent.accepted_log import AcceptedLog, LogFull
from edge.config import parse_config
from edge.errors import ConfigError


async def _run(log: AcceptedLog, held: list[int | None]) -> asyncio.Task[None]:
    return asyncio.create_task(log.run(lambda: held[0]))


async def test_concurrent_appends_share_one_fsync_and_come_back_after_a_restart(tmp_path: Path) -> None:
    log = AcceptedLog(tmp_path, 1 << 20, commit_delay=0.01)
    assert await log.open() == 0
    held: list[int | None] = [1]  # the pipeline still holds record 1: nothing may be retired
    task = await _run(log, held)
    try:
        appended = [log.append(1, f"request {i}".encode()) for i in range(20)]
        await asyncio.wait_for(asyncio.gather(*(f for _, f in appended)), 5)
        assert [n for n, _ in appended] == list(range(1, 21))
        assert log.stats.commits == 1 and log.stats.records == 20  # one fsync for the whole group
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await log.close(1)
    again = AcceptedLog(tmp_path, 1 << 20, commit_delay=0.0)
    assert await again.open() == 20
    bodies = [(r.number, r.body) async for r in again.recovered()]
    assert bodies == [(i + 1, f"request {i}".encode()) for i in range(20)]
    assert again.next_number == 21
    await again.close(None)  # nothing held: everything goes
    assert not list(tmp_path.glob("*.hxa"))


async def test_a_torn_last_record_is_left_out(tmp_path: Path) -> None:
    log = AcceptedLog(tmp_path, 1 << 20, commit_delay=0.0)
    await log.open()
    task = await _run(log, [1])
    try:
        for body in (b"one", b"two"):
            _, fut = log.append(1, body)
            await asyncio.wait_for(fut, 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await log.close(1)
    (seg,) = tmp_path.glob("*.hxa")
    os.truncate(seg, seg.stat().st_size - 1)  # a crash in the middle of the second write
    again = AcceptedLog(tmp_path, 1 << 20, commit_delay=0.0)
    assert await again.open() == 1
    assert [r.body async for r in again.recovered()] == [b"one"]
    assert again.stats.recovered_torn == 1
    await again.close(0)


async def test_segments_go_once_the_pipeline_holds_none_of_their_records(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("edge.agent.accepted_log._SEGMENT_AGE", 0.0)  # a segment per commit
    log = AcceptedLog(tmp_path, 1 << 20, commit_delay=0.0)
    await log.open()
    held: list[int | None] = [1]
    task = await _run(log, held)
    try:
        for i in range(3):
            _, fut = log.append(1, b"x" * 100)
            await asyncio.wait_for(fut, 5)
        assert len(list(tmp_path.glob("*.hxa"))) == 3
        held[0] = 3  # records 1 and 2 have left the pipeline
        for _ in range(50):
            if len(list(tmp_path.glob("*.hxa"))) == 1:
                break
            await asyncio.sleep(0.05)
        assert [p.name for p in tmp_path.glob("*.hxa")] == [f"{3:020d}.hxa"]
        assert log.stats.segments_retired == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await log.close(3)


async def test_the_bound_and_a_failing_disk(tmp_path: Path, monkeypatch) -> None:
    log = AcceptedLog(tmp_path, 64 * 1024, commit_delay=0.0)
    await log.open()
    assert log.has_room(60 * 1024) and not log.has_room(64 * 1024)
    task = await _run(log, [1])
    try:
        def no_space(fd: int, data: object) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("edge.agent.accepted_log.os.write", no_space)
        _, fut = log.append(1, b"spans")
        with pytest.raises(LogFull):
            await asyncio.wait_for(fut, 5)
        assert log.stats.commit_failures == 1
        monkeypatch.undo()
        _, fut = log.append(1, b"spans again")
        await asyncio.wait_for(fut, 5)  # the disk has room again: the log goes on, on a record boundary
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await log.close(1)
    again = AcceptedLog(tmp_path, 64 * 1024, commit_delay=0.0)
    await again.open()
    assert [r.body async for r in again.recovered()] == [b"spans again"]
    await again.close(0)


async def test_a_second_agent_cannot_share_the_log(tmp_path: Path) -> None:
    first = AcceptedLog(tmp_path, 1 << 20, 0.0)
    await first.open()
    with pytest.raises(Exception, match="another agent"):
        await AcceptedLog(tmp_path, 1 << 20, 0.0).open()
    await first.close(None)


def test_durable_mode_is_off_by_default_and_checked() -> None:
    assert parse_config({}).otlp.durable is False
    cfg = parse_config({"sources": {"otlp": {"durable": True, "durable_commit_delay": "5ms"}}})
    assert cfg.otlp.durable and cfg.otlp.durable_commit_delay == 0.005
    with pytest.raises(ConfigError, match="durable_dir"):
        parse_config({"sources": {"otlp": {"durable": True, "durable_dir": ""}}})
    with pytest.raises(ConfigError, match="durable_max_bytes"):
        parse_config({"sources": {"otlp": {"durable": True, "durable_max_bytes": "1MiB"}}})
    with pytest.raises(ConfigError, match="durable_commit_delay"):
        parse_config({"sources": {"otlp": {"durable_commit_delay": "1s"}}})
