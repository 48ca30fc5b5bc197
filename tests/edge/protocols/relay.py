"""A recording TCP relay: real clients talk to real servers through it, and tests read the exact bytes."""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

__all__ = ["Relay"]


@dataclass
class Relay:
    """Listens on a free loopback port and forwards each accepted connection to `target`, recording both ways.

    `segments` keeps (direction, bytes) in arrival order, direction "up" (client to server) or "down";
    `records` the same with the index of the relayed connection first.
    """

    target: tuple[str, int]
    segments: list[tuple[str, bytes]] = field(default_factory=list)
    records: list[tuple[int, str, bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            index = len(self._socks) // 2
            self._socks += [client, upstream]
            for src, dst, name in ((client, upstream, "up"), (upstream, client, "down")):
                t = threading.Thread(target=self._pump, args=(src, dst, name, index), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, name: str, index: int) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self._lock:
                self.segments.append((name, data))
                self.records.append((index, name, data))
            try:
                dst.sendall(data)
            except OSError:
                return

    def stream(self, direction: str) -> bytes:
        """Everything sent in one direction so far."""
        with self._lock:
            return b"".join(d for n, d in self.segments if n == direction)

    def close(self) -> None:
        """Stop listening and close the relayed connections."""
        self._listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass
