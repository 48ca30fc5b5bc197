"""The span builder's long-lived state under a byte bound: connections, threads' request contexts, processes.

Each table already has a count cap (SpanBuilderConfig); this puts all of them under one byte bound the memory
governor plans (a `Budgeted` part): `bytes` is an estimate per entry (measured with tracemalloc on HTTP exchanges),
and `enforce()`, run with the builder's periodic flush, evicts the least recently used entries of every table by the
same fraction when the estimate passes the bound, each eviction counted per table. A thread whose request context
is evicted has its next call decided without it; a connection evicted loses the requests waiting on it (counted in
`pending_dropped`); a process evicted is named again when seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spans import SpanBuilder

__all__ = ["BuilderState", "StateEvictions", "CONN_BYTES", "THREAD_BYTES", "PROC_BYTES", "CONNECT_BYTES"]

# Bytes per entry, estimated: a connection with its HTTP state, a thread serving requests, a process with its
# resource, a connection whose first call is still to come.
CONN_BYTES = 1536
THREAD_BYTES = 1024
PROC_BYTES = 512
CONNECT_BYTES = 176
# Entries each table keeps whatever the bound: the live state of a small node.
_KEEP = 32


@dataclass(slots=True)
class StateEvictions:
    """Entries the byte bound evicted, by table (the count caps' own evictions are in the builder's stats)."""

    connections: int = 0
    threads: int = 0
    processes: int = 0
    connects: int = 0
    enforced: int = 0  # times the bound had to evict


class BuilderState:
    """The span builder's tables as the memory governor budgets them (Budgeted)."""

    def __init__(self, builder: SpanBuilder, bound: int = 0) -> None:
        self._b = builder
        self.bound = bound  # 0: no byte bound yet (only the count caps)
        self.evictions = StateEvictions()

    @property
    def bytes(self) -> int:
        """Estimated bytes of the builder's state now."""
        b = self._b
        return (len(b.conns) * CONN_BYTES + len(b.causes) * THREAD_BYTES + len(b.procs) * PROC_BYTES
                + b.causes.connect_count * CONNECT_BYTES)

    def set_bound(self, n: int) -> int:
        """Hold at most about `n` bytes; returns the requests that waited on connections evicted to get there."""
        self.bound = n
        return self.enforce()

    def drop_all(self) -> int:
        """Forget the older half of every table (what the tables hold are contexts, not spans); returns the
        requests that waited on connections evicted."""
        return self._shrink(0.5)

    def enforce(self) -> int:
        """Evict down to the bound if the state passed it; returns the requests that waited on connections
        evicted."""
        dropped = 0
        for _ in range(3):  # a second pass when the tables' minimums kept the first short of the bound
            total = self.bytes
            if not self.bound or total <= self.bound:
                break
            dropped += self._shrink(self.bound / total)
        return dropped

    def _shrink(self, keep: float) -> int:
        b, ev = self._b, self.evictions
        ev.enforced += 1
        excess = {name: max(0, n - max(_KEEP, int(n * keep)))
                  for name, n in (("connections", len(b.conns)), ("threads", len(b.causes)),
                                  ("processes", len(b.procs)), ("connects", b.causes.connect_count))}
        dropped = b.conns.evict_oldest(excess["connections"])
        b.causes.evict_oldest(excess["threads"], excess["connects"])
        b.procs.evict_oldest(excess["processes"])
        ev.connections += excess["connections"]
        ev.threads += excess["threads"]
        ev.processes += excess["processes"]
        ev.connects += excess["connects"]
        return dropped
