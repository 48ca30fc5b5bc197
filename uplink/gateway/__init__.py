"""The central gateway (`helix gateway`): uplink batches in over MQTT and HTTP, standard OTLP out.

`server` receives, decodes and deduplicates batches; `otlp_export` sends spans and metrics to the backend with the
OTLP specification's retry rules. A separate process from the node: nothing in edge/ imports this package.
"""
from __future__ import annotations

from .otlp_export import ExportResult, OtlpExporter
from .server import Gateway, GatewayStats, serve_gateway

__all__ = ["Gateway", "GatewayStats", "serve_gateway", "OtlpExporter", "ExportResult"]
