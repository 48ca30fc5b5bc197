"""What a traced operation costs a Python device: the Helix SDK against the OpenTelemetry Python SDK, same run.

Each trace is a root span with four attributes and two children. Helix: `edge.sdk.Tracer` on a connected paho
client (MQTT v5, network loop thread) publishing to a local Mosquitto, QoS 1, until every message is
acknowledged. OpenTelemetry: the SDK at its defaults (BatchSpanProcessor, 5 s delay; OTLP/gRPC exporter) sending
to a local OTLP receiver in another process, flushed by `shutdown()` at the end. Helix runs at its defaults (a
message per 128 spans or 0.5 s) and, for the record, publishing one message per trace (`max_delay=0`). Cost is the process's CPU time
(every thread: paho's loop, the batch processor's worker, encoding, gRPC) per span; rounds alternate and the
median is kept. RSS added by importing each SDK is measured in fresh interpreters.

    python bench/sdk_overhead.py [--traces 3000] [--rounds 5]

Last line: {"helix_us_per_span", "otel_us_per_span", "ratio", "helix_call_us_per_span", "otel_call_us_per_span",
"helix_per_root_us_per_span", "per_root_ratio", "helix_import_rss_mib", "of_which_paho_mib", "otel_import_rss_mib",
...}
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ATTRS = (("device.mode", "auto"), ("cycle", 17), ("setpoint", 21.5), ("manual", False))

_SINK = """
import asyncio, sys
from edge.demo.otlp_peer import OtlpPeer
async def main():
    peer = await OtlpPeer().start()
    print(peer.grpc_port, flush=True)
    loop = asyncio.get_running_loop()
    while (line := await loop.run_in_executor(None, sys.stdin.readline)):
        print(sum(len(ss.spans) for r in peer.requests for rs in r.resource_spans for ss in rs.scope_spans), flush=True)
    await peer.stop()
asyncio.run(main())
"""

_RSS = """
import sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
before = rss()
if sys.argv[1] == "helix":
    import paho.mqtt.client
    from edge.sdk import Tracer
elif sys.argv[1] == "paho":
    import paho.mqtt.client
else:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
print(rss() - before)
"""


def _cpu() -> float:
    return time.process_time()


def run_helix(port: int, traces: int, max_delay: float = 0.5) -> tuple[float, float]:
    """(CPU s, calling-thread wall s) for `traces` traces, until the broker acknowledged every message."""
    import paho.mqtt.client as mqtt

    from edge.model import SpanKind
    from edge.sdk import Tracer

    acked = threading.Semaphore(0)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{time.monotonic_ns()}",
                         protocol=mqtt.MQTTv5)
    client.on_publish = lambda *a: acked.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.3)
    tracer = Tracer(client, "bench-device", max_delay=max_delay)
    cpu0, wall0 = _cpu(), time.perf_counter()
    for _ in range(traces):
        with tracer.span("handleCommand", kind=SpanKind.CONSUMER) as root:
            for k, v in ATTRS:
                root.set_attribute(k, v)
            with tracer.span("readSensor"):
                pass
            with tracer.span("actuateValve"):
                pass
    wall = time.perf_counter() - wall0
    tracer.flush()  # what is still waiting for max_delay
    for _ in range(tracer.published_messages):
        if not acked.acquire(timeout=30):
            raise RuntimeError("the broker did not acknowledge every span message")
    cpu = _cpu() - cpu0
    client.loop_stop()
    client.disconnect()
    assert tracer.publish_failures == 0 and (max_delay > 0 or tracer.published_messages == traces)
    return cpu, wall


def run_otel(grpc_port: int, traces: int) -> tuple[float, float]:
    """(CPU s, calling-thread wall s) for `traces` traces, including the flush at shutdown."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    provider = TracerProvider(resource=Resource.create({"service.name": "bench-device"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True)))
    tracer = provider.get_tracer("bench")
    cpu0, wall0 = _cpu(), time.perf_counter()
    for _ in range(traces):
        with tracer.start_as_current_span("handleCommand", kind=SpanKind.CONSUMER) as root:
            for k, v in ATTRS:
                root.set_attribute(k, v)
            with tracer.start_as_current_span("readSensor"):
                pass
            with tracer.start_as_current_span("actuateValve"):
                pass
    wall = time.perf_counter() - wall0
    provider.shutdown()
    return _cpu() - cpu0, wall


def import_rss(which: str) -> int:
    """Bytes of RSS a fresh interpreter gains by importing one SDK (median of three)."""
    root = str(Path(__file__).resolve().parent.parent)
    got = [int(subprocess.run([sys.executable, "-c", _RSS, which], capture_output=True, text=True, check=True,
                              cwd=root).stdout) for _ in range(3)]
    return int(statistics.median(got))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from edge.demo.broker import Mosquitto

    spans = 3 * args.traces
    results: dict[str, list[tuple[float, float]]] = {"helix": [], "otel": [], "helix_per_root": []}
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(workdir=Path(tmp)) as broker:
        sink = subprocess.Popen([sys.executable, "-c", _SINK], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, cwd=str(Path(__file__).resolve().parent.parent))
        try:
            grpc_port = int(sink.stdout.readline())
            run_helix(broker.port, 200), run_otel(grpc_port, 200)  # warm up: imports, connections
            for r in range(args.rounds):
                for name in (("helix", "otel", "helix_per_root") if r % 2 == 0 else ("helix_per_root", "otel", "helix")):
                    if name == "otel":
                        results[name].append(run_otel(grpc_port, args.traces))
                    else:
                        results[name].append(run_helix(broker.port, args.traces, 0.5 if name == "helix" else 0.0))
                    cpu, wall = results[name][-1]
                    print(f"round {r} {name:14s}: {cpu / spans * 1e6:6.1f} us CPU per span, "
                          f"{wall / spans * 1e6:6.1f} us in the calling thread", file=sys.stderr)
            sink.stdin.write("count\n")
            sink.stdin.flush()
            otel_received = int(sink.stdout.readline())
        finally:
            sink.stdin.close()
            sink.wait(10)
    med = {k: (statistics.median(c for c, _ in v) / spans * 1e6, statistics.median(w for _, w in v) / spans * 1e6)
           for k, v in results.items()}
    helix_rss, paho_rss, otel_rss = import_rss("helix"), import_rss("paho"), import_rss("otel")
    print(json.dumps({
        "traces_per_round": args.traces, "spans_per_round": spans, "rounds": args.rounds,
        "helix_us_per_span": round(med["helix"][0], 2), "otel_us_per_span": round(med["otel"][0], 2),
        "ratio": round(med["otel"][0] / med["helix"][0], 2),
        "helix_call_us_per_span": round(med["helix"][1], 2), "otel_call_us_per_span": round(med["otel"][1], 2),
        "helix_per_root_us_per_span": round(med["helix_per_root"][0], 2),
        "per_root_ratio": round(med["otel"][0] / med["helix_per_root"][0], 2),
        "otel_spans_received": otel_received, "otel_spans_sent": 3 * 200 + spans * args.rounds,
        "helix_import_rss_mib": round(helix_rss / 2**20, 1), "of_which_paho_mib": round(paho_rss / 2**20, 1),
        "otel_import_rss_mib": round(otel_rss / 2**20, 1),
    }))


if __name__ == "__main__":
    main()
