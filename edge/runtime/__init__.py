"""Process bootstrap of `helix run`: the allocator it runs on, OpenSSL left out when no TLS is needed, systemd
notifications. Nothing is imported here: the launcher takes these before asyncio is loaded."""
from __future__ import annotations

__all__: list[str] = []
