"""Configuration: one TOML file, validated at start. Every setting has a default, so a node runs with no file at all.

Each section is a dataclass beside the component it configures, its defaults written once and checked by its own
`validate()` (reader.py says how a section is declared); `SECTIONS` lists them. This package composes them into
`Config` and reads the file; an error names the exact key and the problem, and unknown keys are refused.

The sections are imported on first use: a component's section module imports this package's reader, and loading
a config must not load the components themselves (the launcher reads it before asyncio is imported).
"""
from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError
from .common import BrokerAddress, MqttConnection
from .reader import Reader, Section, node_name, one_of, parse_duration, parse_listen, parse_size, read_section, \
    setting, short_hostname

if TYPE_CHECKING:
    from ..agent.config import MemoryConfig, MetricsConfig
    from ..assembler.config import AssemblerConfig
    from ..fleet.config import FleetConfig
    from ..sampler.config import SamplerConfig
    from ..sources.config import MqttSourceConfig, OtlpSourceConfig
    from ..sources.ebpf.config import EbpfSourceConfig
    from .uplink import GatewayConfig, UplinkConfig

__all__ = [
    "Config",
    "NodeConfig",
    "SECTIONS",
    "MqttSourceConfig",
    "OtlpSourceConfig",
    "EbpfSourceConfig",
    "AssemblerConfig",
    "SamplerConfig",
    "UplinkConfig",
    "MemoryConfig",
    "MetricsConfig",
    "GatewayConfig",
    "FleetConfig",
    "BrokerAddress",
    "MqttConnection",
    "load_config",
    "parse_config",
    "parse_size",
    "parse_duration",
    "parse_listen",
]

# The sections of the file: TOML table, Config attribute, and "module:Class" of the section, beside its component.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("sources.mqtt", "mqtt", "edge.sources.config:MqttSourceConfig"),
    ("sources.otlp", "otlp", "edge.sources.config:OtlpSourceConfig"),
    ("sources.ebpf", "ebpf", "edge.sources.ebpf.config:EbpfSourceConfig"),
    ("assembler", "assembler", "edge.assembler.config:AssemblerConfig"),
    ("sampler", "sampler", "edge.sampler.config:SamplerConfig"),
    ("uplink", "uplink", "edge.config.uplink:UplinkConfig"),
    ("memory", "memory", "edge.agent.config:MemoryConfig"),
    ("gateway", "gateway", "edge.config.uplink:GatewayConfig"),
    ("metrics", "metrics", "edge.agent.config:MetricsConfig"),
    ("fleet", "fleet", "edge.fleet.config:FleetConfig"),
)
_BY_NAME = {spec.rpartition(":")[2]: spec for _, _, spec in SECTIONS}


def _section_class(spec: str) -> type[Any]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _default(attr: str) -> Callable[[], Any]:
    spec = next(s for _, a, s in SECTIONS if a == attr)
    return lambda: _section_class(spec)()


def __getattr__(name: str) -> Any:
    # The section classes, importable from here as well as from beside their components.
    spec = _BY_NAME.get(name)
    if spec is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _section_class(spec)


@dataclass(slots=True, frozen=True)
class NodeConfig(Section):
    """Identity of this node in the fleet."""

    id: str = setting(conv=node_name, factory=short_hostname)  # used in MQTT topics
    group: str = setting("default", node_name)


@dataclass(slots=True, frozen=True)
class Config:
    """The whole configuration of a node (and of a gateway, which reads only `[gateway]`)."""

    node: NodeConfig = field(default_factory=NodeConfig)
    log_level: str = "info"
    mqtt: MqttSourceConfig = field(default_factory=_default("mqtt"))
    otlp: OtlpSourceConfig = field(default_factory=_default("otlp"))
    ebpf: EbpfSourceConfig = field(default_factory=_default("ebpf"))
    assembler: AssemblerConfig = field(default_factory=_default("assembler"))
    sampler: SamplerConfig = field(default_factory=_default("sampler"))
    uplink: UplinkConfig = field(default_factory=_default("uplink"))
    memory: MemoryConfig = field(default_factory=_default("memory"))
    gateway: GatewayConfig = field(default_factory=_default("gateway"))
    metrics: MetricsConfig = field(default_factory=_default("metrics"))
    fleet: FleetConfig = field(default_factory=_default("fleet"))

    def agent_may_use_tls(self) -> bool:
        """Whether the agent may open a TLS connection: now (mqtts://, https://) or after a remote config."""
        uplink = self.uplink.broker.tls if self.uplink.transport == "mqtt" else self.uplink.url.startswith("https:")
        return self.fleet.enabled or self.mqtt.broker.tls or uplink


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document into a Config."""
    top = Reader(data, "")
    node = read_section(NodeConfig, top.sub("node"))
    r = top.sub("log")
    log_level = r.get("level", "info", one_of("debug", "info", "warning", "error"))
    r.finish()
    sections: dict[str, Any] = {}
    for i, (path, attr, spec) in enumerate(SECTIONS):
        outer, _, name = path.rpartition(".")
        parent = top.sub(outer) if outer else top
        sections[attr] = read_section(_section_class(spec), parent.sub(name))
        if outer and all(not p.startswith(outer + ".") for p, _, _ in SECTIONS[i + 1:]):
            parent.finish()  # [sources]: unknown keys next to its sections
    top.finish()
    return Config(node=node, log_level=log_level, **sections)


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
