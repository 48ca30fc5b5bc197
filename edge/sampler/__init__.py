"""Sampling: which traces are kept. Consistent probability sampling now; tail rules build on it."""
from __future__ import annotations

from .consistent import ConsistentSampler, encode_threshold, randomness, threshold_for_ratio

__all__ = ["ConsistentSampler", "threshold_for_ratio", "encode_threshold", "randomness"]
