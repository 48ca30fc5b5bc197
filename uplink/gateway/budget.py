"""The gateway's memory: every batch reserves what decoding it can cost before a byte of it is read or inflated.

The cost of a batch is bounded before decoding from what its zstd frame declares it inflates to (a frame that does
not declare it is refused, and no more than declared is ever produced): decoding (CBOR into Python objects, spans,
the OTLP request and its serialised bytes) takes at most DECODE_FACTOR times that size: above the worst measured on
hostile bodies built to cost the most per byte (`bench/gateway_decode_cost.py`, figures in docs/benchmarks.md). The budget is `gateway.memory_limit` less what the process holds idle and what its MQTT client
may have read ahead; a batch that could never fit is refused for good, one that does not fit now waits.

What a batch declares does not bound what its spans expand to: a text in its string table (or shared by CBOR) is one
object however many spans use it, but the OTLP request copies it for every use. So the decoders also count the bytes
the request will take and refuse a batch over `expansion_limit` of what it declares: the reservation less the copies
the export makes of that request (the protobuf message, its serialised bytes, the transport's buffer) and room for
the Python objects. A decoded batch whose count asks for more than was reserved (`export_cost`) reserves the
difference before its export is built, or is refused.
"""
from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["MemoryBudget", "DECODE_FACTOR", "EXPORT_COPIES", "decode_cost", "expansion_limit", "export_cost"]

DECODE_FACTOR = 96
EXPORT_COPIES = 4
# Once decoded, a batch's cost follows what the decoders counted: each counted byte takes about 4.6 bytes of the
# process while the export builds, serialises and sends the request (a batch whose spans share texts costs little
# else), plus the decoded objects, which stay under OBJECTS_FACTOR times the declared size
# (bench/gateway_expansion_rss.py; docs/benchmarks.md).
EXPORT_FACTOR = 5
OBJECTS_FACTOR = 32


def decode_cost(declared: int) -> int:
    """Bytes a batch inflating to `declared` bytes may hold, beyond its wire bytes, while decoded and exported."""
    return declared * DECODE_FACTOR


def expansion_limit(declared: int) -> int:
    """Bytes the OTLP request of a batch inflating to `declared` bytes may take (counted by the decoders)."""
    return decode_cost(declared) // EXPORT_COPIES


def export_cost(declared: int, expanded: int) -> int:
    """Bytes a decoded batch may hold while exported, from its declared size and the bytes its decoder counted:
    never less than `decode_cost`, reserved before decoding."""
    return max(decode_cost(declared), declared * OBJECTS_FACTOR + expanded * EXPORT_FACTOR)


class MemoryBudget:
    """Bytes to reserve and release; reservations are granted in the order they were asked for."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        self.waited = 0  # reservations that had to wait
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _grant(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    async def reserve(self, n: int, timeout: float | None = None) -> bool:
        """Take `n` bytes, waiting up to `timeout` s (None: as long as it takes); False if not granted in time.
        `n` must not exceed `total`."""
        if n > self.total:
            raise ValueError(f"{n} bytes can never fit a budget of {self.total}")
        if not self._waiters and self.used + n <= self.total:
            self._grant(n)
            return True
        self.waited += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            pass
        except asyncio.CancelledError:
            if fut.done():  # granted just as the caller gave up
                self.release(n)
            else:
                self._forget(entry)
            raise
        if fut.done():
            return True
        self._forget(entry)
        return False

    def _forget(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        entry[1].cancel()
        self._waiters.remove(entry)
        self._wake()  # those behind it may fit

    def release(self, n: int) -> None:
        """Give back `n` bytes taken by `reserve`."""
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            n, fut = self._waiters.popleft()
            self._grant(n)
            fut.set_result(None)

