"""The uplink: the wire format both ends share (`wire`), the node side (`client`, `transports`, `spool`) and the
central gateway (`gateway`), which runs as its own process.

Nothing is imported here: a node loading its client does not pay for the gateway (grpc, the aiohttp server), and
the gateway does not load the node's client.
"""
from __future__ import annotations

__all__ = ["wire", "client", "spool", "gateway"]
