"""Consistent sampling after stitching keeps or drops a joined trace whole: a kernel span that leaves its own trace for
another takes that trace's state, so the `rv` the kernel drew for it no longer decides it apart from the rest."""
from __future__ import annotations

from dataclasses import replace

import pytest

from edge.assembler import Assembler, AssemblerConfig
from edge.model import Span
from edge.sampler.trace_sampler import TraceSampler

from edge.model import SpanKind, new_span_id, new_trace_id

from .test_assembler import A, B, kspan
from .test_late_sdk import SDK_DELAY, drive, frontend_request, sdk_in

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


def test_under_kernel_sampling_an_sdk_span_is_not_adopted_by_a_concurrent_requests_kernel_span() -> None:
    # Two concurrent requests of an SDK service, each read without context: the kernel kept Y's (its R above the
    # threshold) and held X's back. X's SDK span lies inside Y's kernel span, but timing cannot say it is Y's: it stays
    # a root (linked to nothing it is not), and Y's kernel span does not wait for an SDK span no rule could match.
    t_x = new_trace_id()
    k_y = _kernel_drawn(kspan("k-y", SpanKind.SERVER, 0, 100, pid=7, tid=71, local=B, peer=A), R_MAX)
    caller_y = _kernel_drawn(kspan("caller-y", SpanKind.CLIENT, -1, 101, pid=1, tid=10, local=A, peer=B), R_MAX)
    sdk_x = sdk_in(7, "x", SpanKind.SERVER, 5, 60, t_x)
    a = Assembler(AssemblerConfig(window=2.0))
    a.sdk.kernel_seen(1, -100.0)
    a.sdk.runs_sdk(7, -100.0)
    got = drive(a, [(0.0, [k_y, caller_y]), (SDK_DELAY, [sdk_x])], until=20.0)
    assert got["x"].parent_span_id == b"" and got["x"].trace_id == t_x
    assert got["k-y"].parent_span_id == caller_y.span_id and a.stats.sdk_waits == 0


def test_an_sdk_span_is_not_adopted_by_timing_in_a_process_the_kernel_sampled_lately() -> None:
    # The threshold rose between two concurrent requests: Y was read while the kernel kept everything (no rv), X's
    # exchange was held back. A third request Z of the same process, kept on the kernel's own R, shows that the kernel
    # sampled there: X's SDK span inside Y's kernel span is not taken for Y's.
    t_x = new_trace_id()
    k_z = _kernel_drawn(kspan("k-z", SpanKind.SERVER, -50, -40, pid=7, tid=72, local=B, peer=("127.0.0.1", 40100)),
                        R_MAX)
    k_y = kspan("k-y", SpanKind.SERVER, 0, 100, pid=7, tid=71, local=B, peer=A)
    sdk_x = sdk_in(7, "x", SpanKind.SERVER, 5, 60, t_x)
    a = Assembler(AssemblerConfig(window=2.0))
    a.sdk.runs_sdk(7, -100.0)
    got = drive(a, [(0.0, [k_z, k_y]), (SDK_DELAY, [sdk_x])], until=20.0)
    assert got["x"].parent_span_id == b"" and got["x"].trace_id == t_x
    assert a.stats.unjoined == 0 and "helix.link" not in got["x"].attributes


@pytest.mark.parametrize("via", ["handoff", "thread"])
def test_where_the_kernel_sampled_only_a_thread_cause_says_which_request_started_a_trace(via: str) -> None:
    # X's exchange was held back in the kernel, so the span builder never saw X's request: the pool rules named Y (a
    # request it did see) for the call X's SDK made with its trace on the wire. Where the kernel sampled lately only a
    # `thread` cause (the calling thread serves exactly that request, read and not answered) is taken for the birth.
    t_x = new_trace_id()
    k_z = _kernel_drawn(kspan("k-z", SpanKind.SERVER, -50, -40, pid=7, tid=72, local=B, peer=("127.0.0.1", 40100)),
                        R_MAX)
    k_y = kspan("k-y", SpanKind.SERVER, 0, 100, pid=7, tid=71, local=B, peer=A)
    call = kspan("k-call", SpanKind.CLIENT, 10, 50, pid=7, tid=73, local=("127.0.0.1", 40200), peer=("127.0.0.1", 7071),
                 wire=(t_x, new_span_id()), **{"helix.cause": k_y.span_id, "helix.cause.via": via})
    sdk_x = sdk_in(7, "x", SpanKind.SERVER, 5, 60, t_x)
    a = Assembler(AssemblerConfig(window=2.0))
    a.sdk.runs_sdk(7, -100.0)
    got = drive(a, [(0.0, [k_z, k_y, call]), (SDK_DELAY, [sdk_x])], until=20.0)
    adopted = got["x"].parent_span_id == k_y.span_id
    assert adopted == (via == "thread")
