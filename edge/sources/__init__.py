"""Sources: where spans enter the agent (MQTT SDK spans, OTLP receivers, eBPF probes)."""
from __future__ import annotations

__all__: list[str] = []
