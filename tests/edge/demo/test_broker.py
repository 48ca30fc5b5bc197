from __future__ import annotations

import socket

from edge.demo.broker import _ephemeral_range, free_port


def test_free_ports_come_from_below_the_ephemeral_range_and_bind() -> None:
    low, high = _ephemeral_range()
    assert 0 < low <= high
    for _ in range(20):
        port = free_port()
        assert 10000 <= port < low, "an outgoing connection could take a port of the ephemeral range first"
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
