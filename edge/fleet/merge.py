"""The effective config of a node: its local file, then its group's document, then its own (node keys win)."""
from __future__ import annotations

from typing import Any

from ..config import SECTIONS, BrokerAddress, Config, parse_config
from ..config.reader import settings_of

__all__ = ["config_to_dict", "deep_merge", "effective_config"]


def _value(name: str, value: Any) -> Any:
    if isinstance(value, BrokerAddress):
        return str(value)
    if name.endswith("listen"):
        if value is None:
            return ""
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(value, (tuple, list)):
        return [_value("", v) for v in value]
    if isinstance(value, dict):
        return {k: _value("", v) for k, v in value.items()}
    return value


def _table(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in settings_of(section):
        v = _value(f.name, getattr(section, f.name))
        if v is not None:
            out[f.name] = v
    return out


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The TOML tables that `parse_config` turns back into an equal Config."""
    out: dict[str, Any] = {"node": _table(cfg.node), "log": {"level": cfg.log_level}}
    for path, attr, _ in SECTIONS:
        table = out
        *outer, name = path.split(".")
        for part in outer:
            table = table.setdefault(part, {})
        table[name] = _table(getattr(cfg, attr))
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on top: tables merge key by key, every other value (lists too) is replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def effective_config(local: Config, *layers: dict[str, Any] | None) -> Config:
    """Validate local config + the document layers in order (group, then node); raises ConfigError naming the key."""
    data = config_to_dict(local)
    for layer in layers:
        if layer:
            data = deep_merge(data, layer)
    # Identity and trust anchors are the local file's alone, whatever a layer says.
    base = config_to_dict(local)
    data["node"], data["fleet"] = base["node"], base["fleet"]
    return parse_config(data)
