"""The agent's network plumbing: its MQTT client, TLS settings, the small HTTP/1.1 and gRPC servers, retry and
rate limits. Nothing is imported here, so that a module taking one of them does not load the others."""
from __future__ import annotations

__all__: list[str] = []
