"""Durable mode: OTLP requests written and fsynced to a bounded on-disk log before the receiver answers success.

Records are appended to segment files and committed in groups: every request waiting when a commit starts shares
its one `fsync` (after at most `commit_delay`, so that concurrent requests find each other). The writes and fsyncs
run in one worker thread, never on the event loop. Each span taken in is stamped with its record's number
(`Span.logged`); a closed segment is deleted once no span of its records is held anywhere in the pipeline any more
(the agent's `oldest_held`): by then each was either written to the uplink spool (fsynced there) or let go on
purpose (sampled out, a duplicate). After a crash the records still on disk are read back and fed to the pipeline
again (`recovered`): nothing acknowledged is lost, and what had already reached the spool is sent twice.

Segment file: `<first record number, 20 digits>.hxa`; each record is `length u32 | crc32 u32 | kind u8 | body`
(big endian; crc over kind and body), the body being the request as received (after any Content-Encoding). A torn
record at the end of a segment (a crash mid-write, never acknowledged) ends that segment's recovery.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

from ..errors import HelixError

__all__ = ["AcceptedLog", "AcceptedLogStats", "Record", "LogFull"]

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">IIB")
_SUFFIX = ".hxa"
# A segment is closed (so it can be deleted) after this long or this share of the bound, whichever comes first:
# spans stay in the pipeline a few seconds (assembler.window + batch_max_age), so about that many segments live.
_SEGMENT_AGE = 1.0
_SEGMENT_SHARE = 8


class LogFull(HelixError):
    """The accepted log cannot take a record now (its bound, or the disk): the receiver answers busy."""


@dataclass(slots=True)
class Record:
    """One logged request, as read back after a restart."""

    number: int
    kind: int
    body: bytes


@dataclass(slots=True)
class AcceptedLogStats:
    """Counters of the accepted log (`durable` in the agent's status)."""

    records: int = 0
    bytes_written: int = 0
    commits: int = 0  # fsyncs of the log (group commits)
    commit_failures: int = 0
    segments_retired: int = 0
    recovered_records: int = 0
    recovered_torn: int = 0  # segments whose last record was cut short by a crash
    bytes_on_disk: int = 0
    segments: int = 0


@dataclass(slots=True)
class _Segment:
    first: int
    path: Path
    last: int = -1  # number of its last record, -1 while empty
    size: int = 0
    opened: float = 0.0
    fd: int = -1


class AcceptedLog:
    """The bounded, group-committed log behind durable acknowledgements (`sources.otlp.durable`)."""

    def __init__(self, directory: Path, max_bytes: int, commit_delay: float) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.commit_delay = commit_delay
        self.stats = AcceptedLogStats()
        self._segments: list[_Segment] = []
        self._next = 1  # the next record number (0 means "not logged" on a span)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="helix-accepted-log")
        self._lock_fd = -1

    # ------------------------------------------------------------------------------------------------ start

    async def open(self) -> int:
        """Create or lock the directory and find the records still on disk; returns how many there are."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._open)

    def _open(self) -> int:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            import fcntl
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise HelixError(f"durable mode: cannot use {self.dir}: {e.strerror or e} (another agent with this "
                             f"node id running? check permissions, or set sources.otlp.durable_dir)") from None
        found = 0
        for path in sorted(self.dir.glob("*" + _SUFFIX)):
            try:
                first = int(path.name[:-len(_SUFFIX)])
            except ValueError:
                continue
            seg = _Segment(first, path)
            torn: list[bool] = []
            for rec in self._read(path, first, torn):
                seg.last = rec.number
                found += 1
            self.stats.recovered_torn += len(torn)
            seg.size = path.stat().st_size
            self._segments.append(seg)
            self._next = max(self._next, first, seg.last + 1)
        self.stats.recovered_records = found
        self._count()
        return found

    async def recovered(self) -> AsyncIterator[Record]:
        """The records found by `open()`, oldest first, read one segment at a time."""
        loop = asyncio.get_running_loop()
        for seg in [s for s in self._segments if s.fd < 0 and s.last >= 0]:
            records = await loop.run_in_executor(self._worker, lambda: list(self._read(seg.path, seg.first)))
            for rec in records:
                yield rec

    @staticmethod
    def _read(path: Path, first: int, torn: list[bool] | None = None) -> Iterator[Record]:
        data = path.read_bytes()
        at, number = 0, first
        while at < len(data):
            if at + _HEAD.size > len(data):
                if torn is not None:
                    torn.append(True)
                return
            length, crc, kind = _HEAD.unpack_from(data, at)
            body = data[at + _HEAD.size:at + _HEAD.size + length]
            if len(body) != length or zlib.crc32(body, zlib.crc32(bytes((kind,)))) != crc:
                if torn is not None:
                    torn.append(True)
                return
            yield Record(number, kind, body)
            at += _HEAD.size + length
            number += 1

    # ------------------------------------------------------------------------------------------------ append

    def has_room(self, nbytes: int) -> bool:
        """Whether a request of `nbytes` fits the log's bound now."""
        return self.stats.bytes_on_disk + self._pending_bytes + nbytes + _HEAD.size <= self.max_bytes

    def append(self, kind: int, body: bytes) -> tuple[int, asyncio.Future[None]]:
        """Queue a record; returns its number and a future done once it is on disk (LogFull if it could not be)."""
        number = self._next
        self._next += 1
        self._pending.append(_HEAD.pack(len(body), zlib.crc32(body, zlib.crc32(bytes((kind,)))), kind) + body)
        self._pending_bytes += _HEAD.size + len(body)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake.set()
        return number, fut

    @property
    def next_number(self) -> int:
        """The number the next record will get."""
        return self._next

    async def run(self, oldest_held: Callable[[], int | None]) -> None:
        """Commit queued records in groups, and delete segments the pipeline no longer needs, until cancelled."""
        loop = asyncio.get_running_loop()
        last_retire = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            if self._pending:
                if self.commit_delay > 0:
                    await asyncio.sleep(self.commit_delay)  # let concurrent requests join this commit
                await self._commit(loop)
            now = time.monotonic()
            if now - last_retire >= 0.25:
                last_retire = now
                held = oldest_held()
                await loop.run_in_executor(self._worker, self._retire, self._next if held is None else held, now)
            if not self._pending:
                self._wake.clear()

    async def _commit(self, loop: asyncio.AbstractEventLoop) -> None:
        chunks, waiters = self._pending, self._waiters
        first = self._next - len(chunks)
        self._pending, self._waiters, self._pending_bytes = [], [], 0
        try:
            await loop.run_in_executor(self._worker, self._write, first, chunks)
        except asyncio.CancelledError:
            # Stopping: the write may still land, but no one may be told it did (at worst a retry duplicates).
            for w in waiters:
                if not w.done():
                    w.set_exception(LogFull("the agent is stopping"))
            raise
        except OSError as e:
            self.stats.commit_failures += 1
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            log.error("durable mode: could not write the accepted log in %s: %s; answering busy", self.dir,
                      e.strerror or e)
            for w in waiters:
                if not w.done():
                    w.set_exception(LogFull("disk full" if full else f"log write failed: {e.strerror or e}"))
            return
        self.stats.commits += 1
        self.stats.records += len(chunks)
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # ------------------------------------------------------------------------------------ worker thread only

    def _write(self, first: int, chunks: list[bytes]) -> None:
        seg = self._segments[-1] if self._segments else None
        now = time.monotonic()
        if seg is None or seg.fd < 0 or (seg.last >= 0 and (now - seg.opened >= _SEGMENT_AGE or
                                                           seg.size >= self.max_bytes // _SEGMENT_SHARE)):
            seg = self._new_segment(first, now)
        data = b"".join(chunks)
        try:
            view = memoryview(data)
            while view:
                n = os.write(seg.fd, view)
                view = view[n:]
            os.fsync(seg.fd)
        except OSError:
            # Whatever part did land is cut off again, so the next record starts on a record boundary.
            try:
                os.ftruncate(seg.fd, seg.size)
            except OSError:
                pass
            self._close_segment(seg)
            raise
        seg.size += len(data)
        seg.last = first + len(chunks) - 1
        self.stats.bytes_written += len(data)
        self._count()

    def _new_segment(self, first: int, now: float) -> _Segment:
        if self._segments:
            self._close_segment(self._segments[-1])
        path = self.dir / f"{first:020d}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        seg = _Segment(first, path, opened=now, fd=fd)
        try:
            seg.size = os.fstat(fd).st_size
            dfd = os.open(self.dir, os.O_RDONLY)  # the new name must survive a power cut with its records
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            os.close(fd)
            raise
        self._segments.append(seg)
        return seg

    @staticmethod
    def _close_segment(seg: _Segment) -> None:
        if seg.fd >= 0:
            os.close(seg.fd)
            seg.fd = -1

    def _retire(self, oldest_held: int, now: float) -> None:
        """Delete segments whose every record is below `oldest_held` (and close an idle one so it can go too)."""
        if self._segments:
            cur = self._segments[-1]
            if cur.fd >= 0 and cur.last >= 0 and now - cur.opened >= _SEGMENT_AGE and not self._pending:
                self._close_segment(cur)
        keep: list[_Segment] = []
        for seg in self._segments:
            if seg.fd < 0 and seg.last < oldest_held:
                try:
                    seg.path.unlink()
                    self.stats.segments_retired += 1
                    continue
                except FileNotFoundError:
                    continue
                except OSError as e:
                    log.warning("durable mode: cannot delete %s: %s", seg.path, e.strerror or e)
            keep.append(seg)
        self._segments = keep
        self._count()

    def _count(self) -> None:
        self.stats.bytes_on_disk = sum(s.size for s in self._segments)
        self.stats.segments = len(self._segments)

    async def close(self, oldest_held: int | None) -> None:
        """Commit what is queued, close the files and delete what the pipeline no longer holds (the rest stays for
        the next start)."""
        loop = asyncio.get_running_loop()
        if self._pending:
            await self._commit(loop)
        for seg in self._segments:
            self._close_segment(seg)
        await loop.run_in_executor(self._worker, self._retire, self._next if oldest_held is None else oldest_held,
                                   time.monotonic())
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # after the last file operation: the next agent may take over
            self._lock_fd = -1
        self._worker.shutdown(wait=False)
