"""The agent process: sources feed the inbox; one task moves spans through assembler → sampler → uplink."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uplink.client import UplinkClient

from ..assembler import Assembler
from ..config import Config
from ..errors import HelixError, ProbeUnavailable
from ..model import MetricBatch, Source, Span
from ..net.budget import RequestBudget
from ..aggregator import RedAggregator
from ..sampler import TailRules, TraceSampler
from ..sources.mqtt_sdk import MqttSdkSource
from ..sources.otlp_common import OtlpIngest, decode_logged
from .accepted_log import AcceptedLog
from .governor import MIN_INBOX, MIN_STATE, SHARES, MemoryGovernor
from .inbox import SpanInbox
from .supervisor import Supervisor
from .metrics_http import MetricsEndpoint, health_metrics
from ..runtime import sdnotify

if TYPE_CHECKING:
    from ..fleet.node import FleetNode
    from ..sources.ebpf.source import EbpfSource
    from ..sources.otlp_grpc import OtlpGrpcReceiver
    from ..sources.otlp_http import OtlpHttpReceiver

__all__ = ["Agent", "KernelStatus"]

log = logging.getLogger(__name__)

# Assembler counters of SDK traces and of the spans that waited for an SDK (edge/assembler/traces.py, hold.py).
_STITCHING = ("born", "moved", "unjoined", "sdk_waits", "sdk_wait_expired", "sdk_wait_forced", "state_evicted")


@dataclass(slots=True)
class KernelStatus:
    """Whether the kernel probes run, and if not, why and what would fix it."""

    state: str = "disabled"  # disabled | running | unavailable
    reason: str = ""
    fix: str = ""


class Agent:
    """One node's agent. Construct, then `await run(stop)`; everything accepted is flushed on the way out."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.aggregator = RedAggregator(cfg.metrics.buckets, cfg.metrics.max_series)
        # Until the memory governor plans them from the headroom: a quarter of the budget each for the spans waiting
        # in the inbox and those held by the assembler. What the inbox drops under pressure still counts in RED.
        self.inbox = SpanInbox(max(1 << 20, cfg.memory.limit // 4), on_drop=self.aggregator.consume)
        self.assembler = Assembler(dataclasses.replace(cfg.assembler, max_bytes=max(1 << 20, cfg.memory.limit // 4)))
        self.sampler = TraceSampler(cfg.sampler.ratio, TailRules.from_config(cfg.sampler))
        self.uplink = UplinkClient(cfg.uplink, cfg.node.id)
        # Durable mode: OTLP is answered only once the request is in this log on disk (edge/agent/accepted_log.py).
        self.accepted: AcceptedLog | None = None
        if cfg.otlp.durable:
            self.accepted = AcceptedLog(Path(cfg.otlp.durable_dir) / cfg.node.id, cfg.otlp.durable_max_bytes,
                                        cfg.otlp.durable_commit_delay)
        self._replaying: int | None = None  # the log record being fed to the pipeline again after a restart
        self._in_flight: list[Span] = []  # spans on their way from the sampler into the uplink queue
        # A request's spans may fill the inbox up to the bound the governor planned for it, and no further.
        self.ingest = OtlpIngest(self._admit, self.inbox.has_room, door=self.inbox,
                                 ceiling=lambda: self.governor.planned.get("inbox", self.inbox.max_bytes),
                                 durable=self.accepted)
        # What both OTLP receivers hold of requests not yet handed over, one bound (the governor's "receiver" part).
        self.requests = RequestBudget(1 << 20)
        self.mqtt: MqttSdkSource | None = None
        if cfg.mqtt.enabled:
            self.mqtt = MqttSdkSource(cfg.mqtt, cfg.node.id, self._admit, host_name=socket.gethostname(),
                                      has_room=self.inbox.has_room, room_changed=self.inbox.taken)
        self.http: OtlpHttpReceiver | None = None
        # Receivers are imported only when enabled (each costs some RSS on a node whose budget may be 48 MiB).
        if cfg.otlp.http_listen:
            from ..sources.otlp_http import OtlpHttpReceiver
            self.http = OtlpHttpReceiver(self.ingest, *cfg.otlp.http_listen, cfg.otlp.max_request,
                                         budget=self.requests)
        self.grpc: OtlpGrpcReceiver | None = None
        if cfg.otlp.grpc_listen:
            from ..sources.otlp_grpc import OtlpGrpcReceiver
            self.grpc = OtlpGrpcReceiver(self.ingest, *cfg.otlp.grpc_listen, cfg.otlp.max_request,
                                         budget=self.requests)
            self.inbox.on_taken(self.grpc.server.poke)
        self.kernel = KernelStatus()
        self.ebpf: EbpfSource | None = None
        self.fleet: FleetNode | None = None  # with fleet.enabled, made at start
        self.started = asyncio.Event()
        self.governor = self.govern(MemoryGovernor(cfg.memory.limit, cfg.memory.baseline, cfg.memory.check_interval,
                                                   keep_floor=cfg.memory.keep_floor))
        self.metrics_http: MetricsEndpoint | None = None
        if cfg.metrics.listen:
            self.metrics_http = MetricsEndpoint(self.metrics, *cfg.metrics.listen)
        self._metrics_seq = 0
        self.supervisor: Supervisor | None = None  # made by run()
        self._recovered = 0  # records found in the accepted log at start

    def govern(self, governor: MemoryGovernor) -> MemoryGovernor:
        """Put this agent's buffers under `governor`, each with its share of the headroom; returns it."""
        g = governor
        g.keep = self.sampler
        g.register("inbox", self.inbox, SHARES["inbox"], bound=self.inbox.max_bytes, floor=MIN_INBOX, backlog_at=0.5)
        g.bound("assembler", self.assembler.held_budget, SHARES["assembler"], bound=self.assembler.max_bytes,
                elastic=True)
        g.register("index", self.assembler.index_budget, SHARES["index"], bound=self.assembler.max_index_bytes)
        # What stitching remembers of SDK-started and moved traces and of SDK processes: state, not spans.
        g.register_state("stitch_state", self.assembler.state_budget, SHARES["stitch_state"], bound=0,
                         floor=MIN_STATE // 2)
        tail = self.sampler.tail
        g.register("tail", self.sampler, SHARES["tail"], bound=tail.capacity, ceiling=lambda: tail.rules.buffer_bytes)
        # The sampler's decision of each recent trace: not spans, so not the sampling lever; shrunk only while the span
        # buffers are the cause, as they are (a forgotten trace's later spans are decided again, counted): with the
        # pressure elsewhere, forgetting its ~1 MiB would split traces and free little.
        decisions = self.sampler.decisions
        g.bound("decisions", decisions, SHARES["decisions"], bound=decisions.ceiling, ceiling=lambda: decisions.ceiling,
                elastic=True, spans=False, shrink_elsewhere=False)
        # Spans past the sampler are kept: the uplink queue refuses at the door what does not fit, never drops.
        g.bound("uplink", self.uplink, SHARES["uplink"], bound=self.uplink.queue_limit,
                ceiling=lambda: self.uplink.cfg.queue_max_bytes)
        # Format 3: the recent spans table sets are learned from (shrunk under pressure: learning only gets coarser),
        # and the table set in use.
        learner = self.uplink.learner
        g.bound("learning", learner.sample, SHARES["learning"], bound=learner.sample.max_bytes,
                ceiling=lambda: self.uplink.cfg.learn_memory, elastic=True)
        g.account("tables", learner)
        # Without a spool directory the messages of every table set a spooled batch names are held in memory.
        g.account("table_messages", self.uplink.tables)
        g.account("aggregator", self.aggregator)
        if self.grpc is not None or self.http is not None:
            # Requests still arriving, held back by flow control or TCP: unacknowledged, so never dropped.
            g.bound("receiver", self.requests, SHARES["receiver"], bound=self.requests.limit, backlog_at=1.0)
        return g

    def submit(self, spans: list[Span], source: Source) -> int:
        """Hand spans to the pipeline (what every source calls)."""
        return self._admit(spans, source)

    def _admit(self, spans: list[Span], source: Source) -> int:
        n = self.inbox.put(spans, source)
        if n < len(spans):
            # The inbox keeps a prefix; what it refused is lost to tracing but still counted in the RED metrics.
            self.aggregator.consume(spans[n:])
        return n

    async def _start_ebpf(self) -> None:
        mode = self.cfg.ebpf.enabled
        if mode == "off":
            self.kernel = KernelStatus("disabled", "sources.ebpf.enabled = false")
            return
        try:
            from ..sources.ebpf.source import EbpfSource
            self.ebpf = EbpfSource(self.cfg.ebpf, self._admit, own_pid=os.getpid())
            await self.ebpf.start()
            self.kernel = KernelStatus("running")
            log.info("kernel probes running")
            # The kernel samples per exchange with the threshold the agent applies, and counts what it holds
            # back into histograms with the agent's bounds, so both halves of the RED metrics agree.
            self.ebpf.set_red_sink(self.aggregator.bounds_ns, self.aggregator.consume_counts)
            self.sampler.on_threshold(self.ebpf.set_sample_threshold)
            # The builder's connections, threads and processes: state, not spans (sampling does not empty it).
            self.governor.register_state("kernel_state", self.ebpf.state, SHARES["kernel_state"], bound=0,
                                         floor=MIN_STATE)
        except ProbeUnavailable as e:
            self.kernel = KernelStatus("unavailable", e.reason, e.fix)
            if mode == "on":
                raise
            log.warning("kernel probes unavailable, running on SDK spans only: %s%s", e.reason,
                        f" (fix: {e.fix})" if e.fix else "")
        except ImportError as e:
            self.kernel = KernelStatus("unavailable", f"probe support not installed: {e}")
            if mode == "on":
                raise ProbeUnavailable(self.kernel.reason, "reinstall helix-edge with its BPF objects") from e
            log.warning("kernel probes unavailable: %s", self.kernel.reason)

    async def _pipeline(self) -> None:
        while True:
            try:
                spans = await asyncio.wait_for(self.inbox.get(), timeout=0.25)
            except asyncio.TimeoutError:
                spans = []  # the assembler still releases spans whose window has passed
            kept = self._process(spans)
            if kept:
                # Waits while the uplink cannot keep more (spool or disk full): the inbox fills meanwhile and the
                # receivers answer busy, so nothing is acknowledged that would then be dropped.
                self._in_flight = kept
                await self.uplink.put(kept)
                self._in_flight = []

    def _oldest_logged(self) -> int | None:
        """The lowest accepted-log record any span in the pipeline came in (None: none is held)."""
        if not self.uplink.spool.durable:
            return 0  # batches in memory only: the log is the one copy on disk, so it keeps everything
        oldest = self._replaying
        for spans in (self.inbox.spans(), self._in_flight, self.assembler.held_spans(), self.uplink.held_spans()):
            for s in spans:
                n = s.logged
                if n and (oldest is None or n < oldest):
                    oldest = n
        return oldest

    async def _replay(self, log_: AcceptedLog) -> None:
        """Feed requests logged before a crash to the pipeline again, as fast as the inbox takes them."""
        requests = spans_in = 0
        async for rec in log_.recovered():
            self._replaying = rec.number
            errors: list[str] = []
            try:
                spans = decode_logged(rec.kind, rec.body, errors)
            except Exception as e:  # noqa: BLE001 - a record the receiver took decodes again; if not, say so
                log.error("durable mode: log record %d does not decode (%s): skipped", rec.number, e)
                continue
            requests += 1
            for sp in spans:
                sp.logged = rec.number
            while spans:
                room, n = self.inbox.max_bytes - self.inbox.bytes, 0
                while n < len(spans) and spans[n].approx_size() <= room:
                    room -= spans[n].approx_size()
                    n += 1
                if n:
                    self.inbox.put(spans[:n], Source.SDK_OTLP)
                elif not self.inbox.bytes:
                    self._admit(spans[:1], Source.SDK_OTLP)  # larger than the whole inbox: refused and counted
                    n = 1
                spans_in += n
                spans = spans[n:]
                if spans:
                    await self.inbox.taken(0.5)
        self._replaying = None
        if requests:
            log.info("durable mode: %d logged request(s), %d spans, fed to the pipeline again", requests, spans_in)

    def _process(self, spans: list[Span], flush: bool = False) -> list[Span]:
        """Stitch, count and sample; returns the spans to send."""
        spans = self.assembler.process(spans, flush=flush)
        self.aggregator.consume(spans)  # RED metrics see all traffic, before sampling
        kept, _dropped = self.sampler.decide(spans)
        if flush:
            self.sampler.flush()
        return kept

    def metrics(self) -> list[Any]:
        """RED metrics per service and the agent's own health, as ResourceMetrics."""
        return [*self.aggregator.resource_metrics({"helix.node.id": self.cfg.node.id}), health_metrics(self)]

    def metric_batch(self) -> MetricBatch:
        """The metrics to send upstream now (cumulative since the agent started)."""
        self._metrics_seq += 1
        return MetricBatch(self.cfg.node.id, self._metrics_seq, self.aggregator.start_ns, time.time_ns(), self.metrics())

    async def _export_metrics(self) -> None:
        interval = self.cfg.metrics.export_interval
        if interval <= 0:
            return  # off
        while True:
            await asyncio.sleep(interval)
            self.uplink.submit_metrics(self.metric_batch())

    async def _start_receivers(self) -> None:
        for receiver, what, key in ((self.http, "OTLP/HTTP", "sources.otlp.http_listen"),
                                    (self.grpc, "OTLP/gRPC", "sources.otlp.grpc_listen")):
            if receiver is None:
                continue
            try:
                await receiver.start()
            except OSError as e:
                raise HelixError(f"cannot listen for {what} on {receiver.host}:{receiver.port}: {e.strerror or e} "
                                 f"(another collector running? change {key})") from None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then stop taking input and flush what was accepted."""
        try:
            if self.accepted is not None:
                self._recovered = await self.accepted.open()  # before the doors open: a bad directory fails the start
            await self._start_ebpf()
            await self._start_receivers()
            if self.cfg.fleet.enabled:  # signed remote config: bad trusted keys fail the start
                try:
                    from ..fleet.node import FleetNode
                except ImportError as e:
                    raise HelixError(f"remote configuration (fleet.enabled) is not available in this build: {e}") from None
                self.fleet = FleetNode(self)
        except BaseException:
            # Whatever did start must not outlive a failed start (listening ports, attached probes).
            await self._stop_inputs()
            raise
        # Every part runs supervised: one that fails is restarted with backoff (edge/agent/supervisor.py), so no
        # input can stop the agent; only a stop signal or a FatalError does.
        sup = self.supervisor = Supervisor()
        if self.accepted is not None:
            accepted = self.accepted
            sup.start("accepted-log", lambda: accepted.run(self._oldest_logged))
            if self._recovered:
                self._recovered = 0
                self._replaying = 0  # until the replay's first record: nothing is retired
                sup.start("accepted-replay", lambda: self._replay(accepted))
        sup.start("pipeline", self._pipeline)
        sup.start("uplink", self.uplink.run)
        sup.start("status", self._report)
        sup.start("governor", self.governor.run)
        sup.start("metrics-export", self._export_metrics)
        if self.metrics_http is not None:
            try:
                await self.metrics_http.start()
            except OSError as e:
                log.error("cannot serve /metrics on %s:%d: %s (change metrics.listen, or \"\" to disable)",
                          self.metrics_http.host, self.metrics_http.port, e.strerror or e)
                self.metrics_http = None
        if self.mqtt is not None:
            sup.start("mqtt-source", self.mqtt.run)
        if self.ebpf is not None:
            sup.start("ebpf-source", self.ebpf.run)
        if self.fleet is not None:
            sup.start("fleet", self.fleet.run)
        sup.start("watchdog", sdnotify.watchdog_loop)
        self.started.set()
        sdnotify.notify(f"READY=1\nSTATUS=node {self.cfg.node.id}, kernel probes {self.kernel.state}")
        log.info("agent running node=%s kernel=%s uplink=%s", self.cfg.node.id, self.kernel.state,
                 self.cfg.uplink.transport)
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopper, sup.fatal], return_when=asyncio.FIRST_COMPLETED)
        await self._shutdown(sup.tasks)
        stopper.cancel()
        if sup.fatal.done():
            raise sup.fatal.exception()  # type: ignore[misc]

    async def _stop_inputs(self) -> None:
        if self.metrics_http is not None:
            await self.metrics_http.stop()
        for receiver in (self.http, self.grpc):
            if receiver is not None:
                await receiver.stop()
        if self.ebpf is not None:
            with contextlib.suppress(Exception):
                await self.ebpf.stop()

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        sdnotify.notify("STOPPING=1")
        if self.fleet is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.fleet.stop(), 2.0)
        await self._stop_inputs()
        for t in tasks:
            if t.get_name() not in ("uplink",):
                t.cancel()
        # Spans already accepted are pushed through the pipeline and flushed upstream before exit.
        self.uplink.submit(self._process(self.inbox.drain(), flush=True))
        if self.cfg.metrics.export_interval > 0:
            # The final counts, spooled before the uplink closes, so nothing counted is lost.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.uplink.submit_metrics(self.metric_batch())), 2.0)
        await self.uplink.close(timeout=5.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.accepted is not None:
            # Whatever reached the spool leaves the log; what did not is fed again at the next start.
            await self.accepted.close(self._oldest_logged() if self._replaying is None else self._replaying)
        log.info("agent stopped: %s", self.status_line())
        log.info("agent final status: %s", self.status())

    def status(self) -> dict[str, Any]:
        """Counters and states, for logs, `helix status` and tests."""
        return {
            "node": self.cfg.node.id,
            "kernel": {"state": self.kernel.state, "reason": self.kernel.reason, "fix": self.kernel.fix,
                       **(self.ebpf.status() if self.ebpf is not None else {})},
            "inbox": {"accepted": dict(self.inbox.stats.accepted), "dropped_full": dict(self.inbox.stats.dropped_full),
                      "bytes": self.inbox.bytes},
            "mqtt": None if self.mqtt is None else {"connected": self.mqtt.stats.connected,
                                                    "messages": self.mqtt.stats.messages,
                                                    "dropped": dict(self.mqtt.stats.dropped),
                                                    "missing_messages": self.mqtt.stats.missing_messages,
                                                    "device_restarts": self.mqtt.stats.device_restarts,
                                                    "device_cut": dict(self.mqtt.stats.device_cut)},
            "otlp": {"requests": self.ingest.stats.requests, "spans": self.ingest.stats.spans,
                     "dropped": dict(self.ingest.stats.dropped),
                     "grpc": None if self.grpc is None else {**_as_dict(self.grpc.server.stats),
                                                             "buffered": self.grpc.bytes},
                     "http": None if self.http is None or self.http.server is None else {
                         **_as_dict(self.http.server.stats), "connections": self.http.server.connections},
                     "requests": {"held": self.requests.bytes, "bound": self.requests.limit,
                                  **_as_dict(self.requests.stats)}},
            "assembler": {"duplicates": self.assembler.stats.duplicates, "held": len(self.assembler),
                          "released": self.assembler.stats.released, "links": dict(self.assembler.stats.links),
                          "evicted_early": self.assembler.stats.evicted_early,
                          "id_collisions": self.assembler.stats.id_collisions,
                          "waiting_for_sdk": self.assembler.deferred,
                          "state_bytes": self.assembler.state_budget.bytes,
                          **{k: getattr(self.assembler.stats, k) for k in _STITCHING}},
            "sampler": {"kept": self.sampler.stats.kept, "dropped": self.sampler.stats.dropped,
                        "kept_head": self.sampler.stats.kept_head, "kept_tail": self.sampler.stats.kept_tail,
                        "ratio": self.sampler.effective_ratio, "waiting_traces": len(self.sampler.tail),
                        "decisions": dict(self.sampler.tail.stats.decisions),
                        "decisions_forgotten": self.sampler.decisions.stats.forgotten_pressure},
            "red": {"series": len(self.aggregator), "spans": self.aggregator.stats.spans,
                    "overflow": self.aggregator.stats.overflow},
            "governor": self.governor.status(),
            "uplink": _as_dict(self.uplink.stats),
            "durable": None if self.accepted is None else _as_dict(self.accepted.stats),
            "tasks": {"restarts": dict(self.supervisor.stats.restarts) if self.supervisor else {},
                      "last_error": dict(self.supervisor.stats.last_error) if self.supervisor else {}},
            "fleet": None if self.fleet is None else {
                "config_version": self.fleet.config_version(), "config_state": self.fleet.config_state,
                "last_error": self.fleet.last_error, "restart_needed": self.fleet.restart_needed},
        }

    def status_line(self) -> str:
        """One key=value line summarising the counters."""
        st = self.status()
        return (f"accepted={sum(st['inbox']['accepted'].values())} "
                f"sampled_out={st['sampler']['dropped']} duplicates={st['assembler']['duplicates']} "
                f"uplink={st['uplink']} kernel={self.kernel.state}")

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(60)
            log.info("status %s", self.status_line())


def _as_dict(obj: Any) -> dict[str, Any]:
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields:
        return {k: getattr(obj, k) for k in fields}
    return dict(vars(obj)) if hasattr(obj, "__dict__") else {}
