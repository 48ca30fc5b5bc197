"""Encoded batches waiting for the link: bounded, oldest first, on disk so they survive `kill -9` and a power cut.

One file per batch, written to a temporary name, fsynced, renamed and the directory fsynced: after `put` returns the
batch is on stable storage (docs/reliability.md explains the policy); a write that fails (a full disk) leaves no
file behind. A file is deleted only once the batch is settled end to end (a gateway confirmed it). When the spool is
full, batches the broker took but no gateway confirmed yet give way first (counted: the broker's PUBACK is then all
that backs them); then `put` refuses (SpoolFull, and the node answers busy at its door) or, with `spool_full =
"evict"`, the oldest batches are evicted and counted. Sequence numbers come from a persisted lease so they keep
increasing across restarts even when the node's clock steps back.

`MemorySpool` has the same contract without durability, for `uplink.spool_dir = ""`.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from edge.errors import UplinkError

from .wire import MAX_HEADER_SIZE, METRICS_MAGIC, NO_TABLES, batch_table_id, read_header

__all__ = ["SpoolEntry", "MemorySpool", "DiskSpool", "SpoolFull", "SEQ_LEASE"]

log = logging.getLogger(__name__)

# The newest batch is kept in memory for its first send up to this size (DiskSpool._hot).
HOT_MAX_BYTES = 256 * 1024
# Sequence numbers reserved per write of the lease file: one fsync per million batches.
SEQ_LEASE = 1_000_000
_NAME = re.compile(r"^(\d{20})-(\d+)\.hxb$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
_LEASE_FILE = "seq.lease"
_LOCK_FILE = "lock"


class SpoolFull(UplinkError):
    """No room for a batch now (the spool is at spool_max_bytes, or the disk is full): try again once some leaves."""


@dataclass(slots=True)
class SpoolEntry:
    """One spooled batch; `payload` is held only by the memory spool."""

    seq: int
    spans: int
    size: int
    payload: bytes | None = None
    table_id: bytes = NO_TABLES  # the table set the batch needs to be decoded (uplink/table_publisher.py)
    sending: bool = False  # picked by the sender: not evicted while it is on the wire
    gone: bool = False  # evicted or removed
    awaiting: bool = False  # the broker took it; a gateway's confirmation is awaited
    deadline: float = 0.0  # monotonic time by which the confirmation is expected
    resends: int = 0  # times sent again for want of a confirmation
    settled: bool = False  # confirmed while a resend was on the wire: removed once the send ends
    sent: bool = False  # taken by the far side at least once (counted once in the client's spans_sent)


class MemorySpool:
    """The spool without a disk: same bounds, eviction and counters, lost on a crash."""

    durable = False

    def __init__(self, max_bytes: int, evict: bool = False) -> None:
        self.max_bytes = max_bytes
        self.evict = evict  # when full, evict the oldest batches rather than refuse new ones
        self.entries: deque[SpoolEntry] = deque()
        self.bytes = 0
        self.spans = 0
        self.evicted_batches = 0
        self.evicted_spans = 0
        self.released_batches = 0  # awaiting a confirmation, let go to make room (the broker's PUBACK backs them)
        self.released_spans = 0
        self._next_seq = 0

    async def open(self) -> None:
        """Load what a previous run left (nothing, in memory) and set the sequence floor."""
        self._next_seq = max(self._next_seq, time.time_ns() // 1000)

    async def next_seq(self) -> int:
        """A sequence number larger than every one handed out before by this node."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def oldest(self) -> SpoolEntry | None:
        """The oldest batch still waiting, or None."""
        return self.entries[0] if self.entries else None

    def __len__(self) -> int:
        return len(self.entries)

    async def put(self, seq: int, spans: int, payload: bytes) -> SpoolEntry | None:
        """Store one batch, making room as the policy allows; None (nothing stored) if it can never fit. Raises
        SpoolFull when there is no room now, UplinkError when the disk fails otherwise."""
        if len(payload) > self.max_bytes:
            return None
        victims = self._make_room(len(payload))
        if victims is None:
            raise SpoolFull(f"the uplink spool is full ({self.bytes} of {self.max_bytes} bytes, "
                            f"{len(self.entries)} batches waiting for the link)")
        for e in victims:
            await self._delete(e)
        await self._store(seq, payload, spans)
        entry = SpoolEntry(seq, spans, len(payload), payload if not self.durable else None, batch_table_id(payload))
        self.entries.append(entry)
        self.bytes += entry.size
        self.spans += spans
        return entry

    async def read(self, entry: SpoolEntry) -> bytes | None:
        """The batch bytes, or None if they are gone."""
        return None if entry.gone else entry.payload

    async def remove(self, entry: SpoolEntry) -> None:
        """Forget an acknowledged (or refused-for-good) batch."""
        if entry.gone:
            return
        self._forget(entry)
        await self._delete(entry)

    async def close(self) -> None:
        """Release resources (the disk spool's lock)."""

    # -------------------------------------------------------------------------------------------- internals

    def _make_room(self, size: int) -> list[SpoolEntry] | None:
        """Let go of batches until `size` bytes fit: first those only awaiting a confirmation, then (when evicting)
        the oldest; returns them for deletion, None if there is no room (nothing let go)."""
        free = self.max_bytes - self.bytes
        if free >= size:
            return []
        # The batch on the wire is acknowledged or retried, never pulled from under the sender.
        order = [e for e in self.entries if e.awaiting and not e.sending]
        if self.evict:
            order += [e for e in self.entries if not e.awaiting and not e.sending]
        victims: list[SpoolEntry] = []
        for e in order:
            if free >= size:
                break
            victims.append(e)
            free += e.size
        if free < size:
            return None
        released = [e for e in victims if e.awaiting]
        evicted = [e for e in victims if not e.awaiting]
        for e in victims:
            self._forget(e)
        self.released_batches += len(released)
        self.released_spans += sum(e.spans for e in released)
        self.evicted_batches += len(evicted)
        self.evicted_spans += sum(e.spans for e in evicted)
        if released:
            log.warning("uplink spool full (%d bytes): let go of the %d oldest batches the broker took but no gateway "
                        "confirmed yet (%d spans)", self.max_bytes, len(released), sum(e.spans for e in released))
        if evicted:
            log.warning("uplink spool full (%d bytes): evicted the %d oldest batches (%d spans)",
                        self.max_bytes, len(evicted), sum(e.spans for e in evicted))
        return victims

    def _forget(self, entry: SpoolEntry) -> None:
        entry.gone = True
        entry.payload = None
        try:
            self.entries.remove(entry)
        except ValueError:
            return
        self.bytes -= entry.size
        self.spans -= entry.spans

    async def _store(self, seq: int, payload: bytes, spans: int) -> None:
        pass

    async def _delete(self, entry: SpoolEntry) -> None:
        pass


def spool_subdir(root: str | Path, node_id: str) -> Path:
    """The node's directory under the spool root; odd node ids get a stable hashed name."""
    if _SAFE_ID.match(node_id):
        return Path(root) / node_id
    import hashlib  # here: hashlib maps OpenSSL's libcrypto (3.4 MiB), which a node with a plain id never needs

    return Path(root) / ("node-" + hashlib.sha256(node_id.encode()).hexdigest()[:16])


class DiskSpool(MemorySpool):
    """One fsynced file per batch under `<root>/<node_id>/`; survives kill -9 and power cuts."""

    durable = True

    def __init__(self, root: str | Path, node_id: str, max_bytes: int, evict: bool = False) -> None:
        super().__init__(max_bytes, evict)
        self.dir = spool_subdir(root, node_id)
        self._lock_fd: int | None = None
        self._dir_fd: int | None = None
        self._lease = 0
        self.recovered_batches = 0
        self.recovered_spans = 0
        self.discarded_files = 0
        # The batch just stored, still in memory for its first send: the sender takes it right after, and reading it
        # back from disk cost a thread hand-off per batch. Small batches only, so that it weighs nothing.
        self._hot: tuple[SpoolEntry, bytes] | None = None

    async def open(self) -> None:
        """Take the directory's lock, load the batches a previous run left, and set the sequence floor."""
        try:
            await asyncio.to_thread(self._open_sync)
        except OSError as e:
            await self.close()
            raise UplinkError(f"cannot use the uplink spool directory {self.dir}: {e.strerror or e}") from None

    def _open_sync(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self.dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise UplinkError(f"cannot use the uplink spool directory {self.dir}: {e.strerror or e} "
                              "(fix: create it writable for the agent, or set uplink.spool_dir)") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock_fd)
            self._lock_fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise UplinkError(f"the uplink spool {self.dir} is in use by another agent with the same node id "
                                  "(fix: give each agent its own node.id or uplink.spool_dir)") from None
            raise UplinkError(f"cannot lock the uplink spool {self.dir}: {e.strerror or e}") from None
        self._dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        found: list[SpoolEntry] = []
        for name in os.listdir(self.dir):
            path = self.dir / name
            if name.endswith(".tmp"):  # a write cut short by a crash: its batch was never counted as spooled
                _unlink(path)
                continue
            m = _NAME.match(name)
            if m is None:
                continue
            entry = SpoolEntry(int(m.group(1)), int(m.group(2)), 0)
            try:
                with open(path, "rb") as f:
                    head = f.read(MAX_HEADER_SIZE)
                    entry.size = os.fstat(f.fileno()).st_size
                if not head.startswith(METRICS_MAGIC):  # metrics batches are spooled next to span batches
                    entry.table_id = read_header(head).table_id
            except Exception as e:  # noqa: BLE001 - an unreadable or foreign file is set aside, never sent
                log.warning("uplink spool: discarding unreadable batch file %s: %s", path, e)
                self.discarded_files += 1
                _unlink(path)
                continue
            found.append(entry)
        found.sort(key=lambda e: e.seq)
        self.entries = deque(found)
        self.bytes = sum(e.size for e in found)
        self.spans = sum(e.spans for e in found)
        self.recovered_batches, self.recovered_spans = len(found), self.spans
        if self.evict:
            for e in self._make_room(0) or ():  # the limit may have shrunk since the last run
                _unlink(self._path(e))
        lease = 0
        try:
            lease = int((self.dir / _LEASE_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            pass
        floor = max(lease, (found[-1].seq + 1) if found else 0, time.time_ns() // 1000)
        self._next_seq = floor
        self._write_lease(floor + SEQ_LEASE)
        if found:
            log.info("uplink spool %s: resuming %d batches (%d spans, %d bytes) left by a previous run",
                     self.dir, len(found), self.spans, self.bytes)

    async def next_seq(self) -> int:
        """A sequence number larger than any this node used before, across restarts and clock steps."""
        seq = self._next_seq
        if seq >= self._lease:
            try:
                await asyncio.to_thread(self._write_lease, seq + SEQ_LEASE)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise SpoolFull(f"the disk of the uplink spool {self.dir} is full") from None
                raise UplinkError(f"cannot write to the uplink spool {self.dir}: {e.strerror or e}") from None
        self._next_seq = seq + 1
        return seq

    def _write_lease(self, value: int) -> None:
        self._atomic_write(_LEASE_FILE, str(value).encode())
        self._lease = value

    def _atomic_write(self, name: str, data: bytes) -> None:
        tmp = self.dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.dir / name)
        except BaseException:
            _unlink(tmp)  # a full disk (or any failure) must not leave a partial file taking the space
            raise
        assert self._dir_fd is not None
        os.fsync(self._dir_fd)  # the rename itself is durable only once the directory is

    def _path(self, entry: SpoolEntry) -> Path:
        return self.dir / f"{entry.seq:020d}-{entry.spans}.hxb"

    async def _store(self, seq: int, payload: bytes, spans: int) -> None:
        try:
            await asyncio.to_thread(self._atomic_write, f"{seq:020d}-{spans}.hxb", payload)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(f"the disk of the uplink spool {self.dir} is full ({len(self.entries)} batches, "
                                f"{self.bytes} bytes spooled; free space there, or lower uplink.spool_max_bytes)") \
                    from None
            raise UplinkError(f"cannot write to the uplink spool {self.dir}: {e.strerror or e}") from None

    async def put(self, seq: int, spans: int, payload: bytes) -> SpoolEntry | None:
        """Store one batch durably (as MemorySpool.put), keeping a small one in memory for its first send."""
        entry = await super().put(seq, spans, payload)
        if entry is not None:
            self._hot = (entry, payload) if len(payload) <= HOT_MAX_BYTES else None
        return entry

    async def read(self, entry: SpoolEntry) -> bytes | None:
        """The batch bytes (from disk but for the newest batch's first read), or None if the file is gone."""
        if entry.gone:
            return None
        hot = self._hot
        if hot is not None and hot[0] is entry:
            self._hot = None
            return hot[1]
        try:
            return await asyncio.to_thread(self._path(entry).read_bytes)
        except OSError as e:
            log.warning("uplink spool: batch seq=%d vanished or is unreadable: %s", entry.seq, e)
            self._forget(entry)
            self.discarded_files += 1
            return None

    def _forget(self, entry: SpoolEntry) -> None:
        if self._hot is not None and self._hot[0] is entry:
            self._hot = None
        super()._forget(entry)

    async def _delete(self, entry: SpoolEntry) -> None:
        # No directory fsync: if a power cut brings the file back, the batch is resent and the gateway drops the
        # duplicate by (node_id, seq).
        await asyncio.to_thread(_unlink, self._path(entry))

    async def close(self) -> None:
        """Release the directory lock; the files stay for the next run."""
        for attr in ("_dir_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)  # closing the lock file releases the flock
                setattr(self, attr, None)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
