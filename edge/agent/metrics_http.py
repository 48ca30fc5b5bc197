"""The agent's own health as metrics, and a Prometheus `/metrics` endpoint on loopback.

`health_metrics(agent)` turns the agent's counters and gauges into the metric model (the same one the RED
metrics use), so they go upstream as OTLP metrics and are served here in the Prometheus text exposition
format 0.0.4, together with the RED metrics.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from ..net.http_server import HttpServer, Request, Response
from ..model import GAUGE, HISTOGRAM, SUM, Metric, ResourceMetrics, SumPoint
from ..model import Resource, Scope

__all__ = ["health_metrics", "render_prometheus", "MetricsEndpoint", "CONTENT_TYPE", "HEALTH_SCOPE"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEALTH_SCOPE = Scope("helix.agent", "1")


def _sum(name: str, desc: str, values: dict[str, int] | int, label: str = "", unit: str = "{span}") -> Metric:
    m = Metric(name, SUM, unit, desc, True)
    if isinstance(values, dict):
        m.points = [SumPoint({label: k}, int(v)) for k, v in sorted(values.items())]
    else:
        m.points = [SumPoint({}, int(values))]
    return m


def _gauge(name: str, desc: str, values: dict[str, float] | float, label: str = "", unit: str = "By") -> Metric:
    m = Metric(name, GAUGE, unit, desc, False)
    if isinstance(values, dict):
        m.points = [SumPoint({label: k}, v) for k, v in sorted(values.items())]
    else:
        m.points = [SumPoint({}, values)]
    return m


def _dropped_by_reason(st: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}

    def add(reason: str, n: Any) -> None:
        if isinstance(n, int) and not isinstance(n, bool):
            out[reason] = out.get(reason, 0) + n

    for src, n in st["inbox"]["dropped_full"].items():
        add("inbox_full", n)
    for reason, n in st["otlp"]["dropped"].items():
        if reason != "busy":  # requests pushed back for the SDK to retry: nothing was lost (see otlp.refused)
            add(f"otlp_{reason}", n)
    if st.get("mqtt"):
        for reason, n in st["mqtt"]["dropped"].items():
            add(f"mqtt_{reason}", n)
    gov = st.get("governor")
    # The sampler counts spans the governor pushed out of its tail buffer too; they are reported as such below.
    add("sampled_out", st["sampler"]["dropped"] - (gov["dropped"].get("tail_pressure", 0) if gov else 0))
    for k, v in st["uplink"].items():
        if k.startswith("dropped_"):
            add("uplink_" + k[len("dropped_"):], v)
    add("uplink_spool_evicted", st["uplink"].get("spool_evicted_spans", 0))
    if gov:
        for reason, n in gov["dropped"].items():
            if reason != "index_pressure":  # spans already sent on: only their late joins were given up
                add(reason, n)
    kernel = st.get("kernel") or {}
    add("ebpf_inbox_full", kernel.get("dropped_inbox_full", 0))
    return out


_UNFINISHED = ("incomplete", "end_estimated", "unmatched_responses", "pending_dropped")


def health_metrics(agent: Any) -> ResourceMetrics:
    """The agent's counters and gauges as one ResourceMetrics (resource: service.name = helix-agent)."""
    st = agent.status()
    metrics = [
        _sum("helix.agent.spans.accepted", "Spans taken into the pipeline, by source", st["inbox"]["accepted"],
             "source"),
        _sum("helix.agent.spans.dropped", "Spans dropped, by reason (sampled_out: not kept by sampling)",
             _dropped_by_reason(st), "reason"),
        _sum("helix.agent.spans.sampled", "Sampling decisions by outcome",
             {"kept_head": st["sampler"].get("kept_head", 0), "kept_tail": st["sampler"].get("kept_tail", 0),
              "dropped": st["sampler"]["dropped"]}, "decision"),
        _sum("helix.agent.uplink.spans.sent", "Spans acknowledged by the uplink", st["uplink"].get("spans_sent", 0)),
        _sum("helix.agent.otlp.refused", "OTLP export requests answered 'busy, retry later' (nothing lost)",
             st["otlp"]["dropped"].get("busy", 0), unit="{request}"),
    ]
    grpc = st["otlp"].get("grpc")
    if grpc:
        metrics.append(_sum("helix.agent.otlp.grpc.events",
                            "OTLP/gRPC receiver: calls that waited for room, refused busy after waiting, malformed "
                            "connections, stalled calls reset, connections refused over the limit",
                            {k: grpc.get(k, 0) for k in ("waited", "refused_busy", "protocol_errors", "stalled_streams",
                                                         "refused_connections", "reclaimed_connections")},
                            "event", "{event}"))
    http = st["otlp"].get("http")
    if http:
        metrics.append(_sum("helix.agent.otlp.http.events",
                            "OTLP/HTTP receiver: requests answered busy for want of room, connections refused, slots "
                            "reclaimed from idle keep-alive, slow heads and bodies, and stalled requests",
                            {"busy": http.get("busy", 0), "refused_connections": http.get("refused_connections", 0),
                             **{f"reclaimed_{k}": v for k, v in (http.get("reclaimed") or {}).items()}},
                            "event", "{event}"))
    durable = st.get("durable")
    if durable:
        metrics.append(_sum("helix.agent.durable.log",
                            "Durable mode's accepted log: records written, commits (one fsync each), failed commits, "
                            "segments deleted once the uplink spool held their spans, records fed again at start",
                            {k: durable.get(k, 0) for k in ("records", "commits", "commit_failures",
                                                             "segments_retired", "recovered_records")},
                            "event", "{event}"))
        metrics.append(_gauge("helix.agent.durable.log.bytes", "Bytes of the accepted log on disk",
                              durable.get("bytes_on_disk", 0)))
    tasks = st.get("tasks") or {}
    if tasks.get("restarts"):
        metrics.append(_sum("helix.agent.task.restarts", "Parts of the agent restarted after they failed, by part",
                            tasks["restarts"], "task", "{restart}"))
    asm = st["assembler"]
    if "sdk_waits" in asm:
        metrics.append(_sum("helix.agent.stitching.sdk_waits",
                            "Kernel spans that waited for their process's SDK, by how the wait ended (ended: the SDK "
                            "span came or the SDK exported past them; expired: assembler.sdk_wait passed; forced: the "
                            "memory bound released them first)",
                            {"ended": asm["sdk_waits"] - asm["sdk_wait_expired"], "expired": asm["sdk_wait_expired"],
                             "forced": asm["sdk_wait_forced"]}, "outcome", "{span}"))
        metrics.append(_sum("helix.agent.stitching.sdk_traces",
                            "Traces an SDK started after a hop that dropped the context (born), spans moved under "
                            "the upstream trace keeping their own id as helix.trace.original_id (moved), SDK root "
                            "spans left unjoined because their request had left in another trace (unjoined)",
                            {k: asm[k] for k in ("born", "moved", "unjoined")}, "event", "{event}"))
    metrics.append(_sum("helix.agent.sampling.decisions.forgotten", "Traces whose keep/drop decision the memory "
                        "bound forgot under pressure (their later spans are decided again, possibly otherwise)",
                        st["sampler"].get("decisions_forgotten", 0), unit="{trace}"))
    decisions = st["sampler"].get("decisions")
    if decisions:
        metrics.append(_sum("helix.agent.tail.decisions", "Tail-sampling trace decisions, by rule or outcome",
                            decisions, "rule", "{trace}"))
    gov = st.get("governor")
    queue_bytes = dict(gov["bytes"]) if gov else {"inbox": st["inbox"]["bytes"]}
    metrics.append(_gauge("helix.agent.queue.bytes", "Bytes held by each queue and buffer", queue_bytes, "queue"))
    if gov:
        metrics += [
            _gauge("helix.agent.memory.rss", "Resident set size of the agent process", gov["rss"]),
            _gauge("helix.agent.memory.limit", "The configured memory budget (memory.limit)", gov["limit"]),
            _gauge("helix.agent.memory.pressure", "Memory in use as a fraction of the budget", gov["pressure"], unit="1"),
            _gauge("helix.agent.sampling.keep_probability", "The keep-probability applied now (sampler.ratio, lowered "
                   "under memory pressure)", st["sampler"]["ratio"], unit="1"),
            _sum("helix.agent.memory.actions", "Memory governor actions, by step (floor_held: the keep-probability "
                 "kept at memory.keep_floor because the memory in use is outside the span buffers)", gov["actions"],
                 "step", "{action}"),
            # Where the memory above the idle agent is: only what the span buffers hold goes when sampling keeps less.
            _gauge("helix.agent.memory.above_idle", "Memory in use above the idle agent, by where it is (span_buffers, "
                   "state: per connection, thread and process tables; elsewhere: heap no part accounts)",
                   {"span_buffers": gov["span_bytes"], "state": gov["accounted"] - gov["span_bytes"],
                    "elsewhere": gov["outside"]}, "where"),
        ]
        state = gov.get("state") or {}
        if state:
            # Live state (connections and exchanges in use) is evicted only past the budget: reason active or open.
            evicted = Metric("helix.agent.memory.state.evicted", SUM, "{entry}", "State entries evicted by the memory "
                             "bound, by part and reason (idle: unused, nothing open; active: in use, nothing open; "
                             "open: an exchange open; the last two only when the budget was exceeded)", True)
            evicted.points = [SumPoint({"part": part, "reason": r}, n) for part, st_ in sorted(state.items())
                              for r, n in sorted(st_["evicted"].items())]
            held = Metric("helix.agent.memory.state.bytes", GAUGE, "By", "State bytes by part: held, live (in use: "
                          "not evicted short of the budget) and its bound", False)
            held.points = [SumPoint({"part": part, "kind": k}, st_[key]) for part, st_ in sorted(state.items())
                           for k, key in (("held", "bytes"), ("live", "live_bytes"), ("bound", "bound"))]
            metrics += [evicted, held]
    mqtt = st.get("mqtt")
    if mqtt:
        metrics.append(_sum("helix.agent.mqtt.messages.missing",
                            "Device span messages that never arrived (gaps in the devices' sequence numbers)",
                            mqtt.get("missing_messages", 0), unit="{message}"))
        if mqtt.get("device_cut"):
            metrics.append(_sum("helix.agent.mqtt.device.cut", "What devices cut to fit their buffers, by kind",
                                mqtt["device_cut"], "kind", "{item}"))
    kernel = st.get("kernel") or {}
    metrics.append(_sum("helix.agent.kernel.lost_events", "Kernel records lost because the ring buffer was full",
                        int(kernel.get("lost_events", 0) or 0), unit="{event}"))
    builder = kernel.get("builder")
    if builder:
        # What a technician needs to tell "the probes saw it all" from "responses ended by timeout or unseen".
        metrics.append(_sum("helix.agent.kernel.exchanges.unfinished",
                            "Kernel-traced exchanges whose end was not seen, by reason (incomplete: no response; "
                            "end_estimated: the response's last bytes never came; unmatched_responses: no request; "
                            "pending_dropped: over the per-connection cap)",
                            {k: builder.get(k, 0) for k in _UNFINISHED}, "reason", "{exchange}"))
        metrics.append(_sum("helix.agent.kernel.messages.unparsed",
                            "Messages on traced connections no parser recognised (TLS, binary protocols)",
                            builder.get("unparsed", 0), unit="{message}"))
    programs = kernel.get("programs")
    if programs:
        # Cumulative since the probes loaded, advancing only while BPF run-time statistics are on: rate(run_time) /
        # rate(runs) is the mean kernel time of one run of a program.
        metrics.append(_sum("helix.agent.kernel.program.runs", "Runs of each probe program while BPF run-time "
                            "statistics were on (kernel.bpf_stats_enabled)",
                            {n: p["runs"] for n, p in programs.items()}, "program", "{run}"))
        run_time = Metric("helix.agent.kernel.program.run_time", SUM, "s", "Kernel time spent in each probe program "
                          "while BPF run-time statistics were on", True)
        run_time.points = [SumPoint({"program": n}, p["run_time_ns"] / 1e9) for n, p in sorted(programs.items())]
        metrics.append(run_time)
    return ResourceMetrics(Resource.of({"service.name": "helix-agent", "helix.node.id": st["node"]}), HEALTH_SCOPE,
                           metrics)


# ------------------------------------------------------------------------------------------------ Prometheus

def _prom_name(m: Metric) -> str:
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in m.name)
    if name[:1].isdigit():
        name = "_" + name
    if m.unit == "By" and not name.endswith("_bytes"):
        name += "_bytes"
    elif m.unit == "s" and not name.endswith("_seconds"):
        name += "_seconds"
    if m.kind == SUM and m.monotonic:
        name += "_total"
    return name


def _label_name(k: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in k)
    return "_" + out if out[:1].isdigit() or not out else out


def _escape(v: Any) -> str:
    s = str(v).lower() if isinstance(v, bool) else str(v)
    return s.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(attrs: dict[str, Any]) -> str:
    if not attrs:
        return ""
    return "{" + ",".join(f'{_label_name(k)}="{_escape(v)}"' for k, v in attrs.items()) + "}"


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render_prometheus(groups: Iterable[ResourceMetrics]) -> str:
    """Text exposition format 0.0.4; one HELP/TYPE block per metric name, resource attributes as labels."""
    families: dict[str, tuple[Metric, list[tuple[dict[str, Any], Any]]]] = {}
    for g in groups:
        res = {"service_name": g.resource.service_name}
        for m in g.metrics:
            name = _prom_name(m)
            fam = families.get(name)
            if fam is None:
                fam = families[name] = (m, [])
            for p in m.points:
                fam[1].append(({**res, **p.attributes}, p))
    lines: list[str] = []
    for name, (m, points) in families.items():
        kind = "histogram" if m.kind == HISTOGRAM else "counter" if m.kind == SUM and m.monotonic else "gauge"
        help_text = (m.description or m.name).replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for attrs, p in points:
            if kind == "histogram":
                base = name
                cum = 0
                for bound, n in zip(p.bounds, p.bucket_counts):
                    cum += n
                    lines.append(f"{base}_bucket{_labels({**attrs, 'le': _num(float(bound))})} {cum}")
                lines.append(f"{base}_bucket{_labels({**attrs, 'le': '+Inf'})} {p.count}")
                lines.append(f"{base}_sum{_labels(attrs)} {_num(float(p.sum))}")
                lines.append(f"{base}_count{_labels(attrs)} {p.count}")
            else:
                lines.append(f"{name}{_labels(attrs)} {_num(p.value)}")
    return "\n".join(lines) + "\n"


class MetricsEndpoint:
    """GET /metrics on `host:port` (loopback by default), rendering `collect()` on every scrape."""

    def __init__(self, collect: Callable[[], list[ResourceMetrics]], host: str = "127.0.0.1", port: int = 9464) -> None:
        self.collect = collect
        self.host = host
        self.port = port
        self.scrapes = 0
        self._runner: HttpServer | None = None

    async def start(self) -> None:
        """Listen (OSError when the address is taken)."""
        server = HttpServer(self.host, self.port, {("GET", "/metrics"): self._handle}, max_body=0, name="/metrics")
        await server.start()
        self._runner, self.port = server, server.port
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def _handle(self, request: Request) -> Response:
        self.scrapes += 1
        return Response(200, render_prometheus(self.collect()).encode(), CONTENT_TYPE)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.stop()
