"""The host's side of scripts/container-smoke.sh, run with the checkout's .venv: an OTLP sink, an app, a check.

  sink PORT JSONL            an OTLP/gRPC endpoint (the official opentelemetry-proto service) on 127.0.0.1:PORT that
                             appends every export request to JSONL as OTLP/JSON; runs until SIGTERM
  app ENDPOINT [URL]         an app instrumented with the OpenTelemetry SDK at its defaults (batch processor, OTLP/HTTP
                             exporter to ENDPOINT): one span "container-smoke", inside it `curl URL` carrying the span's
                             traceparent, so the kernel's spans of that request join the trace; prints the trace id
  wait JSONL TRACE SOURCES   waits (up to $WAIT_S, default 90 s) until spans of TRACE from each of SOURCES (comma-
                             separated helix.source values: sdk-otlp, ebpf) are in JSONL; prints what arrived
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def sink(port: int, jsonl: Path) -> None:
    """Serve OTLP/gRPC and OTLP/HTTP until SIGTERM."""
    from edge.demo.otlp_peer import OtlpPeer

    async def serve() -> None:
        peer = await OtlpPeer(json_path=jsonl, grpc_port=port).start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"sink: OTLP/gRPC on 127.0.0.1:{peer.grpc_port}", flush=True)
        await stop.wait()
        await peer.stop()

    asyncio.run(serve())


def app(endpoint: str, url: str | None) -> None:
    """Export one SDK span (and the curl inside it) the way an instrumented app does, then flush."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(resource=Resource.create({"service.name": "container-smoke"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    tracer = provider.get_tracer("container-smoke")
    with tracer.start_as_current_span("container-smoke") as span:
        if url:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            subprocess.run(["curl", "-sS", "-o", "/dev/null", "-H", f"traceparent: {carrier['traceparent']}", url],
                           check=True, timeout=30)
        trace_id = f"{span.get_span_context().trace_id:032x}"
    provider.shutdown()  # flushes the batch processor, as an app does at exit
    print(trace_id, flush=True)


def _spans(jsonl: Path) -> list[tuple[str, str, str]]:
    out = []
    if not jsonl.exists():
        return out
    for line in jsonl.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # a line being written
        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for sp in ss.get("spans", []):
                    attrs = {a["key"]: a.get("value", {}).get("stringValue", "") for a in sp.get("attributes", [])}
                    out.append((sp.get("traceId", ""), attrs.get("helix.source", ""), sp.get("name", "")))
    return out


def wait(jsonl: Path, trace_id: str, sources: list[str]) -> int:
    """0 when spans of `trace_id` from every source arrived before the deadline, 1 otherwise."""
    deadline = time.monotonic() + float(os.environ.get("WAIT_S", "90"))
    while True:
        mine = [s for s in _spans(jsonl) if s[0] == trace_id]
        seen = {s[1] for s in mine}
        if all(src in seen for src in sources) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for _, source, name in mine:
        print(f"  {source:9} {name}")
    missing = [src for src in sources if src not in seen]
    if missing:
        print(f"no span from {', '.join(missing)} of trace {trace_id} reached the sink", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Dispatch the subcommand."""
    if argv[:1] == ["sink"] and len(argv) == 3:
        sink(int(argv[1]), Path(argv[2]))
        return 0
    if argv[:1] == ["app"] and len(argv) in (2, 3):
        app(argv[1], argv[2] if len(argv) == 3 else None)
        return 0
    if argv[:1] == ["wait"] and len(argv) == 4:
        return wait(Path(argv[1]), argv[2], argv[3].split(","))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
