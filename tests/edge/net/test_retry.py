from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from edge.net.retry import Backoff, RateLimitedLog, Throttle, parse_retry_after


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 < (parse_retry_after(format_datetime(when, usegmt=True)) or 0) <= 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(initial=0.1, maximum=1.0)
    delays = [b.next() for _ in range(10)]
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2
    assert all(0.5 <= d <= 1.0 for d in delays[5:])


def test_throttle_lets_one_line_per_key_through_and_counts_the_rest() -> None:
    t = Throttle(interval=60.0)
    assert t.ready("a") and t.ready("b")
    assert not t.ready("a") and not t.ready("a")
    assert t.take_suppressed("a") == 2 and t.take_suppressed("a") == 0 and t.take_suppressed("b") == 0
    assert Throttle(interval=0.0).ready("a")


def test_rate_limited_log_says_how_many_were_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    warn = RateLimitedLog(logging.getLogger("t"), interval_s=0.0)
    quiet = RateLimitedLog(logging.getLogger("t"), interval_s=60.0)
    with caplog.at_level("WARNING", logger="t"):
        for i in range(3):
            quiet.warning("bad record %d", i)
        warn.warning("x %d", 1)
    assert [r.getMessage() for r in caplog.records] == ["bad record 0", "x 1"]
    quiet._throttle.interval = 0.0
    with caplog.at_level("WARNING", logger="t"):
        quiet.warning("bad record %d", 9)
    assert caplog.records[-1].getMessage() == "bad record 9 (and 2 more like it suppressed)"
