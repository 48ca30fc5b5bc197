"""TCP connect spans, and retransmits and resets as span events."""
from __future__ import annotations

import errno

from edge.model import SpanKind, StatusCode
from edge.sources.ebpf.events import ConnectEvent, Endpoint, FaultKind, TcpFaultEvent
from ._helpers import OFFSET, SRV, CLI, IN, OUT, builder, data, req, resp


def test_connect_spans():
    b = builder()
    ok = ConnectEvent(50_000, 200, "client", 11, CLI, SRV, latency_ns=30_000)
    bad = ConnectEvent(90_000, 200, "client", 12, CLI, Endpoint("10.0.0.99", 81), latency_ns=3_000_000, error=errno.ECONNREFUSED)
    s1, s2 = b.feed([ok, bad])
    assert (s1.name, s1.kind) == ("tcp.connect", SpanKind.CLIENT)
    assert (s1.start_ns, s1.end_ns) == (OFFSET + 20_000, OFFSET + 50_000)
    assert s1.attributes["network.peer.address"] == "10.0.0.5" and s1.attributes["network.transport"] == "tcp"
    assert s1.status_code == StatusCode.UNSET
    assert s2.status_code == StatusCode.ERROR and s2.attributes["error.type"] == "ECONNREFUSED"
    assert s2.status_message == "Connection refused"


def test_faults_become_span_events():
    b = builder()
    b.feed([data(1, IN, 1_000, req())])
    b.feed([TcpFaultEvent(1_500, FaultKind.RETRANSMIT, 1, SRV, CLI, 1)])
    sp = b.feed([data(1, OUT, 2_000, resp())])[0]
    assert [(e.name, e.time_ns, e.attributes["tcp.state"]) for e in sp.events] == [("tcp.retransmit", OFFSET + 1_500, "ESTABLISHED")]
    # A fault between exchanges waits for the next span on that connection.
    b.feed([TcpFaultEvent(3_000, FaultKind.RECEIVE_RESET, 1, SRV, CLI, 7)])
    b.feed([data(1, IN, 4_000, req(), prev_bytes=10, prev_end=2_500)])
    sp2 = b.feed([data(1, OUT, 5_000, resp(), prev_bytes=10, prev_end=4_500)])[0]
    assert [e.name for e in sp2.events] == ["tcp.reset.received"]
    # No state for that socket: counted.
    b.feed([TcpFaultEvent(6_000, FaultKind.SEND_RESET, 999, SRV, CLI, 7)])
    assert b.stats.faults_orphaned == 1 and b.stats.faults_attached == 2
