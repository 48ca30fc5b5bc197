"""Pre-aggregation: RED metrics (rate, errors, duration) for all traffic, sampled or not."""
from __future__ import annotations

from .red import DEFAULT_BUCKETS, RedAggregator, RedStats, SeriesKey

__all__ = ["RedAggregator", "RedStats", "SeriesKey", "DEFAULT_BUCKETS"]
