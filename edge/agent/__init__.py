"""The agent process: wiring of sources, pipeline stages and the uplink.

Nothing is imported until asked for: the agent's config section (edge/agent/config.py) is read before asyncio loads.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Agent", "KernelStatus", "SpanInbox"]

_LAZY = {"Agent": "runner", "KernelStatus": "runner", "SpanInbox": "inbox"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
