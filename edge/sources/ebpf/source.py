"""Source: kernel spans. Loads the probes, reads the ring buffer on the loop, builds spans, feeds the pipeline."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...config import EbpfSourceConfig
from ...model import Source, Span
from .events import KernelEvent
from .loader import KernelEventStream, ProbeSet, open_probes
from .spans import SpanBuilder, SpanBuilderConfig

__all__ = ["EbpfSource", "EbpfSourceStats"]

log = logging.getLogger(__name__)

Sink = Callable[[list[Span], Source], int]

# How often spans whose ending never comes (no response, no close) are pushed out by time.
_FLUSH_INTERVAL_S = 1.0


@dataclass(slots=True)
class EbpfSourceStats:
    """Counters of the kernel source itself (the builder and the decoder keep their own)."""

    spans: int = 0
    ignored_own_traffic: int = 0
    dropped_inbox_full: int = 0


class EbpfSource:
    """The kernel probes as a span source; `start()` raises ProbeUnavailable where they cannot run."""

    def __init__(self, cfg: EbpfSourceConfig, sink: Sink, own_pid: int) -> None:
        self.cfg = cfg
        self.sink = sink
        self.own_pid = own_pid
        self.builder = SpanBuilder(SpanBuilderConfig(max_connections=cfg.max_connections,
                                                     response_timeout=cfg.response_timeout,
                                                     payload_bytes=cfg.payload_bytes))
        self.probes: ProbeSet | None = None
        self.stream: KernelEventStream | None = None
        self.stats = EbpfSourceStats()

    async def start(self) -> None:
        """Load and attach the probes (off the loop: verification takes a while) and start reading."""
        self.probes = await asyncio.to_thread(open_probes, self.cfg, self_pid=self.own_pid)
        self.stream = KernelEventStream(self.probes, self._on_events)
        self.stream.start(asyncio.get_running_loop())

    def _on_events(self, events: list[KernelEvent]) -> None:
        self._emit(self.builder.feed(events))

    def _ignored(self, span: Span) -> bool:
        topic = span.attributes.get("messaging.destination.name")
        if isinstance(topic, str) and topic.startswith(self.cfg.ignore_topic_prefixes):
            return True
        path = span.attributes.get("url.path")
        return isinstance(path, str) and path in self.cfg.ignore_http_paths

    def _emit(self, spans: list[Span]) -> None:
        if not spans:
            return
        kept = [s for s in spans if not self._ignored(s)]
        self.stats.ignored_own_traffic += len(spans) - len(kept)
        if kept:
            accepted = self.sink(kept, Source.EBPF)
            self.stats.spans += accepted
            self.stats.dropped_inbox_full += len(kept) - accepted

    async def run(self) -> None:
        """Push out timed-out spans once a second until cancelled."""
        while True:
            await asyncio.sleep(_FLUSH_INTERVAL_S)
            self._emit(self.builder.flush(time.clock_gettime_ns(time.CLOCK_MONOTONIC)))

    def update_config(self, cfg: EbpfSourceConfig) -> None:
        """Apply what can change while loaded: the PID allow-list and the ignore rules."""
        self.cfg = cfg
        if self.probes is not None:
            self.probes.set_allowed_pids(cfg.pids or None)

    async def stop(self) -> None:
        """Emit what is pending, stop reading and detach every probe."""
        if self.stream is not None:
            self.stream.poll()
            self.stream.close()
        self._emit(self.builder.flush(time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 10**12))
        if self.probes is not None:
            self.probes.close()

    def status(self) -> dict[str, Any]:
        """Counters for the agent's status."""
        out: dict[str, Any] = {"spans": self.stats.spans, "ignored_own_traffic": self.stats.ignored_own_traffic,
                               "dropped_inbox_full": self.stats.dropped_inbox_full}
        if self.stream is not None:
            out["lost_events"] = self.stream.lost
        out["connections"] = self.builder.connection_count
        return out
