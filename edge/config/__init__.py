"""Configuration: one TOML file, validated at start. Every field has a default, so a node runs with no file at all.

Each section is a dataclass built by `_Reader`, which names the exact key and the problem on any error and
refuses unknown keys (a typo must not silently fall back to a default on a device nobody can log into).
"""
from __future__ import annotations

import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = [
    "Config",
    "NodeConfig",
    "MqttSourceConfig",
    "OtlpSourceConfig",
    "EbpfSourceConfig",
    "AssemblerSectionConfig",
    "SamplerConfig",
    "UplinkConfig",
    "MemoryConfig",
    "MetricsConfig",
    "GatewayConfig",
    "FleetConfig",
    "BrokerAddress",
    "load_config",
    "parse_config",
    "parse_size",
    "parse_duration",
    "parse_listen",
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2,
               "GB": 1000**3, "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)\s*$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: Any, key: str) -> int:
    """Parse a byte size such as 48MiB, 256KiB or a bare integer number of bytes."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a size such as '48MiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(key, f"size must not be negative, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ConfigError(key, f"expected a size such as '48MiB', '256KiB' or a number of bytes, got {value!r}")


def parse_duration(value: Any, key: str) -> float:
    """Parse a duration such as 2s, 500ms or 5m into seconds; a bare number is seconds."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a duration such as '2s', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(key, f"duration must not be negative, got {value}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ConfigError(key, f"expected a duration such as '2s', '500ms' or '5m', got {value!r}")


def parse_listen(value: Any, key: str) -> tuple[str, int]:
    """Parse 'host:port' (IPv6 as '[::1]:4317') into (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(key, f"expected 'host:port' such as '127.0.0.1:4318', got {value!r}")
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError(key, f"expected 'host:port' with a port from 0 to 65535, got {value!r}")
    return host, int(port_s)


@dataclass(slots=True, frozen=True)
class BrokerAddress:
    """An MQTT broker given as mqtt://host:port or mqtts://host:port."""

    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, value: Any, key: str) -> BrokerAddress:
        """Parse a broker URL."""
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a broker URL such as 'mqtt://127.0.0.1:1883', got {value!r}")
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(key, f"expected a broker URL such as 'mqtt://127.0.0.1:1883' or 'mqtts://host:8883', got {value!r}")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise ConfigError(key, f"the port in {value!r} is not a number from 0 to 65535") from None
        return cls(parts.hostname, port, parts.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class _Reader:
    """Reads one TOML table, tracking which keys were used so that leftovers are reported as unknown."""

    def __init__(self, table: Any, prefix: str) -> None:
        if not isinstance(table, dict):
            raise ConfigError(prefix, f"expected a table ([{prefix}]), got {type(table).__name__}")
        self.table = table
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, default: Any, conv: Callable[[Any, str], Any]) -> Any:
        self.used.add(name)
        if name not in self.table:
            return default
        return conv(self.table[name], self.key(name))

    def sub(self, name: str) -> _Reader:
        self.used.add(name)
        return _Reader(self.table.get(name, {}), self.key(name))

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key (check the spelling; see `helix check-config --help`)")


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {type(value).__name__} {value!r}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def _int_in(lo: int, hi: int) -> Callable[[Any, str], int]:
    def conv(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected a whole number, got {value!r}")
        if not lo <= value <= hi:
            raise ConfigError(key, f"must be between {lo} and {hi}, got {value}")
        return value
    return conv


def _float_in(lo: float, hi: float) -> Callable[[Any, str], float]:
    def conv(value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if not lo <= value <= hi:
            raise ConfigError(key, f"must be between {lo} and {hi}, got {value}")
        return float(value)
    return conv


def _one_of(*choices: str) -> Callable[[Any, str], str]:
    def conv(value: Any, key: str) -> str:
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value
    return conv


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, f"expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def _str_map(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(key, f"expected a table of string values, got {value!r}")
    return dict(value)


def _sizes(lo: int, hi: int) -> Callable[[Any, str], int]:
    def conv(value: Any, key: str) -> int:
        n = parse_size(value, key)
        if not lo <= n <= hi:
            raise ConfigError(key, f"must be between {lo} and {hi} bytes, got {n}")
        return n
    return conv


def _durations(lo: float, hi: float) -> Callable[[Any, str], float]:
    def conv(value: Any, key: str) -> float:
        n = parse_duration(value, key)
        if not lo <= n <= hi:
            raise ConfigError(key, f"must be between {lo}s and {hi}s, got {n}s")
        return n
    return conv


def _listen_or_off(value: Any, key: str) -> tuple[str, int] | None:
    if value == "" or value is False:
        return None
    return parse_listen(value, key)


def _url(value: Any, key: str) -> str:
    s = _str(value, key)
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http:// or https:// URL, got {s!r}")
    return s


@dataclass(slots=True, frozen=True)
class NodeConfig:
    """Identity of this node in the fleet."""

    id: str = field(default_factory=socket.gethostname)
    group: str = "default"


@dataclass(slots=True, frozen=True)
class MqttSourceConfig:
    """Lightweight-SDK spans arriving as CBOR over MQTT."""

    enabled: bool = True
    broker: BrokerAddress = BrokerAddress("127.0.0.1", 1883)
    topics: tuple[str, ...] = ("helix/sdk/+/spans",)
    max_payload: int = 256 * 1024
    username: str = ""
    password: str = ""
    ca_file: str = ""  # TLS (mqtts://): CA bundle to trust; "" = the system store
    cert_file: str = ""  # TLS client certificate (PEM) for brokers that authenticate nodes by certificate
    key_file: str = ""


@dataclass(slots=True, frozen=True)
class OtlpSourceConfig:
    """OTLP receivers for local OpenTelemetry SDKs; loopback only unless configured otherwise."""

    http_listen: tuple[str, int] | None = ("127.0.0.1", 4318)
    grpc_listen: tuple[str, int] | None = ("127.0.0.1", 4317)
    max_request: int = 4 * 1024 * 1024


@dataclass(slots=True, frozen=True)
class EbpfSourceConfig:
    """Kernel probes. `enabled = "auto"` loads them where the kernel allows and runs without them elsewhere."""

    enabled: str = "auto"
    payload_bytes: int = 256
    slow_file_io: float = 0.010
    pids: tuple[int, ...] = ()
    max_connections: int = 16384
    response_timeout: float = 30.0
    message_gap: float = 0.005
    # The tracing pipeline's own traffic is not traced: its MQTT topics and OTLP/uplink HTTP paths.
    ignore_topic_prefixes: tuple[str, ...] = ("helix/",)
    ignore_http_paths: tuple[str, ...] = ("/v1/traces", "/v1/metrics", "/v1/logs", "/v1/batches")


@dataclass(slots=True, frozen=True)
class AssemblerSectionConfig:
    """How long spans wait for related spans, and how many may wait."""

    window: float = 2.0
    memory: float = 10.0
    max_spans: int = 50_000


@dataclass(slots=True, frozen=True)
class SamplerConfig:
    """Head sampling (the fraction of traces kept) and the tail rules that keep more."""

    ratio: float = 1.0
    tail: bool = True  # tail rules on; false = head sampling only
    decision_wait: float = 2.0  # a trace is decided this long after its last span arrived
    buffer: int = 4 * 1024 * 1024  # bytes of head-rejected spans held while their trace is undecided
    keep_errors: bool = True  # error status or HTTP 5xx
    latency_default: float = 0.0  # seconds; 0 = no latency rule for routes not in `latency`
    latency: dict[str, float] = field(default_factory=dict)  # route -> seconds
    new_route_traces: int = 5  # the first N traces of a route not seen before; 0 = off
    max_routes: int = 10_000  # routes remembered for the new-route rule


@dataclass(slots=True, frozen=True)
class UplinkConfig:
    """How batches leave the node."""

    transport: str = "mqtt"
    broker: BrokerAddress = BrokerAddress("127.0.0.1", 1883)
    topic: str = "helix/uplink/{node_id}"
    qos: int = 1
    url: str = "http://127.0.0.1:4380/v1/batches"
    token: str = ""
    batch_max_spans: int = 512
    batch_max_bytes: int = 256 * 1024
    batch_max_age: float = 2.0
    zstd_level: int = 3
    queue_max_bytes: int = 8 * 1024 * 1024
    username: str = ""
    password: str = ""
    ca_file: str = ""  # TLS (mqtts:// or https://): CA bundle to trust; "" = the system store
    cert_file: str = ""  # TLS client certificate (PEM): MQTT client auth, or mTLS to the gateway
    key_file: str = ""
    send_timeout: float = 10.0
    retry_max_backoff: float = 30.0
    spool_dir: str = "/var/lib/helix/spool"  # "" keeps batches in memory only (lost on a crash)
    spool_max_bytes: int = 64 * 1024 * 1024
    drain_rate: float = 20.0  # batches per second at most, so a spool backlog does not storm the gateway; 0 = no limit

    def topic_for(self, node_id: str) -> str:
        """The uplink topic with `{node_id}` filled in."""
        return self.topic.replace("{node_id}", node_id)


@dataclass(slots=True, frozen=True)
class MemoryConfig:
    """The hard memory budget every buffer accounts against."""

    # The default receivers idle near 26 MiB (31 with TLS); at 5,000 spans/s the buffers hold the agent near 40 MiB
    # and a 10x burst stays under the limit (docs/benchmarks.md, memory budget).
    limit: int = 44 * 1024 * 1024
    baseline: int = 0  # what the process holds with empty buffers (interpreter, libraries); 0 = RSS measured at start
    check_interval: float = 0.5  # how often the governor reads RSS and the buffers


@dataclass(slots=True, frozen=True)
class MetricsConfig:
    """RED metrics and the agent's own health: exported upstream and on a loopback Prometheus endpoint."""

    listen: tuple[str, int] | None = ("127.0.0.1", 9464)
    export_interval: float = 10.0  # how often metrics go upstream; 0 = not at all
    buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
    max_series: int = 2000  # RED series per node; further ones fold into one overflow series


@dataclass(slots=True, frozen=True)
class GatewayConfig:
    """The central gateway: where batches come from and where OTLP goes."""

    mqtt_enabled: bool = True
    broker: BrokerAddress = BrokerAddress("127.0.0.1", 1883)
    topic: str = "helix/uplink/+"
    share_group: str = ""
    http_listen: tuple[str, int] | None = ("127.0.0.1", 4380)
    token: str = ""
    export_protocol: str = "grpc"
    export_endpoint: str = "http://127.0.0.1:4317"
    export_headers: dict[str, str] = field(default_factory=dict)
    export_timeout: float = 10.0
    retry_max_elapsed: float = 300.0
    max_batch_bytes: int = 8 * 1024 * 1024
    username: str = ""
    password: str = ""
    ca_file: str = ""  # TLS (mqtts://): CA bundle to trust; "" = the system store
    cert_file: str = ""  # TLS client certificate (PEM) of this gateway
    key_file: str = ""
    dedup_window: int = 65536
    client_id: str = ""  # MQTT client id of this instance; "" = helix-gw-<hostname>. Must be unique per instance.
    session_expiry: float = 3600.0  # how long the broker keeps this instance's queue while it is away

    def mqtt_client_id(self) -> str:
        """The fixed MQTT client id, so a restarted instance resumes its persistent session."""
        return self.client_id or f"helix-gw-{socket.gethostname().split('.')[0] or 'gateway'}"

    def subscription(self) -> str:
        """The MQTT subscription, as a shared subscription when a group is set."""
        return f"$share/{self.share_group}/{self.topic}" if self.share_group else self.topic


@dataclass(slots=True, frozen=True)
class FleetConfig:
    """Remote configuration: signed documents on retained MQTT topics (docs/fleet.md)."""

    enabled: bool = False
    broker: BrokerAddress = BrokerAddress("127.0.0.1", 1883)
    username: str = ""
    password: str = ""
    ca_file: str = ""
    cert_file: str = ""  # per-node client certificate, CN = node id (the broker's ACLs key on it)
    key_file: str = ""
    trusted_keys: tuple[str, ...] = ()  # operator Ed25519 public keys: file paths or base64 of the 32 raw bytes
    grace: float = 60.0  # after a change of uplink target, roll back unless the uplink is reached within this
    status_interval: float = 30.0  # how often health goes to helix/status/<node-id>
    state_dir: str = "/var/lib/helix/fleet"  # highest versions seen, so a replayed older document is refused; "" = memory
    max_document: int = 256 * 1024


@dataclass(slots=True, frozen=True)
class Config:
    """The whole configuration of a node (and of a gateway, which reads only `[gateway]`)."""

    node: NodeConfig = field(default_factory=NodeConfig)
    log_level: str = "info"
    mqtt: MqttSourceConfig = field(default_factory=MqttSourceConfig)
    otlp: OtlpSourceConfig = field(default_factory=OtlpSourceConfig)
    ebpf: EbpfSourceConfig = field(default_factory=EbpfSourceConfig)
    assembler: AssemblerSectionConfig = field(default_factory=AssemblerSectionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)

    def agent_may_use_tls(self) -> bool:
        """Whether the agent may open a TLS connection: now (mqtts://, https://) or after a remote config."""
        uplink = self.uplink.broker.tls if self.uplink.transport == "mqtt" else self.uplink.url.startswith("https:")
        return self.fleet.enabled or self.mqtt.broker.tls or uplink


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


def _node_id(value: Any, key: str) -> str:
    s = _str(value, key)
    if not _ID.match(s):
        raise ConfigError(key, f"must be 1-63 letters, digits, '.', '_' or '-' (it is used in MQTT topics), got {s!r}")
    return s


def _topic_filter(value: Any, key: str) -> str:
    s = _str(value, key)
    if not s or "#" in s[:-1] or any(("+" in level and level != "+") for level in s.split("/")):
        raise ConfigError(key, f"not a valid MQTT topic filter: {s!r}")
    return s


def _ebpf_enabled(value: Any, key: str) -> str:
    if value is True:
        return "on"
    if value is False:
        return "off"
    if value in ("auto", "on", "off"):
        return value
    raise ConfigError(key, f"must be true, false or \"auto\", got {value!r}")


# Slotted dataclasses hide class-level defaults behind slot descriptors, so defaults are read off instances.
_D_MQTT = MqttSourceConfig()
_D_OTLP = OtlpSourceConfig()
_D_EBPF = EbpfSourceConfig()
_D_UPLINK = UplinkConfig()
_D_MEMORY = MemoryConfig()
_D_SAMPLER = SamplerConfig()
_D_METRICS = MetricsConfig()
_D_GATEWAY = GatewayConfig()
_D_FLEET = FleetConfig()


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document into a Config."""
    top = _Reader(data, "")
    r = top.sub("node")
    node = NodeConfig(id=r.get("id", socket.gethostname().split(".")[0] or "node", _node_id),
                      group=r.get("group", "default", _node_id))
    r.finish()

    r = top.sub("log")
    log_level = r.get("level", "info", _one_of("debug", "info", "warning", "error"))
    r.finish()

    sources = top.sub("sources")
    r = sources.sub("mqtt")
    mqtt = MqttSourceConfig(
        enabled=r.get("enabled", True, _bool),
        broker=r.get("broker", _D_MQTT.broker, BrokerAddress.parse),
        topics=tuple(_topic_filter(t, r.key("topics")) for t in r.get("topics", _D_MQTT.topics, _str_list)),
        max_payload=r.get("max_payload", _D_MQTT.max_payload, _sizes(64, 256 * 1024 * 1024)),
        username=r.get("username", "", _str),
        password=r.get("password", "", _str),
        ca_file=r.get("ca_file", "", _str), cert_file=r.get("cert_file", "", _str), key_file=r.get("key_file", "", _str),
    )
    r.finish()
    r = sources.sub("otlp")
    otlp = OtlpSourceConfig(
        http_listen=r.get("http_listen", _D_OTLP.http_listen, _listen_or_off),
        grpc_listen=r.get("grpc_listen", _D_OTLP.grpc_listen, _listen_or_off),
        max_request=r.get("max_request", _D_OTLP.max_request, _sizes(1024, 64 * 1024 * 1024)),
    )
    r.finish()
    r = sources.sub("ebpf")
    ebpf = EbpfSourceConfig(
        enabled=r.get("enabled", "auto", _ebpf_enabled),
        payload_bytes=r.get("payload_bytes", 256, _int_in(16, 1024)),
        slow_file_io=r.get("slow_file_io", 0.010, _durations(0.0, 60.0)),
        pids=tuple(r.get("pids", [], _int_list(1, 2**22))),
        max_connections=r.get("max_connections", 16384, _int_in(64, 1_000_000)),
        response_timeout=r.get("response_timeout", 30.0, _durations(0.1, 3600.0)),
        message_gap=r.get("message_gap", 0.005, _durations(0.0, 10.0)),
        ignore_topic_prefixes=r.get("ignore_topic_prefixes", _D_EBPF.ignore_topic_prefixes, _str_list),
        ignore_http_paths=r.get("ignore_http_paths", _D_EBPF.ignore_http_paths, _str_list),
    )
    r.finish()
    sources.finish()

    r = top.sub("assembler")
    assembler = AssemblerSectionConfig(
        window=r.get("window", 2.0, _durations(0.0, 60.0)),
        memory=r.get("memory", 10.0, _durations(0.0, 600.0)),
        max_spans=r.get("max_spans", 50_000, _int_in(100, 10_000_000)),
    )
    if assembler.memory < assembler.window:
        raise ConfigError("assembler.memory", f"must be at least assembler.window ({assembler.window}s)")
    r.finish()

    r = top.sub("sampler")
    sampler = SamplerConfig(
        ratio=r.get("ratio", 1.0, _float_in(0.0, 1.0)),
        tail=r.get("tail", True, _bool),
        decision_wait=r.get("decision_wait", 2.0, _durations(0.0, 300.0)),
        buffer=r.get("buffer", _D_SAMPLER.buffer, _sizes(0, 1024**3)),
        keep_errors=r.get("keep_errors", True, _bool),
        latency_default=r.get("latency_default", 0.0, _durations(0.0, 3600.0)),
        latency=r.get("latency", {}, _route_durations),
        new_route_traces=r.get("new_route_traces", 5, _int_in(0, 1000)),
        max_routes=r.get("max_routes", 10_000, _int_in(0, 1_000_000)),
    )
    r.finish()

    r = top.sub("uplink")
    uplink = UplinkConfig(
        transport=r.get("transport", "mqtt", _one_of("mqtt", "http")),
        broker=r.get("broker", _D_UPLINK.broker, BrokerAddress.parse),
        topic=r.get("topic", _D_UPLINK.topic, _str),
        qos=r.get("qos", 1, _int_in(0, 1)),
        url=r.get("url", _D_UPLINK.url, _url),
        token=r.get("token", "", _str),
        batch_max_spans=r.get("batch_max_spans", 512, _int_in(1, 100_000)),
        batch_max_bytes=r.get("batch_max_bytes", _D_UPLINK.batch_max_bytes, _sizes(1024, 64 * 1024 * 1024)),
        batch_max_age=r.get("batch_max_age", 2.0, _durations(0.01, 3600.0)),
        zstd_level=r.get("zstd_level", 3, _int_in(1, 19)),
        queue_max_bytes=r.get("queue_max_bytes", _D_UPLINK.queue_max_bytes, _sizes(64 * 1024, 1024**3)),
        username=r.get("username", "", _str),
        password=r.get("password", "", _str),
        ca_file=r.get("ca_file", "", _str), cert_file=r.get("cert_file", "", _str), key_file=r.get("key_file", "", _str),
        send_timeout=r.get("send_timeout", 10.0, _durations(0.1, 300.0)),
        retry_max_backoff=r.get("retry_max_backoff", 30.0, _durations(0.01, 3600.0)),
        spool_dir=r.get("spool_dir", _D_UPLINK.spool_dir, _str),
        spool_max_bytes=r.get("spool_max_bytes", _D_UPLINK.spool_max_bytes, _sizes(64 * 1024, 1024**4)),
        drain_rate=r.get("drain_rate", 20.0, _float_in(0.0, 100_000.0)),
    )
    r.finish()

    r = top.sub("memory")
    memory = MemoryConfig(limit=r.get("limit", _D_MEMORY.limit, _sizes(8 * 1024 * 1024, 64 * 1024**3)),
                          baseline=r.get("baseline", _D_MEMORY.baseline, _sizes(0, 64 * 1024**3)),
                          check_interval=r.get("check_interval", 0.5, _durations(0.05, 60.0)))
    if memory.baseline and memory.baseline >= memory.limit:
        raise ConfigError("memory.baseline", f"must be below memory.limit ({memory.limit} bytes), got {memory.baseline}")
    r.finish()

    r = top.sub("metrics")
    metrics = MetricsConfig(
        listen=r.get("listen", _D_METRICS.listen, _listen_or_off),
        export_interval=r.get("export_interval", 10.0, _durations(0.0, 3600.0)),
        buckets=r.get("buckets", _D_METRICS.buckets, _buckets),
        max_series=r.get("max_series", 2000, _int_in(10, 1_000_000)),
    )
    r.finish()

    r = top.sub("gateway")
    gateway = GatewayConfig(
        mqtt_enabled=r.get("mqtt_enabled", True, _bool),
        broker=r.get("broker", _D_GATEWAY.broker, BrokerAddress.parse),
        topic=r.get("topic", _D_GATEWAY.topic, _topic_filter),
        share_group=r.get("share_group", "", _str),
        http_listen=r.get("http_listen", _D_GATEWAY.http_listen, _listen_or_off),
        token=r.get("token", "", _str),
        export_protocol=r.get("export_protocol", "grpc", _one_of("grpc", "http")),
        export_endpoint=r.get("export_endpoint", _D_GATEWAY.export_endpoint, _url),
        export_headers=r.get("export_headers", {}, _str_map),
        export_timeout=r.get("export_timeout", 10.0, _durations(0.1, 300.0)),
        retry_max_elapsed=r.get("retry_max_elapsed", 300.0, _durations(0.0, 86400.0)),
        max_batch_bytes=r.get("max_batch_bytes", _D_GATEWAY.max_batch_bytes, _sizes(1024, 256 * 1024 * 1024)),
        username=r.get("username", "", _str),
        password=r.get("password", "", _str),
        ca_file=r.get("ca_file", "", _str), cert_file=r.get("cert_file", "", _str), key_file=r.get("key_file", "", _str),
        dedup_window=r.get("dedup_window", 65536, _int_in(0, 10_000_000)),
        client_id=r.get("client_id", "", _str),
        session_expiry=r.get("session_expiry", 3600.0, _durations(0.0, 30 * 86400.0)),
    )
    r.finish()

    r = top.sub("fleet")
    fleet = FleetConfig(
        enabled=r.get("enabled", False, _bool),
        broker=r.get("broker", _D_FLEET.broker, BrokerAddress.parse),
        username=r.get("username", "", _str), password=r.get("password", "", _str),
        ca_file=r.get("ca_file", "", _str), cert_file=r.get("cert_file", "", _str), key_file=r.get("key_file", "", _str),
        trusted_keys=r.get("trusted_keys", (), _str_list),
        grace=r.get("grace", 60.0, _durations(1.0, 3600.0)),
        status_interval=r.get("status_interval", 30.0, _durations(1.0, 3600.0)),
        state_dir=r.get("state_dir", _D_FLEET.state_dir, _str),
        max_document=r.get("max_document", _D_FLEET.max_document, _sizes(1024, 16 * 1024 * 1024)),
    )
    if fleet.enabled and not fleet.trusted_keys:
        raise ConfigError("fleet.trusted_keys", "fleet.enabled needs at least one operator public key to check documents")
    r.finish()
    top.finish()
    return Config(node=node, log_level=log_level, mqtt=mqtt, otlp=otlp, ebpf=ebpf, assembler=assembler, sampler=sampler,
                  uplink=uplink, memory=memory, gateway=gateway, metrics=metrics, fleet=fleet)


def _route_durations(value: Any, key: str) -> dict[str, float]:
    # [sampler.latency] "/api/orders" = "500ms": one threshold per route.
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table of route = duration, such as \"/api/orders\" = \"500ms\", got {value!r}")
    return {route: _durations(0.0, 3600.0)(v, f"{key}.{route!r}") for route, v in value.items()}


def _buckets(value: Any, key: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(key, f"expected a non-empty list of positive bucket bounds in seconds, got {value!r}")
    bounds = tuple(float(v) for v in value)
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ConfigError(key, f"bucket bounds must be strictly increasing, got {list(bounds)}")
    return bounds


def _int_list(lo: int, hi: int) -> Callable[[Any, str], list[int]]:
    conv = _int_in(lo, hi)

    def convert(value: Any, key: str) -> list[int]:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list of whole numbers, got {value!r}")
        return [conv(v, key) for v in value]
    return convert


def load_config(path: str | Path | None) -> Config:
    """Load and validate a TOML file; None gives the defaults."""
    if path is None:
        return parse_config({})
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError("(file)", f"cannot read {p}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("(file)", f"{p} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("(file)", f"{p} is not valid TOML: {e}") from None
    return parse_config(data)
