"""The uplink: the batch format, the node's client, and the central gateway with its OTLP exporter.

The gateway side (grpc, aiohttp server) is imported on first use so that a node loading the client does not pay
for it in memory.
"""
from __future__ import annotations

from typing import Any

from .client import UplinkClient, UplinkStats
from .spool import DiskSpool, MemorySpool
from .wire import FORMAT_VERSION, MEDIA_TYPE, Batch, decode_batch, encode_batch

__all__ = [
    "FORMAT_VERSION",
    "MEDIA_TYPE",
    "Batch",
    "encode_batch",
    "decode_batch",
    "UplinkClient",
    "UplinkStats",
    "DiskSpool",
    "MemorySpool",
    "OtlpExporter",
    "ExportResult",
    "Gateway",
    "GatewayStats",
    "serve_gateway",
]

_LAZY = {"OtlpExporter": "exporter", "ExportResult": "exporter", "Gateway": "gateway", "GatewayStats": "gateway",
         "serve_gateway": "gateway"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'uplink' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
