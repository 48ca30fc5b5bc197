"""Sampling: which traces are kept. Consistent probability (head) sampling combined with tail rules."""
from __future__ import annotations

from .consistent import ConsistentSampler, encode_threshold, randomness, threshold_for_ratio
from .tail import TailRules, TailSampler
from .trace_sampler import TraceSampler

__all__ = ["ConsistentSampler", "TraceSampler", "TailRules", "TailSampler", "threshold_for_ratio",
           "encode_threshold", "randomness"]
