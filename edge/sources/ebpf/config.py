"""The configuration section of the kernel probes ([sources.ebpf])."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...config.reader import Section, boolean, duration, setting, str_list, whole
from ...errors import ConfigError

__all__ = ["EbpfSourceConfig"]


def _enabled(value: Any, key: str) -> str:
    if value is True:
        return "on"
    if value is False:
        return "off"
    if value in ("auto", "on", "off"):
        return value  # type: ignore[no-any-return]
    raise ConfigError(key, f"must be true, false or \"auto\", got {value!r}")


def _pids(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of whole numbers, got {value!r}")
    pid = whole(1, 2**22)
    return tuple(pid(v, key) for v in value)


@dataclass(slots=True, frozen=True)
class EbpfSourceConfig(Section):
    """Kernel probes. `enabled = "auto"` loads them where the kernel allows and runs without them elsewhere."""

    enabled: str = setting("auto", _enabled)
    payload_bytes: int = setting(512, whole(16, 1024))
    slow_file_io: float = setting(0.010, duration(0.0, 60.0))
    pids: tuple[int, ...] = setting((), _pids)
    max_connections: int = setting(16384, whole(64, 1_000_000))
    response_timeout: float = setting(30.0, duration(0.1, 3600.0))
    message_gap: float = setting(0.005, duration(0.0, 10.0))
    # TLS plaintext through uprobes on OpenSSL (bpf/tls.bpf.h), attached per library file; processes are rescanned
    # this often for libraries loaded after they started (and files no process maps any more are detached): those
    # whose address-space size moved, every process on every sixth pass (rescan.py).
    tls: bool = setting(True, boolean)
    tls_rescan: float = setting(10.0, duration(1.0, 3600.0))
    # asyncio task contexts of CPython processes (bpf/pyctx.bpf.h): which request's handler made an event loop's call.
    # A uprobe pair on PyContext_CopyCurrent, rescanned with the TLS libraries; its cost: docs/benchmarks.md.
    python_contexts: bool = setting(True, boolean)
    # HTTP/2 request headers (gRPC metadata) kept on spans as http.request.header.<name> (rpc.grpc.request.metadata.
    # <name>): a request id to correlate with logs, say. Names are matched in lower case.
    capture_headers: tuple[str, ...] = setting((), str_list)
    # The tracing pipeline's own traffic is not traced: its MQTT topics and OTLP/uplink paths, over HTTP/1 and gRPC
    # (an SDK's exports to the agent and the gateway's to the backend would otherwise be spans that are exported).
    ignore_topic_prefixes: tuple[str, ...] = setting(("helix/",), str_list)
    ignore_http_paths: tuple[str, ...] = setting(
        ("/v1/traces", "/v1/metrics", "/v1/logs", "/v1/batches",
         "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
         "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
         "/opentelemetry.proto.collector.logs.v1.LogsService/Export"), str_list)
