"""`helix demo`: a local workload traced end to end, and the real parts it runs (broker, OTLP peer)."""
from __future__ import annotations

__all__: list[str] = []
