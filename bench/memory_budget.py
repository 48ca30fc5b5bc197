"""Agent memory against its budget under steady load and a 10x burst, with RED metrics checked end to end.

Runs a private Mosquitto, an OTLP peer (traces and metrics), `helix gateway` and `helix run` as real processes
(edge/demo/stack.py).
The agent gets `memory.limit = --budget-mib`, head sampling at `--ratio` with the default tail rules, and
exports RED + health metrics upstream every 5 s. Load, from `bench/_workload.py` (SDK business spans and
kernel-shaped HTTP/DB spans, as the eBPF source would hand them over):

- steady: `--rate` spans/s, half as OTLP/gRPC export requests (100 spans each), half as lightweight-SDK CBOR
  messages over MQTT (50 spans each);
- burst: for `--burst-seconds` in the middle of the run, the OTLP/gRPC share rises so that the total offered is
  `--burst-factor` times the steady rate. The OTLP client behaves like an SDK: an UNAVAILABLE answer (agent busy)
  is retried after 100 ms; a request not taken within 30 s is given up and counted as `client_gave_up`.

Kernel spans come over the SDK channels rather than from real HTTP traffic through the probes: 5,000 traced
requests/s of real traffic would need a load generator and servers that do not fit next to the agent on 2 cores.
Each request's span ids are rewritten on every reuse of the pre-built pool, so no span is ever sent twice.

The RED tally is the bench's own count over every span the agent acknowledged (OTLP) or the broker took (MQTT);
`metrics_exact` compares it, per (service, span kind), with the last RED export that reached the OTLP peer
(requests, errors, histogram count and sum in ns).

    python bench/memory_budget.py [--minutes 10] [--rate 5000] [--budget-mib 44] [--arena N] [--no-grpc-receiver]

Last line: {"budget_mib", "rss_steady_mib", "rss_peak_mib", "offered_per_s", "kept", "dropped_by_reason",
"metrics_exact", ...}
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import grpc
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from edge.codec.otlp import request_from_spans  # noqa: E402
from edge.codec.otlp_metrics import metrics_from_request  # noqa: E402
from edge.codec.sdk_cbor import encode_payload  # noqa: E402
from edge.demo.broker import free_port  # noqa: E402
from edge.demo.otlp_peer import OtlpPeer  # noqa: E402
from edge.demo.stack import Stack  # noqa: E402
from edge.model import Span, SpanKind, StatusCode  # noqa: E402

OTLP_BATCH = 100
MQTT_BATCH = 50
POOL_SECONDS = 30  # the pool of pre-built requests covers this long at the steady rate (> assembler.memory)
_KINDS = {SpanKind.SERVER: "server", SpanKind.CLIENT: "client", SpanKind.PRODUCER: "producer",
          SpanKind.CONSUMER: "consumer"}
_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_M64 = (1 << 64) - 1
_M128 = (1 << 128) - 1

Tally = dict[tuple[str, str], list[int]]


def tally_of(spans: list[Span], service: str | None = None) -> Tally:
    """Requests, errors and summed duration (ns) per (service, kind): the workload's own count."""
    out: Tally = defaultdict(lambda: [0, 0, 0])
    for s in spans:
        kind = _KINDS.get(s.kind)
        if kind is None:
            continue
        row = out[(service or s.resource.service_name, kind)]
        row[0] += 1
        code = s.attributes.get("http.response.status_code")
        row[1] += s.status_code == StatusCode.ERROR or (isinstance(code, int) and code >= 500)
        row[2] += s.end_ns - s.start_ns
    return dict(out)


def add(into: Tally, t: Tally) -> None:
    for k, v in t.items():
        row = into.setdefault(k, [0, 0, 0])
        for i in range(3):
            row[i] += v[i]


class OtlpRequest:
    """A pre-built export request whose ids are rewritten on every use."""

    __slots__ = ("req", "ids", "tally", "uses", "n")

    def __init__(self, spans: list[Span]) -> None:
        self.req = request_from_spans(spans, source_attribute=False)
        self.ids = [(int.from_bytes(s.trace_id, "big"), int.from_bytes(s.span_id, "big"),
                     int.from_bytes(s.parent_span_id, "big") if s.parent_span_id else None)
                    for rs in self.req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        self.tally = tally_of(spans)
        self.uses = 0
        self.n = len(spans)

    def payload(self) -> bytes:
        self.uses += 1
        k = self.uses * 0x9E3779B97F4A7C15 & _M64
        k128 = (k << 64 | k) & _M128
        it = iter(self.ids)
        for rs in self.req.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    tid, sid, pid = next(it)
                    s.trace_id = (tid ^ k128).to_bytes(16, "big")
                    s.span_id = (sid ^ k).to_bytes(8, "big")
                    if pid is not None:
                        s.parent_span_id = (pid ^ k).to_bytes(8, "big")
        return self.req.SerializeToString()


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def queue_bytes_over_time(peer: OtlpPeer, node: str) -> list[tuple[int, dict[str, float]]]:
    """(time_ns, bytes per buffer) from every health export of `node`: where the steady memory goes."""
    out = []
    for req in peer.metric_requests:
        batch = metrics_from_request(req)
        for r in batch.resources:
            if r.resource.as_dict().get("helix.node.id") != node or r.resource.service_name != "helix-agent":
                continue
            for m in r.metrics:
                if m.name == "helix.agent.queue.bytes":
                    out.append((batch.time_ns, {str(p.attributes.get("queue")): p.value for p in m.points}))
    return out


def median_bytes(points: list[dict[str, float]]) -> dict[str, float]:
    """Median MiB per buffer over health exports."""
    return {k: round(statistics.median(q.get(k, 0) for q in points) / 2**20, 2)
            for k in sorted({k for q in points for k in q})}


def red_of_peer(peer: OtlpPeer, node: str) -> tuple[Tally, dict[str, dict[str, float]]]:
    """RED per (service, kind) from the newest metrics export of `node`, and its health metrics by name/label."""
    for req in reversed(peer.metric_requests):
        batch = metrics_from_request(req)
        health = [r for r in batch.resources if r.resource.as_dict().get("helix.node.id") == node
                  and r.resource.service_name == "helix-agent"]
        if not health:
            continue
        red: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for r in batch.resources:
            for m in r.metrics:
                if not m.name.startswith("helix.red."):
                    continue
                for p in m.points:
                    row = red[(r.resource.service_name, p.attributes.get("span.kind", "overflow"))]
                    if m.name == "helix.red.requests":
                        row[0] += p.value
                    elif m.name == "helix.red.errors":
                        row[1] += p.value
                    else:
                        row[3] += p.count
                        row[2] += round(p.sum * 1e9)
        out_health: dict[str, dict[str, float]] = {}
        for m in health[0].metrics:
            out_health[m.name] = {"/".join(str(v) for v in p.attributes.values()) or "": p.value for p in m.points}
        return dict(red), out_health
    return {}, {}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the load phase (default 10)")
    ap.add_argument("--rate", type=int, default=5000, help="steady spans offered per second (default 5000)")
    ap.add_argument("--burst-factor", type=float, default=10.0, help="burst rate as a multiple of --rate")
    ap.add_argument("--burst-seconds", type=float, default=10.0, help="length of the burst (default 10)")
    ap.add_argument("--budget-mib", type=int, default=44,
                    help="memory.limit of the agent in MiB (default 44, the agent's own default)")
    ap.add_argument("--ratio", type=float, default=0.1, help="head sampling ratio (default 0.1)")
    ap.add_argument("--arena", type=int, default=0,
                    help="MALLOC_ARENA_MAX for the agent; 0 (default) leaves it to the agent, which caps glibc at 2")
    ap.add_argument("--window", default="2s", help="assembler.window (and .memory) of the agent (default 2s)")
    ap.add_argument("--no-grpc-receiver", action="store_true",
                    help="send the OTLP share over OTLP/HTTP and turn the agent's gRPC receiver off")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="helix-bench-mem-"))
    half = args.rate / 2
    n_otlp = max(1, int(half * POOL_SECONDS / OTLP_BATCH))
    n_mqtt = max(1, int(half * POOL_SECONDS / MQTT_BATCH))
    print(f"preparing {n_otlp} OTLP requests and {n_mqtt} MQTT messages ...", file=sys.stderr)
    need = n_otlp * OTLP_BATCH + n_mqtt * MQTT_BATCH
    spans = realistic_spans(need // 11 + 1, seed=5)[:need]
    otlp_pool = [OtlpRequest(spans[i * OTLP_BATCH:(i + 1) * OTLP_BATCH]) for i in range(n_otlp)]
    base = n_otlp * OTLP_BATCH
    mqtt_pool = []
    for i in range(n_mqtt):
        chunk = spans[base + i * MQTT_BATCH: base + (i + 1) * MQTT_BATCH]
        mqtt_pool.append((encode_payload(chunk, {"service.name": "bench-device"}), tally_of(chunk, "bench-device"),
                          len(chunk)))
    del spans

    grpc_port, http_port = free_port(), free_port()
    node = "bench-mem"
    env = dict(os.environ)
    if args.arena:
        env["MALLOC_ARENA_MAX"] = str(args.arena)
    offered = {"steady": 0, "burst": 0}
    delivered: Tally = {}
    client_stats = {"busy_retries": 0, "client_gave_up": 0, "mqtt_published": 0}
    samples: list[tuple[float, float, str]] = []
    # The broker holds the backlog while the agent pushes back (it acknowledges a message once its spans fit).
    async with Stack(work, broker_conf="max_queued_messages 100000\n") as stack:
        broker, peer = stack.broker, stack.peer
        await stack.start_gateway()
        agent = await stack.start_agent(stack.agent_config(
            node, grpc_listen="" if args.no_grpc_receiver else f"127.0.0.1:{grpc_port}",
            http_listen=f"127.0.0.1:{http_port}", more=f"""
[sources.ebpf]
enabled = false
[assembler]
window = "{args.window}"
memory = "{args.window}"
[sampler]
ratio = {args.ratio}
[memory]
limit = "{args.budget_mib}MiB"
[metrics]
listen = ""
export_interval = "5s"
"""), ready=("sdk span source subscribed",), env=env)
        pid = agent.proc.pid
        await asyncio.sleep(1.0)
        idle = [rss_mib(pid)]
        for _ in range(12):
            await asyncio.sleep(0.25)
            idle.append(rss_mib(pid))

        if args.no_grpc_receiver:
            import aiohttp
            session = aiohttp.ClientSession()
            url = f"http://127.0.0.1:{http_port}/v1/traces"

            async def send(payload: bytes) -> bool:
                async with session.post(url, data=payload,
                                        headers={"Content-Type": "application/x-protobuf"}) as resp:
                    await resp.read()
                    return resp.status == 200
        else:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
            export = channel.unary_unary(_EXPORT, request_serializer=None, response_deserializer=None)

            async def send(payload: bytes) -> bool:
                try:
                    await export(payload, timeout=10)
                    return True
                except grpc.aio.AioRpcError as e:
                    if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                        return False
                    raise

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-load", protocol=mqtt.MQTTv5)
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()

        in_flight = asyncio.Semaphore(64)
        pending: set[asyncio.Task[None]] = set()

        async def offer_otlp(req: OtlpRequest) -> None:
            payload = req.payload()
            give_up = time.monotonic() + 30.0
            async with in_flight:
                while True:
                    if await send(payload):
                        add(delivered, req.tally)
                        return
                    client_stats["busy_retries"] += 1
                    if time.monotonic() > give_up:
                        client_stats["client_gave_up"] += req.n
                        return
                    await asyncio.sleep(0.1)

        total_s = args.minutes * 60
        burst_start = max(0.0, total_s / 2 - args.burst_seconds / 2)
        burst_end = burst_start + args.burst_seconds
        print(f"load: {args.rate} spans/s for {total_s:.0f} s, burst x{args.burst_factor:g} from "
              f"{burst_start:.0f} s to {burst_end:.0f} s; budget {args.budget_mib} MiB", file=sys.stderr)
        t0 = time.monotonic()
        t0_ns = time.time_ns()
        oi = mi = 0
        otlp_credit = mqtt_credit = 0.0
        last = t0
        next_sample = t0
        while True:
            now = time.monotonic()
            el = now - t0
            if el >= total_s:
                break
            dt, last = now - last, now
            phase = "burst" if burst_start <= el < burst_end else "steady"
            # In the burst, MQTT keeps its steady share and OTLP/gRPC carries the rest of the 10x.
            otlp_rate = half if phase == "steady" else args.rate * args.burst_factor - half
            otlp_credit += otlp_rate * dt / OTLP_BATCH
            mqtt_credit += half * dt / MQTT_BATCH
            while otlp_credit >= 1:
                otlp_credit -= 1
                req = otlp_pool[oi % len(otlp_pool)]
                oi += 1
                offered[phase] += req.n
                if len(pending) < 2000:
                    t = asyncio.create_task(offer_otlp(req))
                    pending.add(t)
                    t.add_done_callback(pending.discard)
                else:  # the SDK's own queue is full: it drops, as an SDK's batch processor does
                    client_stats["client_gave_up"] += req.n
            while mqtt_credit >= 1:
                mqtt_credit -= 1
                payload, tally, n = mqtt_pool[mi % len(mqtt_pool)]
                mi += 1
                offered[phase] += n
                info = client.publish("helix/sdk/bench-device/spans", payload, qos=1)
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    add(delivered, tally)
                    client_stats["mqtt_published"] += n
                else:
                    client_stats["client_gave_up"] += n
            if now >= next_sample:
                samples.append((el, rss_mib(pid), phase))
                next_sample = now + 0.25
            await asyncio.sleep(0.02)
        print("load done; draining ...", file=sys.stderr)
        drain_end = time.monotonic() + 60
        while pending and time.monotonic() < drain_end:
            samples.append((time.monotonic() - t0, rss_mib(pid), "drain"))
            await asyncio.sleep(0.25)
        await asyncio.sleep(3.0)
        client.loop_stop()
        client.disconnect()
        if args.no_grpc_receiver:
            await session.close()
        else:
            await channel.close()
        # The agent sends its final counts on the way out.
        await stack.stop(agent, timeout=60)
        end = time.monotonic() + 30
        last_n, still = -1, time.monotonic()
        while time.monotonic() < end and time.monotonic() - still < 4.0:
            if len(peer.metric_requests) != last_n:
                last_n, still = len(peer.metric_requests), time.monotonic()
            await asyncio.sleep(0.2)

    red, health = red_of_peer(peer, node)
    want = {k: [v[0], v[1], v[2], v[0]] for k, v in delivered.items()}
    exact = bool(red) and red == want
    dropped = {k: int(v) for k, v in health.get("helix.agent.spans.dropped", {}).items() if v}
    if client_stats["client_gave_up"]:
        dropped["client_gave_up"] = client_stats["client_gave_up"]
    sampled = health.get("helix.agent.spans.sampled", {})
    steady = [r for t, r, ph in samples if ph == "steady" and t > 10]
    # Median bytes each buffer reported at steady load, before the burst and after it has drained.
    queues = [((t - t0_ns) / 1e9, q) for t, q in queue_bytes_over_time(peer, node)]
    buffers = {"before_burst": median_bytes([q for t, q in queues if 10 < t < burst_start]),
               "after_burst": median_bytes([q for t, q in queues if burst_end + 30 < t < total_s])}
    burst = [r for t, r, ph in samples if ph == "burst"]
    result = {
        "budget_mib": args.budget_mib,
        "rss_idle_mib": round(max(idle), 1),
        "rss_steady_mib": round(statistics.median(steady), 1) if steady else None,
        "rss_steady_p99_mib": round(statistics.quantiles(steady, n=100)[98], 1) if len(steady) > 1 else None,
        "buffers_steady_mib": buffers,
        "rss_peak_mib": round(max(r for _, r, _ in samples), 1),
        "rss_peak_at_s": round(max(samples, key=lambda x: x[1])[0], 1),  # seconds into the load
        "rss_burst_peak_mib": round(max(burst), 1) if burst else None,
        "offered_per_s": round(offered["steady"] / max(1e-9, total_s - args.burst_seconds)),
        "burst_offered_per_s": round(offered["burst"] / args.burst_seconds) if args.burst_seconds else 0,
        "kept": int(sampled.get("kept_head", 0) + sampled.get("kept_tail", 0)),
        "kept_head": int(sampled.get("kept_head", 0)),
        "kept_tail": int(sampled.get("kept_tail", 0)),
        "dropped_by_reason": dropped,
        "metrics_exact": exact,
        "red_requests": sum(v[0] for v in red.values()),
        "tally_requests": sum(v[0] for v in want.values()),
        "spans_at_peer": len(peer.spans()),
        "governor_actions": {k: int(v) for k, v in health.get("helix.agent.memory.actions", {}).items() if v},
        "busy_retries": client_stats["busy_retries"],
        "minutes": args.minutes,
        "arena": args.arena or "agent (2)",
        "assembler_window": args.window,
        "grpc_receiver": not args.no_grpc_receiver,
    }
    if not exact and red:
        diff = {f"{k[0]}/{k[1]}": {"red": red.get(k), "tally": want.get(k)} for k in set(red) | set(want)
                if red.get(k) != want.get(k)}
        print(f"RED differs from the tally: {json.dumps(diff)[:2000]}", file=sys.stderr)
    timeline = [f"{t:.0f}s:{r:.0f}" for t, r, _ in samples[::20]]
    print("RSS MiB every 5 s: " + " ".join(timeline), file=sys.stderr)
    print(f"agent RSS idle {result['rss_idle_mib']} MiB, steady median {result['rss_steady_mib']} MiB, peak "
          f"{result['rss_peak_mib']} MiB (budget {args.budget_mib} MiB); offered {result['offered_per_s']}/s steady, "
          f"{result['burst_offered_per_s']}/s in the burst; RED exact: {exact}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    random.seed(1)
    asyncio.run(main())
