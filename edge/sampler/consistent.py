"""OpenTelemetry consistent probability sampling (tracestate `ot=th:…`, randomness from the trace id or `rv`).

A trace is kept when its 56-bit randomness R is at least the rejection threshold T = (1 - ratio) * 2^56.
Every node and SDK that follows the specification makes the same decision for the same trace at the same
ratio, so a trace is never half-kept across the fleet.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model import Span
from ..propagation import format_tracestate, parse_tracestate

__all__ = ["ConsistentSampler", "SamplerStats", "threshold_for_ratio", "encode_threshold", "randomness",
           "with_threshold", "without_threshold", "MAX_THRESHOLD"]

MAX_THRESHOLD = 1 << 56


def threshold_for_ratio(ratio: float) -> int:
    """The rejection threshold for a keep-probability (0 keeps everything, 2^56 nothing)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampling ratio must be within 0..1, got {ratio}")
    # Computed as the specification (and the OpenTelemetry SDKs) do, so rounding agrees to the last bit.
    return MAX_THRESHOLD - round(ratio * MAX_THRESHOLD)


def encode_threshold(threshold: int) -> str:
    """The `th` value: 14 hex digits with trailing zeros removed ('0' for keep-all)."""
    if threshold <= 0:
        return "0"
    return f"{threshold:014x}".rstrip("0") or "0"


def _ot_members(trace_state: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    members = parse_tracestate(trace_state) if trace_state else []
    ot = next((v for k, v in members if k == "ot"), "")
    fields = dict(part.split(":", 1) for part in ot.split(";") if ":" in part)
    return members, fields


def randomness(trace_id: bytes, trace_state: str = "") -> int:
    """R: the explicit `rv` from tracestate when valid, else the trace id's least significant 56 bits."""
    if trace_state:
        _, fields = _ot_members(trace_state)
        rv = fields.get("rv", "")
        if len(rv) == 14:
            try:
                return int(rv, 16)
            except ValueError:
                pass
    return int.from_bytes(trace_id[9:16], "big")


def with_threshold(trace_state: str, threshold: int) -> str:
    """Tracestate with the `ot` member's `th` set (other `ot` fields and vendors kept, `ot` moved first)."""
    members, fields = _ot_members(trace_state)
    fields["th"] = encode_threshold(threshold)
    ot_value = ";".join(f"{k}:{v}" for k, v in fields.items())
    return format_tracestate([("ot", ot_value)] + [(k, v) for k, v in members if k != "ot"])


def without_threshold(trace_state: str) -> str:
    """Tracestate with `th` erased: what a span kept by a non-probabilistic rule must carry (adjusted count unknown)."""
    if "ot=" not in trace_state:
        return trace_state
    members, fields = _ot_members(trace_state)
    fields.pop("th", None)
    rest = [(k, v) for k, v in members if k != "ot"]
    if fields:
        rest.insert(0, ("ot", ";".join(f"{k}:{v}" for k, v in fields.items())))
    return format_tracestate(rest)


@dataclass(slots=True)
class SamplerStats:
    """Decisions counted by span."""

    kept: int = 0
    dropped: int = 0


class ConsistentSampler:
    """Keeps whole traces with probability `ratio`, deciding from the trace's own randomness."""

    def __init__(self, ratio: float = 1.0) -> None:
        self.stats = SamplerStats()
        self.set_ratio(ratio)

    def set_ratio(self, ratio: float) -> None:
        """Change the keep-probability while running."""
        self.ratio = ratio
        self.threshold = threshold_for_ratio(ratio)

    def keeps(self, trace_id: bytes, trace_state: str = "") -> bool:
        """The decision for one trace."""
        return randomness(trace_id, trace_state) >= self.threshold

    def decide(self, spans: list[Span]) -> tuple[list[Span], list[Span]]:
        """Split spans into (kept, dropped); kept spans carry `ot=th:` when sampling is not keep-all."""
        if self.threshold == 0:
            self.stats.kept += len(spans)
            return spans, []
        kept: list[Span] = []
        dropped: list[Span] = []
        for s in spans:
            if self.keeps(s.trace_id, s.trace_state):
                s.trace_state = with_threshold(s.trace_state, self.threshold)
                kept.append(s)
            else:
                dropped.append(s)
        self.stats.kept += len(kept)
        self.stats.dropped += len(dropped)
        return kept, dropped
