"""Kernel probes: loading, ring-buffer consumption, event decoding and span building."""
from __future__ import annotations

__all__: list[str] = []
