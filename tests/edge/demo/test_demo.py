"""`helix demo` as a newcomer runs it: a real subprocess, real broker, gateway, agent and workload."""
from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from edge.codec.otlp import parse_request_json, spans_from_request


def test_demo_prints_mixed_traces_and_writes_otlp_json(tmp_path: Path) -> None:
    out = tmp_path / "otlp.jsonl"
    proc = subprocess.run([sys.executable, "-m", "edge", "demo", "--duration", "8", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "└─ createOrder  [sdk-otlp · order-service]" in proc.stdout
    assert "handleCommand  [sdk-mqtt · sensor-gw-7]" in proc.stdout
    assert f"OTLP JSON lines: {out}" in proc.stderr
    spans = [s for line in out.read_text().splitlines() for s in spans_from_request(parse_request_json(line.encode()))]
    traces: dict[bytes, set[str]] = defaultdict(set)
    for s in spans:
        traces[s.trace_id].add(str(s.attributes["helix.source"]))
    mixed = [t for t, sources in traces.items() if {"sdk-otlp", "sdk-mqtt"} <= sources]
    assert mixed, f"no trace mixes app and device spans: {dict(traces)}"
    by_id = {s.span_id: s for s in spans}
    for s in spans:
        if s.name == "handleCommand":
            parent = by_id[s.parent_span_id]
            assert parent.name.startswith("publish devices/") and parent.trace_id == s.trace_id
