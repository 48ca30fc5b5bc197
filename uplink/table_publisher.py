"""Publication of the node's table sets: every set a spooled batch names stays on record and published until the last
such batch is gone, and a while after (`uplink.tables_retain`), so that any gateway can decode any batch it meets.

Messages are kept beside the spool (`<spool>/<node>/tables/<id>.hxt`, written like a batch: temporary file, fsync,
rename), before the first batch naming them is spooled; the set in use is named by `current`. A set is published
before the first batch naming it is sent, again on every new connection of the transport (a broker restarted
without persistence loses retained messages) and again whenever a gateway says it lacks it (HTTP 409). A set no
spooled batch names is retired (`<id>.retired`, its time the file's mtime), withdrawn from the broker once
`tables_retain` has passed, then deleted. After a restart the node goes on with the set it used, and publishes what
its spool needs again.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.errors import DecodeError, UplinkError

from .transports import SendError, Transport
from .wire import NO_TABLES, TableSet, parse_message

__all__ = ["TableStore", "TablePublisher", "PublisherStats"]

log = logging.getLogger(__name__)

_ACTIVE, _RETIRED, _CURRENT = ".hxt", ".retired", "current"
_SWEEP_EVERY = 5.0  # s between two looks at which sets the spool still names
_MAX_MESSAGE = 64 * 1024 * 1024  # what parse_message may inflate when a stored set is read back


class TableStore:
    """Table-set messages by id: on disk under `directory` (durable), or in memory when it is None."""

    def __init__(self, directory: Path | None) -> None:
        self.dir = directory
        self.active: dict[bytes, int] = {}  # id -> message bytes
        self.retired: dict[bytes, float] = {}  # id -> when it was retired (Unix time)
        self.current = NO_TABLES
        self._memory: dict[bytes, bytes] = {}

    @property
    def bytes(self) -> int:
        """Bytes held in memory (none with a directory)."""
        return sum(map(len, self._memory.values()))

    async def open(self) -> None:
        """Read what a previous run left."""
        if self.dir is not None:
            await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        assert self.dir is not None
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            names = os.listdir(self.dir)
        except OSError as e:
            raise UplinkError(f"cannot use the table-set directory {self.dir}: {e.strerror or e}") from None
        for name in names:
            stem, ext = os.path.splitext(name)
            table_id = _id_of(stem)
            if table_id is None:
                continue
            path = self.dir / name
            try:
                st = path.stat()
            except OSError:
                continue
            if ext == _ACTIVE:
                self.active[table_id] = st.st_size
            elif ext == _RETIRED:
                self.retired[table_id] = st.st_mtime
        try:
            self.current = _id_of((self.dir / _CURRENT).read_text().strip()) or NO_TABLES
        except OSError:
            self.current = NO_TABLES
        if self.current not in self.active:
            self.current = NO_TABLES

    async def put(self, table_id: bytes, message: bytes) -> None:
        """Keep a message (durably with a directory) and make it the current set."""
        if self.dir is None:
            self._memory[table_id] = message
        else:
            await asyncio.to_thread(self._put_sync, table_id, message)
        self.active[table_id] = len(message)
        self.retired.pop(table_id, None)
        self.current = table_id

    def _put_sync(self, table_id: bytes, message: bytes) -> None:
        assert self.dir is not None
        self._write(table_id.hex() + _ACTIVE, message)
        self._write(_CURRENT, table_id.hex().encode())
        _unlink(self.dir / (table_id.hex() + _RETIRED))

    def _write(self, name: str, data: bytes) -> None:
        assert self.dir is not None
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.dir / name)
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def get(self, table_id: bytes) -> bytes | None:
        """The message of a set on record (active or retired), or None."""
        if self.dir is None:
            return self._memory.get(table_id)
        for ext in (_ACTIVE, _RETIRED):
            try:
                return await asyncio.to_thread((self.dir / (table_id.hex() + ext)).read_bytes)
            except OSError:
                continue
        return None

    async def retire(self, table_id: bytes, when: float) -> None:
        """No spooled batch names this set any more: keep it for a while, marked with `when`."""
        if self.dir is not None:
            old, new = self.dir / (table_id.hex() + _ACTIVE), self.dir / (table_id.hex() + _RETIRED)
            try:
                await asyncio.to_thread(_retire_file, old, new, when)
            except OSError as e:
                log.warning("uplink: cannot mark table set %s retired: %s", table_id.hex(), e)
                return
        self.active.pop(table_id, None)
        self.retired[table_id] = when

    async def forget(self, table_id: bytes) -> None:
        """Delete a retired set for good."""
        self.retired.pop(table_id, None)
        self._memory.pop(table_id, None)
        if self.dir is not None:
            await asyncio.to_thread(_unlink, self.dir / (table_id.hex() + _RETIRED))


@dataclass(slots=True)
class PublisherStats:
    """What the publisher did (monotonic, but `sets_on_record`)."""

    published: int = 0  # table-set messages published (MQTT retained) or uploaded (HTTP)
    republished: int = 0  # ...of which again: a new connection, or a gateway that lacked it
    withdrawn: int = 0  # retired sets withdrawn from the broker and deleted
    missing: int = 0  # batches naming a set the node no longer has (their spans were dropped)
    sets_on_record: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


class TablePublisher:
    """Keeps every table set a spooled batch names on record and published (see the module docstring)."""

    def __init__(self, retain: float, clock: Callable[[], float] = time.time) -> None:
        self.store = TableStore(None)
        self.retain = retain
        self.stats = PublisherStats()
        self._clock = clock
        self._published: dict[bytes, int] = {}  # id -> the transport connection it was published on
        self._swept = 0.0

    @property
    def bytes(self) -> int:
        """Bytes of messages held in memory (a memory-only spool)."""
        return self.store.bytes

    async def open(self, directory: Path | None) -> TableSet | None:
        """Keep the record in `directory` (None: in memory) and read what a previous run left there; returns the set
        it was using (None if none or unreadable). UplinkError if the directory cannot be used."""
        self.store = TableStore(directory)
        await self.store.open()
        self.stats.sets_on_record = len(self.store.active) + len(self.store.retired)
        current = self.store.current
        if current == NO_TABLES:
            return None
        message = await self.store.get(current)
        try:
            return parse_message(message or b"", _MAX_MESSAGE, expect_id=current)
        except DecodeError as e:
            log.warning("uplink: the table set in use before the restart (%s) cannot be read back: %s; starting "
                        "without one", current.hex(), e)
            return None

    async def adopt(self, tables: TableSet, message: bytes) -> None:
        """Record a new set before any batch names it."""
        await self.store.put(tables.id, message)
        self.stats.sets_on_record = len(self.store.active) + len(self.store.retired)

    async def ensure(self, table_id: bytes, transport: Transport, again: bool = False) -> bool:
        """Publish `table_id` if it is not yet on this connection (or `again`); False if the node does not have it
        (its batch can never be decoded). SendError when the link fails."""
        if table_id == NO_TABLES:
            return True
        if not again and self._published.get(table_id) == transport.connections:
            return True
        message = await self.store.get(table_id)
        if message is None:
            self.stats.missing += 1
            return False
        await transport.publish_tables(table_id, message)
        if table_id in self._published:
            self.stats.republished += 1
        self.stats.published += 1
        self._published[table_id] = transport.connections
        return True

    async def sweep(self, needed: Iterable[bytes], transport: Transport, force: bool = False) -> None:
        """Retire the sets no spooled batch names (the current one stays), and withdraw those retired long enough.
        Runs at most every few seconds unless `force`; a link failure leaves the withdrawal for the next sweep."""
        now = self._clock()
        if not force and now - self._swept < _SWEEP_EVERY:
            return
        self._swept = now
        keep = set(needed)
        keep.add(self.store.current)
        for table_id in [t for t in self.store.active if t not in keep]:
            await self.store.retire(table_id, now)
        for table_id, when in list(self.store.retired.items()):
            if table_id in keep or now - when < self.retain:
                continue
            try:
                await transport.unpublish_tables(table_id)
            except SendError as e:
                log.info("uplink: table set %s stays published for now: %s", table_id.hex(), e)
                return
            await self.store.forget(table_id)
            self._published.pop(table_id, None)
            self.stats.withdrawn += 1
        self.stats.sets_on_record = len(self.store.active) + len(self.store.retired)


def _id_of(text: str) -> bytes | None:
    try:
        table_id = bytes.fromhex(text)
    except ValueError:
        return None
    return table_id if len(table_id) == len(NO_TABLES) and table_id != NO_TABLES else None


def _retire_file(old: Path, new: Path, when: float) -> None:
    os.rename(old, new)
    os.utime(new, (when, when))


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
