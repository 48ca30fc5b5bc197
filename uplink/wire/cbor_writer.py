"""CBOR bytes of a batch body, exactly as `cbor2.dumps` writes them with its default options.

A columnar body is mostly arrays of small integers and texts; cbor2 spends a few hundred nanoseconds on every array
(it tracks each container it enters), which was a fifth of encoding a 32-span batch. Written here in typed form, which
the accelerator compiles (edge/accel.py): integers, texts, byte strings, arrays, maps, null and booleans are written
directly; anything else (floats, tags, tuples, integers beyond 64 bits, texts that are not valid Unicode) is handed
to cbor2 for that value alone, so the bytes and the errors stay cbor2's.
"""
from __future__ import annotations

from typing import Any

import cbor2

__all__ = ["dumps"]

_U64 = 1 << 64


def dumps(doc: Any) -> bytes:
    """`doc` as CBOR, byte for byte what `cbor2.dumps(doc)` returns."""
    out = bytearray()
    _value(out, doc)
    return bytes(out)


def _head(out: bytearray, major: int, n: int) -> None:
    """A CBOR item head: the major type and its argument `n` (0 <= n < 2**64) in the fewest bytes."""
    m = major << 5
    if n < 24:
        out.append(m | n)
    elif n < 0x100:
        out.append(m | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(m | 25)
        out += n.to_bytes(2, "big")
    elif n < 0x100000000:
        out.append(m | 26)
        out += n.to_bytes(4, "big")
    else:
        out.append(m | 27)
        out += n.to_bytes(8, "big")


def _int(out: bytearray, v: int) -> None:
    if 0 <= v < _U64:
        _head(out, 0, v)
    elif -_U64 <= v < 0:
        _head(out, 1, -1 - v)
    else:  # a bignum (tag 2 or 3)
        out += cbor2.dumps(v)


def _text(out: bytearray, s: str) -> None:
    try:
        b = s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: cbor2's own handling, and its error
        out += cbor2.dumps(s)
        return
    _head(out, 3, len(b))
    out += b


def _list(out: bytearray, xs: list[Any]) -> None:
    _head(out, 4, len(xs))
    # Integers below 2**16 in either sign (references, deltas, counts: most items of a body) gather as byte values in
    # a list, written with one append per run: compiled, bytearray.append is a Python method call per byte.
    run: list[int] = []
    for x in xs:
        if type(x) is int:
            i: int = x
            if 0 <= i < 24:
                run.append(i)
                continue
            if -24 <= i < 0:
                run.append(0x1F - i)  # 0x20 | (-1 - i)
                continue
            m = 0
            if i < 0:
                m = 0x20
                i = -1 - i
            if i < 0x100:
                run.append(m | 24)
                run.append(i)
                continue
            if i < 0x10000:
                run.append(m | 25)
                run.append(i >> 8)
                run.append(i & 0xFF)
                continue
        if run:
            out += bytes(run)
            run = []
        if type(x) is int:
            _int(out, x)
        elif type(x) is str:
            _text(out, x)
        else:
            _value(out, x)
    if run:
        out += bytes(run)


def _value(out: bytearray, v: Any) -> None:
    t = type(v)
    if t is int:
        _int(out, v)
    elif t is list:
        _list(out, v)
    elif t is str:
        _text(out, v)
    elif t is bytes:
        b: bytes = v
        _head(out, 2, len(b))
        out += b
    elif v is None:
        out.append(0xF6)
    elif t is dict:
        d: dict[Any, Any] = v
        _head(out, 5, len(d))
        for k, x in d.items():
            _value(out, k)
            _value(out, x)
    elif t is bool:
        out.append(0xF5 if v else 0xF4)
    else:  # floats, tags (binary texts of version 4), tuples, bytearrays, anything else: cbor2's bytes for it
        out += cbor2.dumps(v)
