"""The implementations a comparison test runs on: the pure-Python modules, and the compiled accelerator (edge/accel.py).

Where the accelerator is not in use the "compiled" cases are skipped with the reason; HELIX_REQUIRE_ACCEL=1 (CI sets it,
as its build has a compiler and the Python headers) turns that skip into a failure.
"""
from __future__ import annotations

import os

import pytest

from edge import accel

IMPLEMENTATIONS = [
    "pure",
    pytest.param("compiled", marks=pytest.mark.skipif(
        not accel.status().compiled and os.environ.get("HELIX_REQUIRE_ACCEL") != "1",
        reason=f"accelerator not in use: {accel.status().detail}")),
]
