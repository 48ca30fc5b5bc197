"""Helix Edge: the on-node tracing agent."""
from __future__ import annotations

from . import accel

__all__ = ["__version__"]

__version__ = "0.1.0"

# The compiled span builder runs only when it matches the sources; otherwise the pure-Python modules are imported.
accel.install()
