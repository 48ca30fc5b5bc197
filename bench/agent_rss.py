"""Agent memory at idle and while ingesting a steady span load, end to end through the gateway.

Runs a private Mosquitto, an OTLP peer, `helix gateway` and `helix run` as real processes (edge/demo/stack.py),
then offers spans at `--rate` per second for `--seconds`: half as OTLP/gRPC export requests (as an OpenTelemetry
SDK sends them), half as lightweight-SDK CBOR messages over MQTT. RSS of the agent process is read from /proc.

    python bench/agent_rss.py [--rate 5000] [--seconds 20] [--ebpf off|auto]

Last line: {"rss_idle_mib", "rss_load_mib", "rss_load_p50_mib", "spans_per_s", "offered_per_s", ...}
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import paho.mqtt.client as mqtt
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from edge.codec.otlp import request_from_spans  # noqa: E402
from edge.codec.sdk_cbor import encode_payload  # noqa: E402
from edge.demo.broker import free_port  # noqa: E402
from edge.demo.stack import Stack  # noqa: E402

OTLP_BATCH = 100
MQTT_BATCH = 50


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def sample_rss(pid: int, seconds: float, every: float = 0.25) -> list[float]:
    """RSS samples over a period."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(rss_mib(pid))
        await asyncio.sleep(every)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=5000, help="spans offered per second (default 5000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the load phase (default 20)")
    ap.add_argument("--ebpf", choices=["off", "auto"], default="off", help="load the kernel probes in the agent")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="helix-bench-rss-"))
    total = int(args.rate * args.seconds)
    print(f"preparing {total} spans ...", file=sys.stderr)
    spans = realistic_spans(total // 8 + 1, seed=11)[:total]
    half = len(spans) // 2
    otlp_reqs = [request_from_spans(spans[i:i + OTLP_BATCH], source_attribute=False).SerializeToString()
                 for i in range(0, half, OTLP_BATCH)]
    mqtt_msgs = [encode_payload(spans[i:i + MQTT_BATCH], {"service.name": "bench-device"})
                 for i in range(half, len(spans), MQTT_BATCH)]

    grpc_port, http_port = free_port(), free_port()
    async with Stack(work) as stack:
        broker, peer = stack.broker, stack.peer
        await stack.start_gateway()
        ebpf = "false" if args.ebpf == "off" else '"auto"'
        agent = await stack.start_agent(stack.agent_config(
            "bench-node", grpc_listen=f"127.0.0.1:{grpc_port}", http_listen=f"127.0.0.1:{http_port}",
            more=f"[sources.ebpf]\nenabled = {ebpf}\n"), ready=("sdk span source subscribed",))
        await asyncio.sleep(1.0)
        print("idle phase (5 s) ...", file=sys.stderr)
        idle = await sample_rss(agent.proc.pid, 5.0)

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        export = stub.Export  # raw bytes in, response ignored
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-load", protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        async def offer() -> None:
            # Spread the sends evenly over the load phase: OTLP and MQTT interleaved.
            n = max(len(otlp_reqs), len(mqtt_msgs))
            interval = args.seconds / n
            start = time.monotonic()
            for i in range(n):
                if i < len(otlp_reqs):
                    await export(ExportTraceServiceRequest.FromString(otlp_reqs[i]))
                if i < len(mqtt_msgs):
                    client.publish("helix/sdk/bench-device/spans", mqtt_msgs[i], qos=1)
                delay = start + (i + 1) * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

        print(f"load phase: {args.rate} spans/s for {args.seconds:.0f} s ...", file=sys.stderr)
        t0 = time.monotonic()
        offer_task = asyncio.create_task(offer())
        load = await sample_rss(agent.proc.pid, args.seconds)
        await offer_task
        offered_s = time.monotonic() - t0
        # Drain: wait until the peer has everything (or stops growing).
        last, still = -1, time.monotonic()
        while time.monotonic() - still < 3.0:
            n = sum(len(ss.spans) for req in peer.requests for rs in req.resource_spans for ss in rs.scope_spans)
            if n != last:
                last, still = n, time.monotonic()
            if n >= len(spans):
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - t0
        received = last
        client.loop_stop()
        await channel.close()

    result = {
        "rss_idle_mib": round(max(idle), 1),
        "rss_load_mib": round(max(load), 1),
        "rss_load_p50_mib": round(statistics.median(load), 1),
        "offered_per_s": round(len(spans) / offered_s),
        "spans_per_s": round(received / elapsed),
        "spans_offered": len(spans),
        "spans_received": received,
        "ebpf": args.ebpf,
    }
    print(f"agent RSS idle {result['rss_idle_mib']} MiB, under load peak {result['rss_load_mib']} MiB "
          f"(median {result['rss_load_p50_mib']}); offered {result['offered_per_s']}/s, "
          f"received {received}/{len(spans)} at the OTLP peer ({result['spans_per_s']}/s end to end)")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
