"""The assembler's configuration: its section ([assembler]) and the bounds the agent sets from the memory budget."""
from __future__ import annotations

from dataclasses import dataclass

from ..config.reader import Section, duration, setting, whole
from ..errors import ConfigError

__all__ = ["AssemblerConfig"]


@dataclass(slots=True, frozen=True)
class AssemblerConfig(Section):
    """Windows and bounds of the assembler."""

    window: float = setting(2.0, duration(0.0, 60.0))  # s a span waits for the spans it relates to
    memory: float = setting(10.0, duration(0.0, 600.0))  # s a span stays indexed for lookups after it arrived
    max_spans: int = setting(50_000, whole(100, 10_000_000))  # spans held waiting for release
    # s a kernel span that an SDK span still to come can place waits for it at most (OpenTelemetry SDKs export
    # every 5 s by default); hold.py
    sdk_wait: float = setting(8.0, duration(0.0, 120.0))
    # Not in the file: the agent starts them from the memory budget, and the governor plans them.
    max_bytes: int = 16 * 1024 * 1024  # bytes held waiting for release (Span.approx_size)
    max_index_bytes: int = 8 * 1024 * 1024  # bytes of released spans kept indexed for late joins (oldest go first)
    dedup_memory: int = 65_536  # span ids remembered to drop redeliveries

    def validate(self) -> None:
        if self.memory < self.window:
            raise ConfigError("assembler.memory", f"must be at least assembler.window ({self.window}s)")
