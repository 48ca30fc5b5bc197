"""The agent process: wiring of sources, pipeline stages and the uplink."""
from __future__ import annotations

from .inbox import SpanInbox
from .runner import Agent, KernelStatus

__all__ = ["Agent", "KernelStatus", "SpanInbox"]
