"""Consistent sampling after stitching keeps or drops a joined trace whole: a kernel span that leaves its own trace for
another takes that trace's state, so the `rv` the kernel drew for it no longer decides it apart from the rest."""
from __future__ import annotations

from dataclasses import replace

import pytest

from edge.assembler import Assembler, AssemblerConfig
from edge.model import Span
from edge.sampler.trace_sampler import TraceSampler

from .test_late_sdk import SDK_DELAY, drive, frontend_request

R_MAX = (1 << 56) - 1


def _with_r(trace: bytes, r: int) -> bytes:
    return trace[:9] + r.to_bytes(7, "big")


def _kernel_drawn(s: Span, r: int) -> Span:
    """A context-less kernel span as the span builder makes it when the kernel decided it on randomness it drew."""
    return replace(s, trace_id=_with_r(s.trace_id, r), trace_state=f"ot=rv:{r:014x}")


@pytest.mark.parametrize(("r_sdk", "r_kernel"), [(0, R_MAX), (R_MAX, 0)])
def test_a_kernel_only_caller_joined_into_an_sdk_trace_is_sampled_with_that_trace(r_sdk: int, r_kernel: int) -> None:
    kernel, sdk_spans, t = frontend_request()
    t2 = _with_r(t, r_sdk)
    kernel = [replace(s, trace_id=t2) if s.trace_id == t else _kernel_drawn(s, r_kernel) for s in kernel]
    sdk_spans = [replace(s, trace_id=t2) for s in sdk_spans]
    got = drive(Assembler(AssemblerConfig(window=2.0)), [(0.0, kernel), (SDK_DELAY, sdk_spans)], until=20.0)
    assert {s.trace_id for s in got.values()} == {t2}
    assert all("rv:" not in s.trace_state for s in got.values()), "the rv of the trace each kernel span left"
    kept, _ = TraceSampler(ratio=0.25).decide(list(got.values()), now=0.0)
    assert len(kept) == (len(got) if r_sdk == R_MAX else 0), "the whole trace, or none of it (the rest waits for the tail)"
