"""The assembler: turns spans from every source into one consistent stream of traces."""
from __future__ import annotations

from .assembler import Assembler, AssemblerConfig, AssemblerStats

__all__ = ["Assembler", "AssemblerConfig", "AssemblerStats"]
