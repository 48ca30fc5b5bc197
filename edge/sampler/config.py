"""The configuration section of sampling ([sampler], with [sampler.latency])."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.reader import Section, boolean, duration, number, setting, size, whole
from ..errors import ConfigError

__all__ = ["SamplerConfig"]


def _route_durations(value: Any, key: str) -> dict[str, float]:
    # [sampler.latency] "/api/orders" = "500ms": one threshold per route.
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table of route = duration, such as \"/api/orders\" = \"500ms\", got {value!r}")
    return {route: duration(0.0, 3600.0)(v, f"{key}.{route!r}") for route, v in value.items()}


@dataclass(slots=True, frozen=True)
class SamplerConfig(Section):
    """Head sampling (the fraction of traces kept) and the tail rules that keep more."""

    ratio: float = setting(1.0, number(0.0, 1.0))
    tail: bool = setting(True, boolean)  # tail rules on; false = head sampling only
    decision_wait: float = setting(2.0, duration(0.0, 300.0))  # a trace is decided this long after its last span
    buffer: int = setting(4 * 1024 * 1024, size(0, 1024**3))  # bytes of head-rejected spans held while undecided
    keep_errors: bool = setting(True, boolean)  # error status or HTTP 5xx
    latency_default: float = setting(0.0, duration(0.0, 3600.0))  # 0 = no latency rule for routes not in `latency`
    latency: dict[str, float] = setting(conv=_route_durations, factory=dict)  # route -> seconds
    new_route_traces: int = setting(5, whole(0, 1000))  # the first N traces of a route not seen before; 0 = off
    max_routes: int = setting(10_000, whole(0, 1_000_000))  # routes remembered for the new-route rule
