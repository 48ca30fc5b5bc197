"""Retrying and rate limits: backoff with jitter, Retry-After, and one throttle for repeated log lines.

A flood of bad input or a link that stays down must not become a flood of log lines on a small flash disk: every
repeated warning goes through `Throttle` (directly, or as `RateLimitedLog`), which lets one line per key through
per interval and counts the rest.
"""
from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timezone

__all__ = ["Backoff", "Throttle", "RateLimitedLog", "parse_retry_after"]

_INITIAL_BACKOFF = 0.1


class Backoff:
    """Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling up to `maximum`."""

    __slots__ = ("initial", "maximum", "attempt", "_rng")

    def __init__(self, initial: float = _INITIAL_BACKOFF, maximum: float = 30.0, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The next delay in seconds."""
        d = min(self.maximum, self.initial * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return d * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        """Start again from the initial delay."""
        self.attempt = 0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # here: only a peer that says to wait until a date needs the email package

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    ref = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0.0, when.timestamp() - ref)


class Throttle:
    """Lets a repeated log line through at most once per `interval` seconds per key, counting the rest."""

    __slots__ = ("interval", "_last", "suppressed")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def ready(self, key: str) -> bool:
        """True if a line for `key` may be logged now."""
        now = time.monotonic()
        if now - self._last.get(key, -1e18) >= self.interval:
            self._last[key] = now
            return True
        self.suppressed[key] = self.suppressed.get(key, 0) + 1
        return False

    def take_suppressed(self, key: str) -> int:
        """How many lines for `key` were held back since the last call."""
        return self.suppressed.pop(key, 0)


class RateLimitedLog:
    """A logger's warnings through a Throttle keyed by the message format, saying how many were suppressed."""

    __slots__ = ("logger", "_throttle")

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self._throttle = Throttle(interval_s)

    def warning(self, fmt: str, *args: object) -> None:
        """Log a warning unless the same format was logged less than the interval ago."""
        if not self._throttle.ready(fmt):
            return
        suppressed = self._throttle.take_suppressed(fmt)
        if suppressed:
            self.logger.warning(fmt + " (and %d more like it suppressed)", *args, suppressed)
        else:
            self.logger.warning(fmt, *args)
