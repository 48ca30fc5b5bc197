"""Process and connection state: bounded, oldest evicted first, freed when a connection or process ends."""
from __future__ import annotations

from edge.model import StatusCode
from edge.sources.ebpf.events import CloseEvent, Endpoint, ExecEvent, ExitEvent, FileIoEvent, FileOp
from ._helpers import OFFSET, IN, OUT, builder, data, req, resp, assert_clean


def test_ten_thousand_connections_leave_no_state():
    b = builder()
    spans = 0
    for i in range(10_000):
        r, s = req(target=f"/c{i}"), resp()
        spans += len(b.feed([
            data(i + 1, IN, i * 10_000, r, remote=Endpoint("10.1.0.1", 1024 + i % 60000), pid=100 + i % 7),
            data(i + 1, OUT, i * 10_000 + 500, s, size=len(s) + 10, prev_bytes=len(r), prev_end=i * 10_000 + 100, pid=100 + i % 7),
            CloseEvent(i * 10_000 + 900, 100 + i % 7, 101, 7, i + 1, len(s) + 10, i * 10_000 + 800, 0),
        ]))
    assert spans == 10_000
    assert_clean(b)
    assert b.stats.evicted_connections == 0


def test_connection_table_is_bounded_lru():
    b = builder(max_connections=100, max_processes=10)
    for i in range(150):
        b.feed([data(i + 1, IN, i, req(), pid=1000 + i)])
    assert b.connection_count == 100 and b.stats.evicted_connections == 50
    assert b.stats.pending_dropped == 50
    assert b.process_count == 10 and b.stats.evicted_processes == 140
    assert sum(len(v) for v in b.conns.by_pid.values()) == 100


def test_long_comm_replaced_by_exec_name():
    b = builder()
    b.feed([ExecEvent(1, 401, 1, "inventory-servi", "/opt/app/inventory-service")])
    sp = b.feed([FileIoEvent(1, 2, 401, 401, FileOp.WRITE, 3, 10, "x")])[0]
    assert sp.resource.service_name == "inventory-service"


def test_service_name_is_the_one_spans_get():
    b = builder()
    [s] = b.feed([data(1, IN, 1000, req(), pid=321, comm="inventory"), data(1, OUT, 5000, resp(), pid=321,
                                                                         comm="inventory")])
    assert b.service_name(321, "inventory") == s.resource.service_name == "inventory"
    b.feed([ExecEvent(1, 654, 1, "a-very-long-com", "/usr/bin/a-very-long-command-name")])
    assert b.service_name(654, "a-very-long-com") == "a-very-long-command-name"


def test_process_exit_mid_request_emits_incomplete_and_frees_state():
    b = builder()
    b.feed([ExecEvent(500, 100, 1, "api", "/usr/local/bin/api-server")])
    b.feed([data(1, IN, 1_000, req(), end=1_200), data(2, IN, 1_500, req(target="/other"), end=1_600)])
    assert b.connection_count == 2
    spans = b.feed([ExitEvent(9_000, 100, "api", 137)])
    assert len(spans) == 2
    for sp in spans:
        assert sp.status_code == StatusCode.ERROR and sp.attributes["helix.incomplete"] is True
        assert sp.end_ns == OFFSET + 9_000
        assert "exited" in sp.status_message
        assert sp.resource.as_dict()["process.executable.path"] == "/usr/local/bin/api-server"
    assert b.process_count == 0
    assert_clean(b)
