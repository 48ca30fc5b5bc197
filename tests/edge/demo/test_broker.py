from __future__ import annotations

import socket

import pytest

import edge.demo.broker as broker_mod
from edge.demo.broker import Mosquitto, _ephemeral_range, free_port
from edge.errors import HelixError


def test_free_ports_come_from_below_the_ephemeral_range_and_bind() -> None:
    low, high = _ephemeral_range()
    assert 0 < low <= high
    for _ in range(20):
        port = free_port()
        assert 10000 <= port < low, "an outgoing connection could take a port of the ephemeral range first"
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", free_port()))
    s.listen()
    return s


def test_a_broker_on_a_port_it_chose_moves_when_something_takes_that_port_first() -> None:
    taken = _listener()
    try:
        broker = Mosquitto()
        broker.port = taken.getsockname()[1]  # as if another process bound it between choosing and starting
        with broker:
            assert broker.port != taken.getsockname()[1]
            with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
                pass
    finally:
        taken.close()


def test_a_broker_given_a_taken_port_says_so() -> None:
    taken = _listener()
    try:
        with pytest.raises(HelixError, match="in use"):
            Mosquitto(port=taken.getsockname()[1]).start()
    finally:
        taken.close()


def test_free_ports_are_not_handed_out_twice_before_they_are_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    first = free_port()
    picks = iter([first, first, first + 1, first + 2, first + 3])
    monkeypatch.setattr(broker_mod.random, "randrange", lambda *_: next(picks))
    assert free_port() != first  # `first` is free again, but a caller may be about to bind it
