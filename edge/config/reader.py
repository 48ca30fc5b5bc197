"""Reading TOML into typed, validated sections: a table reader that names the exact key in every error and refuses
unknown keys, the value converters, and the declaration of a section's settings.

A section is a frozen dataclass whose settings are fields declared with `setting(default, conv)`: the default
is written once, in the dataclass, and `conv(value, key)` turns the TOML value into the field's value or raises
ConfigError naming the key. Fields declared without `setting` are not read from the file. Checks across settings
go in the section's `validate()`. A typo must not silently fall back to a default on a device nobody can log into.
"""
from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = [
    "Reader",
    "Section",
    "Converter",
    "setting",
    "settings_of",
    "read_section",
    "parse_size",
    "parse_duration",
    "parse_listen",
    "string",
    "boolean",
    "whole",
    "number",
    "size",
    "duration",
    "one_of",
    "str_list",
    "str_map",
    "listen_or_off",
    "http_url",
    "topic_filter",
    "topic_filters",
    "node_name",
    "short_hostname",
]

Converter = Callable[[Any, str], Any]
S = TypeVar("S", bound="Section")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2,
               "GB": 1000**3, "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)\s*$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


class Reader:
    """Reads one TOML table, tracking which keys were used so that leftovers are reported as unknown."""

    def __init__(self, table: Any, prefix: str) -> None:
        if not isinstance(table, dict):
            raise ConfigError(prefix, f"expected a table ([{prefix}]), got {type(table).__name__}")
        self.table = table
        self.prefix = prefix
        self.used: set[str] = set()
        self._subs: dict[str, Reader] = {}

    def key(self, name: str) -> str:
        """The full name of key `name` of this table, as errors print it."""
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, default: Any, conv: Converter) -> Any:
        """The converted value of key `name`, or `default` when the file does not set it."""
        self.used.add(name)
        if name not in self.table:
            return default
        return conv(self.table[name], self.key(name))

    def sub(self, name: str) -> Reader:
        """The reader of the sub-table `name` (empty when absent); the same one on every call."""
        self.used.add(name)
        reader = self._subs.get(name)
        if reader is None:
            reader = self._subs[name] = Reader(self.table.get(name, {}), self.key(name))
        return reader

    def finish(self) -> None:
        """Raise ConfigError for the first key of this table nothing read."""
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key (check the spelling; see `helix check-config --help`)")


class Section:
    """Base of the configuration sections: frozen dataclasses of `setting` fields, checked by `validate()`."""

    __slots__ = ()

    def validate(self) -> None:
        """Raise ConfigError naming the key when settings contradict each other (each is valid on its own)."""


def setting(default: Any = dataclasses.MISSING, conv: Converter | None = None, *,
            factory: Callable[[], Any] | None = None) -> Any:
    """A field read from the configuration file: its one default (or `factory` for mutable ones) and converter."""
    if conv is None:
        raise TypeError("a setting needs a converter")
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"conv": conv})
    return dataclasses.field(default=default, metadata={"conv": conv})


def settings_of(section: Any) -> list[dataclasses.Field[Any]]:
    """The fields of a section class or instance that are read from the file, in declaration order."""
    return [f for f in dataclasses.fields(section) if "conv" in f.metadata]


def read_section(cls: type[S], r: Reader) -> S:
    """Read a section from its table: each setting converted, unknown keys refused, then `validate()`."""
    values: dict[str, Any] = {}
    for f in settings_of(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        values[f.name] = r.get(f.name, default, f.metadata["conv"])
    section = cls(**values)
    section.validate()
    r.finish()
    return section


# ---------------------------------------------------------------------------------------------------- values

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


def _whole(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected a whole number, got {value!r}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number, got {value!r}")
    return float(value)


def _ranged(read: Callable[[Any, str], Any], lo: Any, hi: Any, unit: str = "") -> Converter:
    """The one range check: `read` the value, then require lo <= value <= hi."""
    def conv(value: Any, key: str) -> Any:
        n = read(value, key)
        if not lo <= n <= hi:
            raise ConfigError(key, f"must be between {lo}{unit} and {hi}{unit}, got {n}{unit}")
        return n
    return conv


def whole(lo: int, hi: int) -> Converter:
    """A whole number from `lo` to `hi`."""
    return _ranged(_whole, lo, hi)


def number(lo: float, hi: float) -> Converter:
    """A number from `lo` to `hi`, as a float."""
    return _ranged(_number, lo, hi)


def size(lo: int, hi: int) -> Converter:
    """A size ('256KiB' or bytes) from `lo` to `hi` bytes."""
    return _ranged(parse_size, lo, hi, " bytes")


def duration(lo: float, hi: float) -> Converter:
    """A duration ('2s', '500ms' or seconds) from `lo` to `hi` seconds."""
    return _ranged(parse_duration, lo, hi, "s")


def string(value: Any, key: str) -> str:
    """Any string."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {type(value).__name__} {value!r}")
    return value


def boolean(value: Any, key: str) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def one_of(*choices: str) -> Converter:
    """One of the strings `choices`."""
    def conv(value: Any, key: str) -> str:
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value  # type: ignore[no-any-return]
    return conv


def str_list(value: Any, key: str) -> tuple[str, ...]:
    """A list of non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, f"expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def str_map(value: Any, key: str) -> dict[str, str]:
    """A table of string values."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(key, f"expected a table of string values, got {value!r}")
    return dict(value)


def listen_or_off(value: Any, key: str) -> tuple[str, int] | None:
    """'host:port', or "" (or false) for off."""
    if value == "" or value is False:
        return None
    return parse_listen(value, key)


def http_url(value: Any, key: str) -> str:
    """An http:// or https:// URL."""
    s = string(value, key)
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http:// or https:// URL, got {s!r}")
    return s


def topic_filter(value: Any, key: str) -> str:
    """An MQTT topic filter (wildcards where MQTT allows them)."""
    s = string(value, key)
    if not s or "#" in s[:-1] or any(("+" in level and level != "+") for level in s.split("/")):
        raise ConfigError(key, f"not a valid MQTT topic filter: {s!r}")
    return s


def topic_filters(value: Any, key: str) -> tuple[str, ...]:
    """A list of MQTT topic filters."""
    return tuple(topic_filter(t, key) for t in str_list(value, key))


def node_name(value: Any, key: str) -> str:
    """A node id or group: letters, digits, '.', '_' and '-', usable as an MQTT topic level."""
    s = string(value, key)
    if not _ID.match(s):
        raise ConfigError(key, f"must be 1-63 letters, digits, '.', '_' or '-' (it is used in MQTT topics), got {s!r}")
    return s


def short_hostname() -> str:
    """This machine's host name up to the first dot (the default node id)."""
    return socket.gethostname().split(".")[0] or "node"
