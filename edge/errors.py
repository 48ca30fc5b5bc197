"""Typed errors. Every predictable failure is one of these, with a message a field technician can act on."""
from __future__ import annotations

__all__ = [
    "HelixError",
    "ConfigError",
    "DecodeError",
    "ProbeUnavailable",
    "UplinkError",
    "ExportError",
]


class HelixError(Exception):
    """Base of every error Helix Edge raises on purpose."""


class ConfigError(HelixError):
    """A configuration value is missing, of the wrong type or out of range."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


class DecodeError(HelixError):
    """Bytes from outside (CBOR, OTLP, MQTT, kernel events) could not be decoded."""


class ProbeUnavailable(HelixError):
    """The eBPF probes cannot run on this host; `fix` says what would make them run."""

    def __init__(self, reason: str, fix: str = "") -> None:
        self.reason = reason
        self.fix = fix
        super().__init__(reason + (f" (fix: {fix})" if fix else ""))


class UplinkError(HelixError):
    """The uplink to the central gateway failed."""


class ExportError(HelixError):
    """The OTLP endpoint refused or could not take an export."""

    def __init__(self, message: str, retryable: bool, retry_after_s: float | None = None) -> None:
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        super().__init__(message)
