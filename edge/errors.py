"""Typed errors. Every predictable failure is one of these, with a message a field technician can act on."""
from __future__ import annotations

__all__ = [
    "HelixError",
    "ConfigError",
    "DecodeError",
    "ProbeUnavailable",
    "UplinkError",
    "ExportError",
    "FatalError",
    "OverBudget",
    "describe",
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


class OverBudget(HelixError):
    """Decoded data would take more memory than it was allowed (`size`: bytes decoded when the decoder stopped)."""

    def __init__(self, size: int, allowed: int) -> None:
        self.size = size
        self.allowed = allowed
        super().__init__(f"decoded data over {allowed} bytes")


class ProbeUnavailable(HelixError):
    """The eBPF probes cannot run on this host; `fix` says what would make them run."""

    def __init__(self, reason: str, fix: str = "") -> None:
        self.reason = reason
        self.fix = fix
        super().__init__(reason + (f" (fix: {fix})" if fix else ""))


class UplinkError(HelixError):
    """The uplink to the central gateway failed."""


class FatalError(HelixError):
    """The agent cannot go on: restarting the part that raised it would not help (the message says what to fix)."""


class ExportError(HelixError):
    """The OTLP endpoint refused or could not take an export."""

    def __init__(self, message: str, retryable: bool, retry_after_s: float | None = None) -> None:
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        super().__init__(message)


def describe(value: object, limit: int = 48) -> str:
    """A short rendering of an untrusted value for an error message: never raises, never long.

    `repr` itself fails on an integer past Python's 4,300-digit conversion limit and on structures nested past the
    recursion limit, and a megabyte string repeated in every span's error would cost megabytes.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (dict, list, tuple, set)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        value = value[:limit]
        suffix = "…"
    else:
        suffix = ""
    try:
        return repr(value) + suffix
    except Exception:  # noqa: BLE001 - any object's repr may fail; the message must not
        return f"a {type(value).__name__}"
