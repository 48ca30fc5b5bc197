"""Confirmation messages: what a gateway writes, a node reads back; anything else is a DecodeError, never a crash."""
from __future__ import annotations

import cbor2
import pytest

from edge.errors import DecodeError
from uplink.confirm import MAX_CONFIRMS, Settled, decode_confirm, encode_confirm


def test_round_trip() -> None:
    pairs = [(1, Settled.EXPORTED), (2**63, Settled.DUPLICATE), (7, Settled.REFUSED), (8, Settled.DROPPED)]
    assert decode_confirm(encode_confirm(pairs)) == pairs


@pytest.mark.parametrize("body", [
    [[10**5000, 0, 1]],  # a huge integer in a malformed pair: its repr alone would raise ValueError
    [[-1, 0]], [[1, 99]], [[1.5, 0]], {"seq": 1}, [[1]], [[[[[[1]]]]]],
    [[i, 0] for i in range(MAX_CONFIRMS + 1)],
])
def test_hostile_messages_are_decode_errors(body: object) -> None:
    with pytest.raises(DecodeError):
        decode_confirm(b"HA\x01" + cbor2.dumps(body))


@pytest.mark.parametrize("data", [b"", b"HA", b"XX\x01\x80", b"HA\x02\x80", b"HA\x01\xff\xff", b"HA\x01" + bytes(60000)])
def test_not_a_confirmation(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_confirm(data)
