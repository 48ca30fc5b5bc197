"""The HTTP/2 frame reader and HPACK decoder give the same output in both implementations (edge/accel.py): header
blocks as python-hyper's hpack decodes them, and for cut or hostile bytes the same fields, unknowns and cuts."""
from __future__ import annotations

import random

import hpack
import pytest

from edge import accel
from tests.edge._implementations import IMPLEMENTATIONS

_NAMES = ["content-type", "grpc-timeout", "traceparent", "user-agent", "x-custom", ":path", "grpc-status"]


def _http2(implementation: str):
    return accel.modules(implementation)["edge.protocols.http2"]


def _blocks(seed: int, n: int) -> list[tuple[list[tuple[str, str]], bytes]]:
    """Header lists and their encoding by one hpack Encoder (dynamic table, Huffman, a table size change)."""
    r = random.Random(seed)
    enc = hpack.Encoder()
    out = []
    for i in range(n):
        if i == n // 2:
            enc.header_table_size = 256
        headers = [(r.choice(_NAMES), "".join(r.choice("abc-/0123456789é") for _ in range(r.randrange(0, 30))))
                   for _ in range(r.randrange(1, 8))]
        out.append((headers, enc.encode(headers, huffman=r.random() < 0.7)))
    return out


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_header_blocks_decode_as_hpack_decodes_them(implementation: str) -> None:
    http2 = _http2(implementation)
    dec = http2.HeaderDecoder(complete=True)
    for headers, block in _blocks(3, 300):
        got = dec.decode(block)
        assert got.fields == headers and not got.partial


def _decoded(http2, blocks: list[bytes]) -> list[tuple[list[tuple[str, str]], int, bool]]:
    dec = http2.HeaderDecoder(complete=True)
    out = []
    for block in blocks:
        got = dec.decode(block, truncated=len(block) % 5 == 0)
        out.append((got.fields, got.unknown, got.truncated))
    return out


def test_both_implementations_agree_on_cut_and_hostile_blocks() -> None:
    if "compiled" not in accel.implementations():
        pytest.skip(f"accelerator not in use: {accel.status().detail}")
    r = random.Random(4)
    blocks = []
    for _, block in _blocks(5, 200):
        blocks.append(block[: r.randrange(len(block) + 1)])  # cut anywhere
        blocks.append(bytes(r.randrange(256) for _ in range(r.randrange(1, 40))))  # garbage
    assert _decoded(_http2("pure"), blocks) == _decoded(_http2("compiled"), blocks)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_frames_reassembled_across_any_split(implementation: str) -> None:
    http2 = _http2(implementation)
    frames_in = [(4, 0, 0, b"\x00\x03\x00\x00\x00\x64"), (1, 4, 1, b"\x82\x86"), (0, 1, 1, b"x" * 20),
                 (8, 0, 0, b"\x00\x00\x10\x00"), (3, 0, 3, b"\x00" * 4)]
    stream = b"".join(len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload
                      for ftype, flags, sid, payload in frames_in)
    kept, frames = http2.frame_mode_bytes(stream)
    whole = [(f.type, f.flags, f.stream_id, f.length, f.payload) for f in http2.FrameReader().feed_kept(kept)]
    assert len(whole) == frames == 5 and whole[2][4] is None  # a DATA payload is not sent in frame mode
    r = random.Random(6)
    for _ in range(50):
        reader = http2.FrameReader()
        cuts = sorted(r.sample(range(1, len(kept)), 3))
        got = []
        for a, b in zip([0, *cuts], [*cuts, len(kept)]):
            got += [(f.type, f.flags, f.stream_id, f.length, f.payload) for f in reader.feed_kept(kept[a:b])]
        assert got == whole
