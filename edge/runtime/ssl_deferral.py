"""Keeps OpenSSL out of an agent that opens no TLS connection.

asyncio imports `ssl` whenever Python has it, which maps libssl and libcrypto and builds their tables: about a
tenth of a device's budget (docs/benchmarks.md), for nothing on a node whose broker is on the plant network or
loopback. `helix run` therefore reads its config before anything imports asyncio, and when no connection can
need TLS (no mqtts:// or https:// and no remote configuration, which could turn TLS on) it marks `ssl` as
unavailable; asyncio, aiohttp and the rest then run without it. Anything that still asks for TLS gets a
`HelixError` that says to restart, never a half-working connection.
"""
from __future__ import annotations

import sys

from ..errors import HelixError

__all__ = ["defer_ssl", "ssl_deferred", "require_ssl"]

_deferred = False


def defer_ssl() -> bool:
    """Make `import ssl` fail in this process (before asyncio is imported); False if ssl is already loaded."""
    global _deferred
    if "ssl" in sys.modules:
        return _deferred
    sys.modules["ssl"] = None  # type: ignore[assignment]  # the import system's "not available" marker
    _deferred = True
    return True


def ssl_deferred() -> bool:
    """Whether this process runs without ssl because its config needed none."""
    return _deferred


def require_ssl(what: str) -> None:
    """Raise HelixError naming `what` when TLS was left out at start."""
    if _deferred:
        raise HelixError(f"{what} needs TLS, which this agent did not load: its config at start used no mqtts://, "
                         "https:// or [fleet]; restart the agent with this setting in its config file")
