"""The batches a gateway has settled, by (node, seq): a window in memory, and a journal so a restart remembers them.

Nodes resend what no gateway confirmed (a lost confirmation, a broker that lost its queue, a gateway killed between
export and confirmation), so the same batch reaches a gateway again; this window is what keeps it from being
exported twice. The journal (`<state_dir>/<client id>/seen.log`) is one line per settled batch, appended with one
`write` before the batch is confirmed: a gateway process killed at any point finds every confirmed batch there again
(the page cache keeps what was written). The file is fsynced every second, so after a power cut at most the last
second is forgotten (those batches, if resent, are exported again). When the journal reaches twice the window it is
rewritten with the window alone.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

__all__ = ["SeenBatches"]

log = logging.getLogger(__name__)

_JOURNAL = "seen.log"
_SYNC_EVERY = 1.0

Key = tuple[str, int]


class SeenBatches:
    """The last `window` settled (node, seq) keys; `directory` None keeps them in memory only."""

    def __init__(self, window: int, directory: Path | None = None) -> None:
        self.window = window
        self.dir = directory
        self._keys: OrderedDict[Key, None] = OrderedDict()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._lines = 0
        self._dirty = False
        self._compacting = False
        self._since_snapshot: list[Key] = []
        self.loaded = 0  # keys read back from the journal at start

    @property
    def durable(self) -> bool:
        """True when settled keys outlive the process."""
        return self._fd is not None

    def open(self) -> None:
        """Read the journal a previous run left (if there is a directory); in memory only if it cannot be used."""
        if self.dir is None or self.window <= 0:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            why = ("another gateway with the same client id uses it (give each its own gateway.client_id)"
                   if e.errno in (errno.EWOULDBLOCK, errno.EACCES) and self._lock_fd is not None else e.strerror or e)
            log.error("gateway state directory %s unusable: %s; batches already exported are remembered in memory "
                      "only, so after a restart a resent batch may be exported twice", self.dir, why)
            self._close_lock()
            return
        path = self.dir / _JOURNAL
        try:
            with open(path, "rb") as f:
                for line in f:
                    key = _parse(line)
                    if key is not None:
                        self._keys[key] = None
                        self._keys.move_to_end(key)
        except FileNotFoundError:
            pass
        while len(self._keys) > self.window:
            self._keys.popitem(last=False)
        self.loaded = len(self._keys)
        # Rewritten at once: drops a torn last line and what fell out of the window.
        self._rewrite(list(self._keys))
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._lines = len(self._keys)
        if self.loaded:
            log.info("gateway remembers %d batches exported before its restart (%s)", self.loaded, path)

    def __contains__(self, key: Key) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: Key) -> None:
        """Remember a settled batch; written to the journal before returning."""
        if self.window <= 0:
            return
        self._keys[key] = None
        while len(self._keys) > self.window:
            self._keys.popitem(last=False)
        if self._fd is None:
            return
        try:
            os.write(self._fd, _line(key))
        except OSError as e:
            log.error("gateway state journal %s unwritable: %s; remembering in memory only", self.dir, e.strerror)
            self._close_journal()
            return
        self._dirty = True
        self._lines += 1
        if self._compacting:
            self._since_snapshot.append(key)

    async def run(self) -> None:
        """fsync the journal every second and compact it when it has grown to twice the window."""
        while self._fd is not None:
            await asyncio.sleep(_SYNC_EVERY)
            if self._dirty and self._fd is not None:
                self._dirty = False
                fd = self._fd
                await asyncio.to_thread(os.fsync, fd)
            if self._fd is not None and self._lines > 2 * self.window + 1024:
                await self._compact()

    async def _compact(self) -> None:
        self._compacting, self._since_snapshot = True, []
        try:
            await asyncio.to_thread(self._rewrite, list(self._keys), ".compact")
            assert self.dir is not None
            tmp = self.dir / (_JOURNAL + ".compact")
            with open(tmp, "ab") as f:  # what was settled while the snapshot was written
                f.write(b"".join(_line(k) for k in self._since_snapshot))
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.dir / _JOURNAL)
            self._close_journal()
            self._fd = os.open(self.dir / _JOURNAL, os.O_WRONLY | os.O_APPEND)
            self._lines = len(self._keys)
        except OSError as e:
            log.error("gateway state journal %s could not be compacted: %s", self.dir, e.strerror)
        finally:
            self._compacting, self._since_snapshot = False, []

    def _rewrite(self, keys: list[Key], suffix: str = ".tmp") -> None:
        assert self.dir is not None
        tmp = self.dir / (_JOURNAL + suffix)
        with open(tmp, "wb") as f:
            f.write(b"".join(_line(k) for k in keys))
            f.flush()
            os.fsync(f.fileno())
        if suffix == ".tmp":
            os.rename(tmp, self.dir / _JOURNAL)
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def close(self) -> None:
        """fsync and close the journal, release the directory."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
        self._close_journal()
        self._close_lock()

    def _close_journal(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _close_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)


def _line(key: Key) -> bytes:
    return json.dumps(key, separators=(",", ":")).encode() + b"\n"


def _parse(line: bytes) -> Key | None:
    try:
        node, seq = json.loads(line)
    except (ValueError, TypeError):
        return None  # a line torn by a crash, or not ours
    if type(node) is not str or type(seq) is not int:
        return None
    return node, seq
