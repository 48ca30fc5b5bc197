"""Stitching with OpenTelemetry SDKs at their defaults: SDK spans arrive seconds after the kernel spans of the same
requests (a BatchSpanProcessor exports every 5 s), yet what left first is never contradicted, application trace ids
are kept where the application's trace is the upstream one, and moved traces say where they came from."""
from __future__ import annotations

from dataclasses import replace

from edge.assembler import Assembler, AssemblerConfig
from edge.model import Resource, Span, SpanKind, new_span_id, new_trace_id

from .test_assembler import A, B, C, D, kspan, sdk

SDK_DELAY = 5.0  # s: the OpenTelemetry BatchSpanProcessor's default schedule delay
E, F = ("127.0.0.1", 40005), ("127.0.0.1", 7070)


def sdk_in(pid: int, name: str, kind: SpanKind, start_ms: float, end_ms: float, trace: bytes, parent: bytes = b"") -> Span:
    """An SDK span whose resource names its process, as the testbed's services set it."""
    return replace(sdk(name, kind, start_ms, end_ms, f"svc{pid}", trace, parent=parent),
                   resource=Resource.of({"service.name": f"svc{pid}", "process.pid": pid}))


def drive(a: Assembler, batches: list[tuple[float, list[Span]]], until: float) -> dict[str, Span]:
    """Feed each batch at its time, tick every 100 ms until `until`; every span must be out by then."""
    out: list[Span] = []
    fed = sum(len(b) for _, b in batches)
    t = 0.0
    pending = sorted(batches, key=lambda b: b[0])
    while t <= until:
        now = [b for b in pending if b[0] <= t]
        pending = [b for b in pending if b[0] > t]
        out += a.process([s for _, b in now for s in b], now=t)
        t = round(t + 0.1, 3)
    assert len(out) == fed, f"{fed - len(out)} spans still held"
    return {s.name: s for s in out}


def frontend_request(caller: bool = True) -> tuple[list[Span], list[Span], bytes]:
    """Kernel-only caller (pid 1) -> SDK service (pid 7, no context in, starts trace T, calls out with T on the
    wire) -> uninstrumented backend (pid 9). Returns (kernel spans, SDK spans, T)."""
    t = new_trace_id()
    s1 = sdk_in(7, "frontend", SpanKind.SERVER, 2, 98, t)
    s2 = sdk_in(7, "GET /backend", SpanKind.CLIENT, 10, 90, t, parent=s1.span_id)
    k_fs = kspan("k-frontend", SpanKind.SERVER, 1, 99, pid=7, tid=70, local=B, peer=A)
    k_fc = kspan("k-frontend-call", SpanKind.CLIENT, 11, 89, pid=7, tid=70, local=C, peer=D, wire=(t, s2.span_id),
                 **{"helix.cause": k_fs.span_id, "helix.cause.via": "thread"})
    k_bs = kspan("k-backend", SpanKind.SERVER, 12, 88, pid=9, tid=90, local=D, peer=C, wire=(t, s2.span_id))
    kernel = [k_bs, k_fc, k_fs]
    if caller:
        kernel.append(kspan("k-caller", SpanKind.CLIENT, 0, 100, pid=1, tid=10, local=A, peer=B))
    return kernel, [s2, s1], t


def test_a_kernel_only_caller_joins_the_sdk_trace_read_off_the_wire_before_the_sdk_spans_come() -> None:
    kernel, sdk_spans, t = frontend_request()
    a = Assembler(AssemblerConfig(window=2.0))
    got = drive(a, [(0.0, kernel), (SDK_DELAY, sdk_spans)], until=20.0)
    assert {s.trace_id for s in got.values()} == {t}, "one trace, the id the SDK gave"
    assert got["k-frontend"].parent_span_id == got["k-caller"].span_id
    assert got["frontend"].parent_span_id == got["k-frontend"].span_id
    assert got["frontend"].attributes["helix.link"] == "adopted"
    assert got["k-backend"].parent_span_id == got["k-frontend-call"].span_id
    assert got["k-frontend-call"].parent_span_id == got["GET /backend"].span_id
    assert not any("helix.trace.original_id" in s.attributes for s in got.values())
    assert not any("helix.cause" in s.attributes for s in got.values()), "builder evidence is not sent on"
    assert a.stats.born == 1 and a.stats.moved == 0


def test_a_request_whose_sdk_trace_is_on_the_wire_is_decided_without_waiting() -> None:
    kernel, sdk_spans, t = frontend_request(caller=False)
    a = Assembler(AssemblerConfig(window=2.0))
    a.sdk.runs_sdk(1, 0.0)
    out = a.process(kernel, now=0.0) + a.process([], now=2.1)
    assert {s.name for s in out} == {"k-backend", "k-frontend-call", "k-frontend"}, "nothing waits for the SDK"
    assert {s.trace_id for s in out} == {t}
    out = a.process(sdk_spans, now=SDK_DELAY) + a.process([], now=SDK_DELAY + 2.1)
    got = {s.name: s for s in out}
    assert got["frontend"].trace_id == t and got["frontend"].parent_span_id == kernel[2].span_id


def test_two_sdk_traces_joined_across_an_uninstrumented_hop_move_the_downstream_one() -> None:
    # createOrder (SDK pid 5, trace T1) -> applyPromotion (no SDK, pid 6) -> riskReview (SDK pid 7, started T2,
    # calls db with T2 on the wire) -> db (pid 9).
    t1, t2 = new_trace_id(), new_trace_id()
    s_order = sdk_in(5, "createOrder", SpanKind.SERVER, 0, 100, t1)
    s_call = sdk_in(5, "GET /promo", SpanKind.CLIENT, 1, 99, t1, parent=s_order.span_id)
    k_as = kspan("k-promo", SpanKind.SERVER, 2, 98, pid=6, tid=60, local=B, peer=A, wire=(t1, s_call.span_id))
    k_ac = kspan("k-promo-call", SpanKind.CLIENT, 3, 97, pid=6, tid=60, local=C, peer=D,
                 **{"helix.cause": k_as.span_id, "helix.cause.via": "thread"})
    k_rs = kspan("k-risk", SpanKind.SERVER, 4, 96, pid=7, tid=70, local=D, peer=C)
    s_risk = sdk_in(7, "riskReview", SpanKind.SERVER, 5, 95, t2)
    s_db = sdk_in(7, "GET /db", SpanKind.CLIENT, 6, 94, t2, parent=s_risk.span_id)
    k_rc = kspan("k-risk-call", SpanKind.CLIENT, 7, 93, pid=7, tid=70, local=E, peer=F, wire=(t2, s_db.span_id),
                 **{"helix.cause": k_rs.span_id, "helix.cause.via": "thread"})
    k_ds = kspan("k-db", SpanKind.SERVER, 8, 92, pid=9, tid=90, local=F, peer=E, wire=(t2, s_db.span_id))
    a = Assembler(AssemblerConfig(window=2.0))
    got = drive(a, [(0.0, [k_ds, k_rc, k_rs, k_ac, k_as]), (SDK_DELAY, [s_db, s_risk, s_call, s_order])],
                until=20.0)
    assert {s.trace_id for s in got.values()} == {t1}, "the upstream application trace"
    assert got["createOrder"].trace_id == t1 and "helix.trace.original_id" not in got["createOrder"].attributes
    moved = {n for n, s in got.items() if s.attributes.get("helix.trace.original_id") == t2.hex()}
    assert moved == {"riskReview", "GET /db", "k-risk-call", "k-db"}, "every span that was in T2, SDK or kernel"
    link = got["GET /db"].links[-1]
    assert (link.trace_id, link.span_id) == (t2, s_risk.span_id), "a link to its original parent"
    assert got["riskReview"].links[-1].trace_id == t2
    assert got["riskReview"].parent_span_id == got["k-risk"].span_id
    assert got["k-risk"].parent_span_id == got["k-promo-call"].span_id
    assert got["k-promo"].parent_span_id == s_call.span_id
    assert a.stats.moved == 4


def test_calls_of_an_sdk_process_wait_for_the_sdk_span_that_contains_them() -> None:
    # A batch job (SDK, pid 4) makes plain calls on worker threads; its span comes 5 s later.
    t = new_trace_id()
    job = sdk_in(4, "batchJob", SpanKind.INTERNAL, 0, 100, t)
    calls = [kspan(f"call{i}", SpanKind.CLIENT, 10 + i, 20 + i, pid=4, tid=41 + i % 2, local=(A[0], 41000 + i), peer=B)
             for i in range(3)]
    servers = [kspan(f"db{i}", SpanKind.SERVER, 11 + i, 19 + i, pid=9, tid=90, local=B, peer=(A[0], 41000 + i))
               for i in range(3)]
    a = Assembler(AssemblerConfig(window=2.0))
    got = drive(a, [(0.0, servers + calls), (SDK_DELAY, [job])], until=20.0)
    for i in range(3):
        assert got[f"call{i}"].parent_span_id == job.span_id and got[f"call{i}"].attributes["helix.link"] == "sdk-process"
        assert got[f"db{i}"].parent_span_id == got[f"call{i}"].span_id
    assert {s.trace_id for s in got.values()} == {t}
    assert a.stats.sdk_waits >= 3


def test_what_leaves_before_the_sdk_is_not_contradicted_when_the_hold_is_cut_short() -> None:
    # The memory bound lets the held spans go before the SDK span comes: they leave with what is known (their kernel
    # trace), and the late SDK root does not rewrite its trace id to join them: it stays a root, linked.
    t = new_trace_id()
    k_fs = kspan("k-leaf", SpanKind.SERVER, 1, 99, pid=7, tid=70, local=B, peer=A)
    k_c = kspan("k-caller", SpanKind.CLIENT, 0, 100, pid=1, tid=10, local=A, peer=B)
    leaf = sdk_in(7, "leaf", SpanKind.SERVER, 2, 98, t)
    a = Assembler(AssemblerConfig(window=2.0, max_spans=100))
    a.sdk.runs_sdk(7, 0.0)
    a.process([k_fs, k_c], now=0.0)
    a.max_bytes = 1  # the governor's bound
    out = a.process([], now=2.1)
    assert {s.name for s in out} == {"k-leaf", "k-caller"} and a.stats.sdk_wait_forced >= 1
    a.max_bytes = 1 << 30
    late = a.process([leaf], now=SDK_DELAY) + a.process([], now=SDK_DELAY + 2.1)
    assert late[0].trace_id == t and late[0].parent_span_id == b""
    assert late[0].links[-1].span_id == k_fs.span_id and a.stats.unjoined == 1
    assert out[0].trace_id == out[1].trace_id != t


def test_a_leaf_sdk_service_behind_a_kernel_only_caller_waits_for_its_sdk_span() -> None:
    # No call out, so no trace on the wire: the request waits for the SDK span, and the caller waits with it.
    t = new_trace_id()
    k_fs = kspan("k-leaf", SpanKind.SERVER, 1, 99, pid=7, tid=70, local=B, peer=A)
    k_c = kspan("k-caller", SpanKind.CLIENT, 0, 100, pid=1, tid=10, local=A, peer=B)
    leaf = sdk_in(7, "leaf", SpanKind.SERVER, 2, 98, t)
    a = Assembler(AssemblerConfig(window=2.0))
    got = drive(a, [(0.0, [k_fs, k_c]), (SDK_DELAY, [leaf])], until=20.0)
    assert {s.trace_id for s in got.values()} == {t}
    assert got["leaf"].parent_span_id == k_fs.span_id and got["k-leaf"].parent_span_id == k_c.span_id


def test_spans_held_for_an_sdk_count_against_the_bound() -> None:
    a = Assembler(AssemblerConfig(window=0.0))
    spans = [kspan(f"c{i}", SpanKind.CLIENT, i, i + 1, pid=3) for i in range(10)]
    out = a.process(spans, now=0.0)
    assert out == [] and len(a) == 10 and a.deferred == 10 and a.bytes == sum(s.approx_size() for s in spans)
    assert a.stats.sdk_waits == 10
    out = a.process([], now=a.config.sdk_wait + 0.1)
    assert len(out) == 10 and len(a) == 0 and a.bytes == 0 and a.stats.sdk_wait_expired == 10
    assert not a._waiting and not a._claimants


def test_a_pool_workers_call_hangs_under_the_request_its_builder_named() -> None:
    # Two requests in flight; the worker's call names the second by the wakeup that handed its result back.
    spans = [
        kspan("req-a", SpanKind.SERVER, 0, 100, pid=5, tid=50, local=B, peer=A),
        kspan("req-b", SpanKind.SERVER, 5, 45, pid=5, tid=52, local=B, peer=("127.0.0.1", 40010)),
    ]
    call = kspan("call", SpanKind.CLIENT, 8, 43, pid=5, tid=51, local=C, peer=D,
                 **{"helix.cause": spans[0].span_id, "helix.cause.via": "wakeup"})
    a = Assembler(AssemblerConfig(window=2.0, sdk_wait=0.0))
    got = {s.name: s for s in a.process([*spans, call], now=0.0) + a.process([], now=2.1)}
    assert got["call"].parent_span_id == spans[0].span_id, "the builder's cause, not the tightest container"
    assert got["call"].attributes["helix.link"] == "wakeup" and "helix.link.confidence" not in got["call"].attributes
    assert new_span_id() != b""  # keep the import used


def test_under_memory_pressure_only_released_spans_no_late_sdk_span_can_join_are_forgotten() -> None:
    # The governor's drop step takes idle late joins first: those that arrived more than sdk_wait ago. A request's
    # kernel spans released a moment ago stay, and its SDK spans, 5 s late, still join them.
    kernel, sdk_spans, _ = frontend_request(caller=False)
    a = Assembler(AssemblerConfig(window=2.0, sdk_wait=8.0, memory=10.0))
    a.sdk.runs_sdk(1, 0.0)
    old = kspan("old", SpanKind.SERVER, 0, 1, pid=3, tid=30, local=E, peer=F)
    out = a.process([old], now=1.0) + a.process(kernel, now=8.5) + a.process([], now=10.6)
    assert len(out) == 4 and len(a.index) == 4
    assert a.index_budget.drop_idle() == 1
    assert old.span_id not in a.index.by_id and all(s.span_id in a.index.by_id for s in kernel)
    out = a.process(sdk_spans, now=8.5 + SDK_DELAY) + a.process([], now=8.5 + SDK_DELAY + 2.1)
    got = {s.name: s for s in out}
    assert got["frontend"].parent_span_id == kernel[2].span_id
    assert got["frontend"].attributes["helix.link"] == "adopted"


def _leaf_request() -> tuple[list[Span], Span, bytes]:
    """A kernel-only caller (pid 1) -> an SDK service (pid 7) that calls nothing: its request waits for its SDK span."""
    t = new_trace_id()
    k_fs = kspan("k-leaf", SpanKind.SERVER, 1, 99, pid=7, tid=70, local=B, peer=A)
    k_c = kspan("k-caller", SpanKind.CLIENT, 0, 100, pid=1, tid=10, local=A, peer=B)
    return [k_fs, k_c], sdk_in(7, "leaf", SpanKind.SERVER, 2, 98, t), t


def _asm() -> Assembler:
    """pid 7 runs an SDK; pid 1 was seen long ago and runs none (so only the request waits)."""
    a = Assembler(AssemblerConfig(window=2.0, sdk_wait=8.0))
    a.sdk.kernel_seen(1, -100.0)
    a.sdk.runs_sdk(7, -100.0)
    return a


def _earlier_export(n: int, ended_ms: float) -> list[Span]:
    """SDK spans of pid 7's earlier requests, all ended by `ended_ms`: an export taken before the leaf request ended."""
    return [sdk_in(7, f"earlier{n}-{i}", SpanKind.INTERNAL, ended_ms - 50 - i, ended_ms - i, new_trace_id())
            for i in range(3)]


def test_an_export_slowed_on_its_way_does_not_end_the_wait_for_a_span_it_cannot_hold() -> None:
    # The SDK took its batch just before the request ended, and the export reached the agent 1.5 s after the
    # request's kernel span (a loaded node, or the exporter's retry): it holds nothing that ended after the request,
    # so the request's own SDK span is still to come (in the next export, a batch delay later) and the wait goes on.
    kernel, leaf, t = _leaf_request()
    a = _asm()
    got = drive(a, [(0.0, kernel), (1.5, _earlier_export(1, 90)), (6.5, [leaf])], until=20.0)
    assert got["leaf"].trace_id == got["k-leaf"].trace_id == got["k-caller"].trace_id == t
    assert got["leaf"].parent_span_id == kernel[0].span_id and got["leaf"].attributes["helix.link"] == "adopted"
    assert a.stats.unjoined == 0


def test_an_sdk_late_past_sdk_wait_under_load_still_joins_while_it_keeps_exporting() -> None:
    # Load delays the SDK's exports: one came 4 s after the request (taken before it ended), the one with the request's
    # span 9 s after, past sdk_wait (8 s). The SDK is alive and has not exported past the request: it still waits.
    kernel, leaf, t = _leaf_request()
    a = _asm()
    got = drive(a, [(0.0, kernel), (4.0, _earlier_export(1, 95)), (9.0, [leaf])], until=30.0)
    assert got["leaf"].trace_id == got["k-leaf"].trace_id == got["k-caller"].trace_id == t
    assert got["leaf"].parent_span_id == kernel[0].span_id and a.stats.unjoined == 0


def test_a_wait_ends_as_soon_as_the_sdk_exported_a_span_that_ended_after_the_request() -> None:
    # The SDK's export holds a span that ended a second after the request: had the request an SDK span, it would be
    # in it. The wait ends at once, well before sdk_wait, and counts as no expiry.
    kernel, _, _ = _leaf_request()
    a = _asm()
    out = a.process(kernel, now=0.0) + a.process([], now=2.1)
    assert out == [] and a.stats.sdk_waits == 1
    out = a.process(_earlier_export(1, 99 + 1000), now=5.0)
    assert {s.name for s in out} == {"k-leaf", "k-caller"} and a.stats.sdk_wait_expired == 0


def test_a_wait_extended_by_a_late_sdk_is_bounded_and_counted() -> None:
    # An SDK that keeps exporting only spans ended before the request (as if it never ended): the request waits a
    # further sdk_wait after each of those exports, three sdk_waits at most, then leaves, counted as expired.
    kernel, _, _ = _leaf_request()
    a = _asm()
    out = a.process(kernel, now=0.0)
    for i, t in enumerate((5.0, 10.0, 15.0, 20.0)):
        out += a.process(_earlier_export(i, 50), now=t)
    assert not any(s.name.startswith("k-") for s in out) and a.stats.sdk_wait_expired == 0
    out = a.process([], now=23.9)
    assert not any(s.name.startswith("k-") for s in out)
    out = a.process([], now=24.1)
    assert {s.name for s in out} >= {"k-leaf", "k-caller"} and a.stats.sdk_wait_expired == 1


def test_a_silent_sdk_still_ends_the_wait_after_sdk_wait() -> None:
    kernel, _, _ = _leaf_request()
    a = _asm()
    out = a.process(kernel, now=0.0) + a.process([], now=7.9)
    assert out == []
    out = a.process([], now=8.1)
    assert {s.name for s in out} == {"k-leaf", "k-caller"} and a.stats.sdk_wait_expired == 1
