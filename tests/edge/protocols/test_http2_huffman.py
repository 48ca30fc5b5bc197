"""The HPACK Huffman decoder that steps a byte at a time decodes exactly as hpack's own, errors included, and keeps
a bounded table whatever the input."""
from __future__ import annotations

import random

import pytest
from hpack.exceptions import HPACKDecodingError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman

from edge import accel
from tests.edge._implementations import IMPLEMENTATIONS


def _decode(fn, data: bytes) -> object:
    try:
        return fn(data)
    except HPACKDecodingError:
        return HPACKDecodingError


def _http2(implementation: str):
    return accel.modules(implementation)["edge.protocols.http2"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_byte_steps_decode_as_hpack_does_valid_and_invalid(implementation: str) -> None:
    http2 = _http2(implementation)
    enc = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
    r = random.Random(7)
    for _ in range(3000):
        text = bytes(r.randrange(256) for _ in range(r.randrange(0, 48)))
        coded = enc.encode(text)
        assert http2._huffman(coded) == text
        junk = bytes(r.randrange(256) for _ in range(r.randrange(1, 10)))
        assert _decode(http2._huffman, junk) == _decode(decode_huffman, junk)
    with pytest.raises(HPACKDecodingError):
        http2._huffman(b"\xff\xff\xff\xff")  # EOS inside the string


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_the_step_table_stays_bounded_under_hostile_input(implementation: str) -> None:
    http2 = _http2(implementation)
    r = random.Random(8)
    for _ in range(2000):
        _decode(http2._huffman, bytes(r.randrange(256) for _ in range(64)))
    assert len(http2._HUFFMAN_STEPS) <= http2._HUFFMAN_STEPS_MAX
