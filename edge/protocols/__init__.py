"""Sans-I/O application-protocol parsers (HTTP/1.x, MQTT) over the payload snapshots the kernel probes capture."""
from __future__ import annotations

__all__ = ["http1", "mqtt"]
