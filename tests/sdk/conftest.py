"""The device SDKs are built and run for real: a missing compiler or runtime skips here and fails in CI."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench._c_sdk import must_run, required_tools_missing


def need(*tools: str) -> None:
    """Skip (or, in CI, fail) unless every tool is on PATH."""
    reason = required_tools_missing(*tools)
    if reason:
        if must_run():
            pytest.fail(f"{reason}; CI must run the device SDK tests")
        pytest.skip(reason)


def need_file(path: str, package: str) -> None:
    """Skip (or, in CI, fail) unless a file of a Debian package is there."""
    if not Path(path).exists():
        if must_run():
            pytest.fail(f"{package} is not installed; CI must run the device SDK tests")
        pytest.skip(f"{package} is not installed (scripts/setup.sh installs it)")
