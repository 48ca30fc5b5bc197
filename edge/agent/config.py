"""The agent's own configuration sections: the memory budget ([memory]) and its metrics ([metrics])."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.reader import Section, duration, listen_or_off, number, setting, size, whole
from ..errors import ConfigError

__all__ = ["MemoryConfig", "MetricsConfig"]


@dataclass(slots=True, frozen=True)
class MemoryConfig(Section):
    """The hard memory budget every buffer accounts against."""

    # The default receivers idle near 26 MiB (31 with TLS); at 5,000 spans/s the buffers hold the agent near 40 MiB
    # and a 10x burst stays under the limit (docs/benchmarks.md, memory budget).
    limit: int = setting(44 * 1024 * 1024, size(8 * 1024 * 1024, 64 * 1024**3))
    # What the process holds with empty buffers (interpreter, libraries); 0 = RSS measured at start.
    baseline: int = setting(0, size(0, 64 * 1024**3))
    check_interval: float = setting(0.5, duration(0.05, 60.0))  # how often the governor reads RSS and the buffers
    # While the memory in use is outside the span buffers (state tables, the heap), sampling fewer spans frees none of
    # it: the keep-probability is not lowered for it short of 90 % of the headroom, and from there stays at least this
    # share of sampler.ratio (lower only while the span buffers are the cause).
    keep_floor: float = setting(0.25, number(1 / 1024, 1.0))

    def validate(self) -> None:
        if self.baseline and self.baseline >= self.limit:
            raise ConfigError("memory.baseline", f"must be below memory.limit ({self.limit} bytes), got {self.baseline}")


def _buckets(value: Any, key: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(key, f"expected a non-empty list of positive bucket bounds in seconds, got {value!r}")
    bounds = tuple(float(v) for v in value)
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ConfigError(key, f"bucket bounds must be strictly increasing, got {list(bounds)}")
    return bounds


@dataclass(slots=True, frozen=True)
class MetricsConfig(Section):
    """RED metrics and the agent's own health: exported upstream and on a loopback Prometheus endpoint."""

    listen: tuple[str, int] | None = setting(("127.0.0.1", 9464), listen_or_off)
    export_interval: float = setting(10.0, duration(0.0, 3600.0))  # how often metrics go upstream; 0 = not at all
    buckets: tuple[float, ...] = setting((0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                                          10.0), _buckets)
    max_series: int = setting(2000, whole(10, 1_000_000))  # RED series per node; further ones fold into one overflow
