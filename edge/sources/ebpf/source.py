"""Source: kernel spans. Loads the probes, reads the ring buffer on the loop, builds spans, feeds the pipeline."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .config import EbpfSourceConfig
from ...model import Source, Span
from ...errors import ProbeUnavailable
from .events import ExecEvent, ExitEvent, KernelEvent
from .loader import (RED_BOUNDS_MAX, RED_CLIENT, RED_CONSUMER, RED_PRODUCER, RED_SERVER, KernelEventStream, ProbeSet,
                     RedAggregate, open_probes)
from .spans import SpanBuilder, SpanBuilderConfig, split_host
from .builder_state import BuilderState
from .py_attach import PyContextAttacher
from .rescan import Rescanner
from .tls_attach import TlsAttacher

__all__ = ["EbpfSource", "EbpfSourceStats"]

log = logging.getLogger(__name__)

Sink = Callable[[list[Span], Source], int]
# (service, kind, path, peer, errors, sum_ns, buckets): requests the kernel sampled out, for the RED aggregator
RedSink = Callable[[str, str, str, str, int, int, Sequence[int]], None]
_RED_KINDS = {RED_SERVER: "server", RED_CLIENT: "client", RED_PRODUCER: "producer", RED_CONSUMER: "consumer"}
_THRESHOLD_MAX = (1 << 56) - 1

# How often spans whose ending never comes (no response, no close) are pushed out by time.
_FLUSH_INTERVAL_S = 1.0
# After an exec, the new program's libraries are looked for this long after (the dynamic loader maps them after the
# exec the probes report; a library opened later is found by the periodic rescan, rescan.py).
_EXEC_SCANS_S = (0.0, 0.05, 0.5, 2.0)


@dataclass(slots=True)
class EbpfSourceStats:
    """Counters of the kernel source itself (the builder and the decoder keep their own)."""

    spans: int = 0
    ignored_own_traffic: int = 0
    dropped_inbox_full: int = 0
    red_counted: int = 0  # requests the kernel sampled out, counted into the RED metrics from its aggregates
    red_series_freed: int = 0  # kernel aggregate series deleted because their process ended


class EbpfSource:
    """The kernel probes as a span source; `start()` raises ProbeUnavailable where they cannot run."""

    def __init__(self, cfg: EbpfSourceConfig, sink: Sink, own_pid: int) -> None:
        self.cfg = cfg
        self.sink = sink
        self.own_pid = own_pid
        self.builder = SpanBuilder(SpanBuilderConfig(max_connections=cfg.max_connections,
                                                     response_timeout=cfg.response_timeout,
                                                     payload_bytes=cfg.payload_bytes,
                                                     capture_headers=tuple(h.lower() for h in cfg.capture_headers)))
        # Its tables under the byte bound the memory governor plans (the agent registers it once the probes run).
        self.state = BuilderState(self.builder)
        self.probes: ProbeSet | None = None
        self.stream: KernelEventStream | None = None
        self.stats = EbpfSourceStats()
        self._red_sink: RedSink | None = None
        self._red_buckets = 0
        self._red_seen: dict[bytes, tuple[int, int, tuple[int, ...]]] = {}  # raw key -> (errors, sum_ns, buckets)
        self.tls: TlsAttacher | None = None
        self.tls_error = ""  # why TLS plaintext is not read, when it is not
        self.py: PyContextAttacher | None = None
        self.py_error = ""  # why Python task contexts are not read, when they are not
        self._tls_lock = asyncio.Lock()  # one scan at a time, of either attacher
        self._rescanner = Rescanner(own_pid)
        self._tls_tasks: set[asyncio.Task[None]] = set()

    def set_sample_threshold(self, threshold: int) -> None:
        """Apply the agent's sampling threshold in the kernel (0 keeps everything)."""
        if self.probes is not None and not self.probes.closed:
            self.probes.set_sample_threshold(min(max(0, threshold), _THRESHOLD_MAX))

    def set_red_sink(self, bounds_ns: Sequence[int], sink: RedSink) -> None:
        """Where the kernel's counts of sampled-out requests go, bucketed by `bounds_ns` (the aggregator's bounds).

        With more bounds than the kernel can hold, the kernel never samples out (it could not count exactly).
        """
        self._red_sink = sink
        self._red_buckets = len(bounds_ns) + 1
        if self.probes is not None:
            if len(bounds_ns) > RED_BOUNDS_MAX:
                log.warning("RED histogram has %d bounds, the kernel holds %d: kernel sampling stays off",
                            len(bounds_ns), RED_BOUNDS_MAX)
                self.probes.set_red_bounds(None)
            else:
                self.probes.set_red_bounds(bounds_ns)

    def poll_red(self) -> int:
        """Feed what the kernel's RED aggregates gained since the last poll to the sink; returns requests counted."""
        if self.probes is None or self.probes.closed or self._red_sink is None:
            return 0
        counted = 0
        for agg in self.probes.red_aggregates():
            seen = agg.raw_key in self._red_seen
            delta = self._red_delta(agg)
            counted += delta
            if seen and not delta and not os.path.exists(f"/proc/{agg.tgid}"):
                # A series of an ended process that stayed still for a poll: nothing adds to it any more, free its
                # slot (its counts are in; were it still in use, it would start again from zero, as deltas do).
                self.probes.delete_red_aggregate(agg)
                self._red_seen.pop(agg.raw_key, None)
                self.stats.red_series_freed += 1
        self.stats.red_counted += counted
        return counted

    def _red_delta(self, agg: RedAggregate) -> int:
        assert self._red_sink is not None
        buckets = agg.buckets[:self._red_buckets]
        errors0, sum0, buckets0 = self._red_seen.get(agg.raw_key, (0, 0, (0,) * len(buckets)))
        delta = [b - b0 for b, b0 in zip(buckets, buckets0)]
        if not any(delta) and agg.errors == errors0:
            return 0
        self._red_seen[agg.raw_key] = (agg.errors, agg.sum_ns, buckets)
        kind = _RED_KINDS.get(agg.kind)
        if kind is None or self._ignored_red(agg):
            return 0
        # The same names as the span path: service from the builder, peer as spans.py's server.address.
        service = self.builder.service_name(agg.tgid, agg.comm)
        if agg.kind == RED_PRODUCER:
            path, peer = f"publish {agg.path}", agg.host
        elif agg.kind == RED_CONSUMER:
            path, peer = f"receive {agg.path}", ""  # a consumer span names no peer (sampler/routes.py peer_of)
        else:
            path, peer = agg.path, split_host(agg.host)[0] if agg.kind == RED_CLIENT else ""
        self._red_sink(service, kind, path, peer, agg.errors - errors0, agg.sum_ns - sum0, delta)
        return sum(delta)

    def _ignored_red(self, agg: RedAggregate) -> bool:
        if agg.kind in (RED_PRODUCER, RED_CONSUMER):
            return agg.path.startswith(self.cfg.ignore_topic_prefixes)
        return agg.path in self.cfg.ignore_http_paths

    async def start(self) -> None:
        """Load and attach the probes (off the loop: verification takes a while) and start reading."""
        self.probes = await asyncio.to_thread(open_probes, self.cfg, self_pid=self.own_pid)
        self.stream = KernelEventStream(self.probes, self._on_events)
        self.stream.start(asyncio.get_running_loop())
        self.builder.on_h2 = self.probes.hint_h2
        if self.cfg.tls:
            tls = TlsAttacher(self.probes, self.own_pid, frozenset(self.cfg.pids) if self.cfg.pids else None)
            self.tls_error = await self._start_attacher(tls, "TLS plaintext")
            self.tls = None if self.tls_error else tls
        else:
            self.tls_error = "sources.ebpf.tls = false"
        if self.cfg.python_contexts:
            py = PyContextAttacher(self.probes, self.own_pid, frozenset(self.cfg.pids) if self.cfg.pids else None)
            self.py_error = await self._start_attacher(py, "Python task contexts")
            self.py = None if self.py_error else py
        else:
            self.py_error = "sources.ebpf.python_contexts = false"
        try:
            async with self._tls_lock:
                # every process running now, its mappings read once for both attachers
                await asyncio.to_thread(self._rescanner.rescan, self._attachers(), self._allowed(), True)
        except Exception:  # the periodic passes scan them again
            log.exception("scanning processes for TLS libraries and interpreters failed")

    def _allowed(self) -> frozenset[int] | None:
        return frozenset(self.cfg.pids) if self.cfg.pids else None

    async def _start_attacher(self, attacher: TlsAttacher | PyContextAttacher, what: str) -> str:
        """Start an attacher off the loop: "" once started, else why `what` will not be read (it is closed)."""
        try:
            async with self._tls_lock:
                await asyncio.to_thread(attacher.start, False)
            return ""
        except ProbeUnavailable as e:
            attacher.close()
            why = f"{e.reason} ({e.fix})"
            log.warning("%s will not be read: %s", what, why)
            return why

    def _attachers(self) -> list[TlsAttacher | PyContextAttacher]:
        return [a for a in (self.tls, self.py) if a is not None]

    def _on_events(self, events: list[KernelEvent]) -> None:
        self._emit(self.builder.feed(events))
        if self.tls is not None or self.py is not None:
            for ev in events:
                if type(ev) is ExecEvent:
                    self._tls_later(ev.pid, _EXEC_SCANS_S)
                elif type(ev) is ExitEvent:
                    self._tls_later(ev.pid, ())

    def _tls_later(self, pid: int, delays: tuple[float, ...]) -> None:
        """Look at a process's TLS libraries after each delay (none: it exited, forget it)."""
        task = asyncio.get_running_loop().create_task(self._tls_pid(pid, delays))
        self._tls_tasks.add(task)
        task.add_done_callback(self._tls_tasks.discard)

    async def _tls_pid(self, pid: int, delays: tuple[float, ...]) -> None:
        if not delays:
            async with self._tls_lock:
                await asyncio.to_thread(self._rescanner.forget, self._attachers(), pid)
            return
        waited = 0.0
        for delay in delays:
            await asyncio.sleep(delay - waited)
            waited = delay
            async with self._tls_lock:
                await asyncio.to_thread(self._rescanner.scan, self._attachers(), pid)

    async def _tls_rescans(self) -> None:
        while self._attachers():
            await asyncio.sleep(self.cfg.tls_rescan)
            try:
                async with self._tls_lock:
                    # those closed while this rescan waited for the lock are not scanned
                    await asyncio.to_thread(self._rescanner.rescan, self._attachers(), self._allowed())
            except Exception:  # a rescan failing must not stop the next one
                log.exception("rescanning processes for TLS libraries and interpreters failed")

    def _ignored(self, span: Span) -> bool:
        topic = span.attributes.get("messaging.destination.name")
        if isinstance(topic, str) and topic.startswith(self.cfg.ignore_topic_prefixes):
            return True
        path = span.attributes.get("url.path")
        if path is None and span.attributes.get("rpc.system") == "grpc":  # gRPC spans name the call, not the path
            path = f"/{span.attributes.get('rpc.service')}/{span.attributes.get('rpc.method')}"
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
        """Push out timed-out spans and the kernel's new RED counts once a second until cancelled; rescan processes
        for TLS libraries every `tls_rescan`."""
        rescans = asyncio.create_task(self._tls_rescans())
        try:
            await self._flush_loop()
        finally:
            rescans.cancel()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_INTERVAL_S)
            self.flush_expired()
            self.state.enforce()
            try:
                self.poll_red()
            except Exception:  # a map read failing must not stop the span flush
                log.exception("reading the kernel RED aggregates failed")

    def flush_expired(self) -> None:
        """Push out the spans whose wait ended by now, after reading what the ring buffer holds."""
        # The reader polls every 250 ms: records written before `now` may still be unread, and a message's end or a
        # response among them would otherwise come after its exchange was settled by time. One read of the ring
        # first makes `now` the time up to which everything is in.
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if self.stream is not None:
            self.stream.poll()
        self._emit(self.builder.flush(now))

    def update_config(self, cfg: EbpfSourceConfig) -> None:
        """Apply what can change while loaded: the PID allow-list and the ignore rules."""
        self.cfg = cfg
        if self.probes is not None:
            self.probes.set_allowed_pids(cfg.pids or None)
        for a in self._attachers():
            a.allowed = frozenset(cfg.pids) if cfg.pids else None

    async def stop(self) -> None:
        """Emit what is pending, stop reading and detach every probe."""
        if self.stream is not None:
            self.stream.poll()
            self.stream.close()
        self._emit(self.builder.flush(time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 10**12))
        for task in list(self._tls_tasks):
            task.cancel()
        async with self._tls_lock:
            for a in self._attachers():
                await asyncio.to_thread(a.close)
            self.tls = self.py = None
        if self.probes is not None:
            try:
                self.poll_red()  # the last counts, before the maps go
            except Exception:
                log.exception("reading the kernel RED aggregates failed")
            self.probes.close()

    def status(self) -> dict[str, Any]:
        """Counters for the agent's status."""
        out: dict[str, Any] = {"spans": self.stats.spans, "ignored_own_traffic": self.stats.ignored_own_traffic,
                               "dropped_inbox_full": self.stats.dropped_inbox_full}
        if self.stream is not None:
            out["lost_events"] = self.stream.lost
        out["connections"] = self.builder.connection_count
        out["tables"] = {"bytes": self.state.bytes, "bound": self.state.bound, "threads": len(self.builder.causes),
                        "held_calls": self.builder.causes.waiting_count, "held_bytes": self.builder.causes.held_bytes,
                        "held_forced": self.builder.causes.tasks.stats.held_dropped
                        + self.builder.causes.stats.waiting_forced,
                        "processes": self.builder.process_count,
                        "evicted": asdict(self.state.evictions)}
        if self.probes is not None and not self.probes.closed:
            out["kernel_sampling"] = self.probes.kernel_sampling
            out["sample_threshold"] = self.probes.sample_threshold()
            out["decisions"] = self.probes.decision_counts()
            programs = self.probes.program_info()
            if any(p.run_cnt for p in programs.values()):
                # only once BPF run-time statistics have been on (kernel.bpf_stats_enabled=1 or helix doctor --cost)
                out["programs"] = {name: {"runs": p.run_cnt, "run_time_ns": p.run_time_ns}
                                   for name, p in programs.items()}
        if self.tls is not None:
            out["tls"] = self.tls.status()
        elif self.tls_error:
            out["tls"] = {"off": self.tls_error}
        if self.py is not None:
            ts = self.builder.causes.tasks.stats
            out["python_contexts"] = {**self.py.status(),
                                      "rule": {name: getattr(ts, name) for name in ts.__dataclass_fields__}}
        elif self.py_error:
            out["python_contexts"] = {"off": self.py_error}
        if self.tls is not None or self.py is not None:
            out["rescans"] = asdict(self._rescanner.stats)
        out["red_counted"] = self.stats.red_counted
        out["red_series_freed"] = self.stats.red_series_freed
        bs = self.builder.stats
        out["builder"] = {name: getattr(bs, name) for name in bs.__dataclass_fields__}
        return out
