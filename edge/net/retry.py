"""Rate-limited warnings: a flood of bad input must not become a flood of log lines on a small flash disk."""
from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs at most one line per message format per `interval_s`, then says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, fmt: str, *args: object) -> None:
        """Log a warning unless the same format was logged less than `interval_s` ago."""
        now = time.monotonic()
        last, suppressed = self._last.get(fmt, (-1e18, 0))
        if now - last < self.interval_s:
            self._last[fmt] = (last, suppressed + 1)
            return
        self._last[fmt] = (now, 0)
        if suppressed:
            self.logger.warning(fmt + " (and %d more like it suppressed)", *args, suppressed)
        else:
            self.logger.warning(fmt, *args)
