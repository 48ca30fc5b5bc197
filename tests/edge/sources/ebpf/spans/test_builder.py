"""The span builder as a whole: unrecognised bytes, clocks, kernel sampling randomness, hostile event
sequences, its configuration."""
from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from edge import accel
from edge.model import Source, SpanKind, StatusCode
from edge.sources.ebpf.events import CloseEvent, ConnectEvent, DataMoreEvent, ExitEvent, FaultKind, Role, TcpFaultEvent
from edge.sources.ebpf.spans import FixedClock, SpanBuilder, SpanBuilderConfig, SystemClock
from tests.edge._implementations import IMPLEMENTATIONS
from tests.edge.protocols import mqtt_encode as enc
from ._helpers import SRV, CLI, SID, TID, TP, IN, OUT, builder, data, req, resp, assert_clean, dataclasses_replace


def test_garbage_and_tls_are_counted_not_spans():
    b = builder()
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(200))
    noise = bytes(range(255, 0, -1))
    out = b.feed([data(1, IN if i % 2 == 0 else OUT, i * 1_000, hello if i % 2 == 0 else noise) for i in range(5)])
    # TLS records are TLS (a handshake, or ciphertext the probes cannot read), not an unknown protocol
    assert out == [] and b.stats.tls_records == 3 and b.stats.unparsed == 2
    assert b.conns.get(1).opaque  # written off as opaque: later messages skip the parsers
    b.feed([CloseEvent(10_000, 100, 101, 7, 1, 0, 0, 0)])
    assert_clean(b)
    # noise alone: written off as opaque after three misses
    out = b.feed([data(2, IN if i % 2 == 0 else OUT, i * 1_000, noise) for i in range(3)])
    assert out == [] and b.stats.unparsed == 5 and b.conns.get(2).opaque
    b.feed([CloseEvent(10_000, 100, 101, 7, 2, 0, 0, 0)])
    assert_clean(b)


def test_clock_resync():
    clock = FixedClock(offset_ns=1_000, now_ns=0)
    b = SpanBuilder(SpanBuilderConfig(clock_resync=10.0, host_name="h"), clock)
    assert b.feed([ConnectEvent(100, 1, "c", 1, CLI, SRV, 10)])[0].end_ns == 1_100
    clock.offset_ns = 5_000
    clock.now_ns = 9_000_000_000
    assert b.feed([ConnectEvent(100, 1, "c", 1, CLI, SRV, 10)])[0].end_ns == 1_100  # not yet due
    clock.now_ns = 10_000_000_000
    assert b.feed([ConnectEvent(100, 1, "c", 1, CLI, SRV, 10)])[0].end_ns == 5_100


def test_system_clock_offset_matches_time_module():
    offset = SystemClock().wall_offset_ns()
    direct = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert abs(offset - direct) < 50_000_000


_payloads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([req(), resp(), resp(500), enc.connect("x"), enc.publish("t", b"p"), b"HTTP/1.1 200", b"GET /"]),
    st.builds(lambda a, n: a[:n], st.sampled_from([req(body=b"abc"), resp(body=b"x" * 50), enc.publish("t/t", b"x" * 40, qos=1)]),
              st.integers(0, 100)),
)


_events = st.lists(
    st.one_of(
        st.builds(lambda sock, d, ts, p, size, pb, pe, role: data(sock, d, ts, p, size=size, prev_bytes=pb, prev_end=pe, role=role),
                  st.integers(1, 4), st.sampled_from([IN, OUT]), st.integers(0, 10**6), _payloads, st.integers(0, 10**6),
                  st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from(list(Role))),
        st.builds(lambda sock, d, ts, off, p: DataMoreEvent(ts, ts + 10, sock, 100, 101, d, off, p),
                  st.integers(1, 4), st.sampled_from([IN, OUT]), st.integers(0, 10**6), st.integers(0, 300), _payloads),
        st.builds(lambda sock, ts: CloseEvent(ts, 100, 101, 7, sock, 10, ts, 0), st.integers(1, 4), st.integers(0, 10**6)),
        st.builds(lambda sock, k: TcpFaultEvent(1, k, sock, SRV, CLI, 1), st.integers(1, 6), st.sampled_from(list(FaultKind))),
        st.just(ExitEvent(5, 100, "api", 0)),
    ),
    max_size=40,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_events)
def test_hostile_event_sequences_never_raise_and_state_drains(events):
    b = builder(max_connections=3)
    b.feed(events)
    b.flush(10**15)
    assert b.stats.internal_errors == 0
    b.feed([CloseEvent(0, 100, 101, 7, s, 0, 0, 0) for s in range(1, 7)])
    assert_clean(b)


def test_config_rejects_nonsense_with_the_key_named():
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match="max_connections"):
        SpanBuilderConfig(max_connections=0)
    with pytest.raises(ConfigError, match="response_timeout"):
        SpanBuilderConfig(response_timeout=-1)


def test_kernel_randomness_becomes_the_traces_randomness():
    from edge.sampler.consistent import ConsistentSampler, randomness

    b = builder()
    rv = 0x9A0B1C2D3E4F50
    spans = b.feed([dataclasses_replace(data(1, IN, 1000, req()), rv=rv), data(1, OUT, 5000, resp())])
    [s] = spans
    assert s.attributes["helix.context_from"] == "none" and s.parent_span_id == b""
    assert s.trace_state == "ot=rv:9a0b1c2d3e4f50"
    assert int.from_bytes(s.trace_id[9:], "big") == rv == randomness(s.trace_id, s.trace_state)
    assert ConsistentSampler(0.5).keeps(s.trace_id, s.trace_state)
    assert not ConsistentSampler(0.25).keeps(s.trace_id, s.trace_state)
    # A request with wire context keeps the wire's trace and tracestate: the kernel reports no R for those.
    [w] = b.feed([dataclasses_replace(data(2, IN, 9000, req(headers=(f"traceparent: {TP}",))), rv=rv),
                  data(2, OUT, 9500, resp())])
    assert w.trace_id.hex() == TID and w.trace_state == ""
    # Without kernel randomness nothing is added.
    [n] = b.feed([data(3, IN, 10000, req()), data(3, OUT, 10500, resp())])
    assert n.trace_state == ""


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_span_and_trace_ids_are_random_valid_and_never_repeat(implementation, monkeypatch):
    spans_mod = accel.modules(implementation)["edge.sources.ebpf.spans"]
    b = spans_mod.SpanBuilder(spans_mod.SpanBuilderConfig(host_name="h"), spans_mod.FixedClock())
    ids = [b.new_span_id() for _ in range(3000)]  # several batches of the kernel's randomness
    traces = [b.new_trace_id() for _ in range(1000)]
    assert {len(i) for i in ids} == {8} and {len(t) for t in traces} == {16}
    assert len(set(ids)) == len(ids) and len(set(traces)) == len(traces)
    # The all-zero id is invalid (W3C): skipped, never handed out.
    batches = iter([bytes(8) + b"\x01" * 8 + bytes(16) + b"\x02" * 16, b"\x03" * 4096])
    monkeypatch.setattr(os, "urandom", lambda n: next(batches))
    b = spans_mod.SpanBuilder(spans_mod.SpanBuilderConfig(host_name="h"), spans_mod.FixedClock())
    assert b.new_span_id() == b"\x01" * 8
    assert b.new_trace_id() == b"\x02" * 16  # the zero trace id skipped
    assert b.new_trace_id() == b"\x03" * 16  # a new batch where the rest is too short


def test_a_socket_seen_again_with_other_ports_is_a_new_connection():
    """A connection closed unseen and a new one whose socket reuses its kernel object: the new one's spans carry its
    own ports, and the old one's open request ends there."""
    from edge.sources.ebpf.events import Endpoint
    from ._helpers import CLI, IN, OUT, SRV, builder, data, req, resp
    b = builder()
    old, new = Endpoint(CLI.addr, 40001), Endpoint(CLI.addr, 40002)
    kw = {"role": Role.CLIENT, "remote": SRV}
    out = b.feed([data(5, OUT, 1_000, req(target="/a"), local=old, **kw)])  # never answered: closed unseen
    r = req(target="/b")
    out += b.feed([data(5, OUT, 5_000, r, local=new, **kw),
                   data(5, IN, 6_000, resp(), local=new, prev_bytes=len(r), prev_end=5_100, **kw)])
    got = {s.attributes["url.path"]: s for s in out}
    assert got["/b"].attributes["network.local.port"] == 40002
    assert got["/a"].attributes["network.local.port"] == 40001 and b.stats.reused_sockets == 1


def test_spans_are_made_in_the_models_field_order():
    # SpanBuilder.span passes model.Span's fields by position: a field added or moved there must show up here.
    import dataclasses

    from edge.model import Span

    assert [f.name for f in dataclasses.fields(Span)][:17] == [
        "trace_id", "span_id", "name", "start_ns", "end_ns", "parent_span_id", "kind", "status_code", "status_message",
        "attributes", "events", "links", "resource", "scope", "source", "trace_state", "flags"]
    r = req(headers=[f"traceparent: {TP}"])
    spans = builder().feed([data(1, IN, 1_000, r), data(1, OUT, 5_000, resp(), prev_bytes=len(r), prev_end=2_000)])
    assert len(spans) == 1  # the response fitted its first write: the exchange is over
    sp = spans[0]
    assert (sp.trace_id.hex(), sp.parent_span_id.hex(), sp.flags, sp.trace_state) == (TID, SID, 1, "")
    assert (sp.status_code, sp.status_message, sp.events, sp.links) == (StatusCode.UNSET, "", (), ())
    assert sp.name == "GET" and sp.kind == SpanKind.SERVER and sp.source == Source.EBPF and sp.scope.name == "helix.ebpf"
    assert sp.end_ns > sp.start_ns and sp.attributes["url.path"] == "/api/orders"
