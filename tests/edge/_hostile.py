"""Hypothesis strategies for hostile input, shared by the decoders' property tests: the values and shapes that broke
decoders before (huge integers, deep nesting, wrong types, huge counts), mixed with ordinary ones."""
from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Past 64 bits, past Python's 4,300-digit int-to-str limit, negative, and ordinary.
# (Built by a map: hypothesis cannot repr a strategy holding an integer past the 4,300-digit limit.)
huge_ints = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([(1, 2, 64), (1, 2, 64, -1), (-1, 2, 63, -1), (1, 10, 4301), (-1, 10, 5000), (1, 2, 20000)]).map(
        lambda t: t[0] * t[1] ** t[2] + (t[3] if len(t) > 3 else 0)),
)
# Every JSON/CBOR scalar type, including the floats that are not numbers.
scalars = st.one_of(st.none(), st.booleans(), huge_ints, st.floats(), st.text(max_size=40), st.binary(max_size=40))
# Nested values of any type, a few levels.
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.one_of(st.text(max_size=8), st.integers(-3, 20)), inner, max_size=4), max_leaves=20)


def nested(depth: int, leaf: Any = 1) -> Any:
    """A list nested `depth` deep, built without recursion."""
    out: Any = leaf
    for _ in range(depth):
        out = [out]
    return out


# Deep enough to pass any sane bound; the encoders themselves recurse, so stay under Python's recursion limit.
depths = st.sampled_from([1, 5, 33, 100, 400, 900])
# Counts for "a list of N": small, and past every per-message bound.
counts = st.sampled_from([0, 1, 129, 10_001, 20_000])


def deep_json(depth: int, open_: str = "[", close: str = "]") -> bytes:
    """JSON text nested `depth` deep, far past the recursion limit if asked (the bytes, not a Python object)."""
    return (open_ * depth + "1" + close * depth).encode() if open_ == "[" else (
        '{"a":' * depth + "1" + "}" * depth).encode()


def cbor_header(major: int, n: int) -> bytes:
    """A CBOR item head of major type `major` declaring `n` (a count or a length), with no content after it."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError(n)
