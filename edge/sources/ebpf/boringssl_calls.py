"""Where gRPC's statically linked BoringSSL keeps SSL_read, SSL_write and SSL_do_handshake, in a binary without symbols
(Python's grpcio: cygrpc*.so), found from how gRPC core calls them.

gRPC's TLS frame protector (tsi/ssl_transport_security.cc) calls each one as `ERR_clear_error(); r = SSL_x(...);`
then `SSL_get_error(ssl, r)` on failure, and the error branch of each references a message of its own. From each
message's references (and the branches into an error block that compilers move to a cold section) the three calls
just before are read: (ERR_clear_error, SSL_x, SSL_get_error). The result is taken only when the three sites agree on
the first and last functions and name three different SSL_x: a wrong offset would put a breakpoint inside an
instruction of the user's process, so anything less certain gives nothing (the file stays named as unreadable).
Each address found must also begin a function in the file's own unwind table (`.eh_frame_hdr`), which the compiler
wrote for every function: a call target decoded from bytes that were not a call is refused there.
x86-64 and aarch64; docs/known-gaps.md has the evidence.
"""
from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterable, Iterator

from .elf import ElfFile

__all__ = ["MESSAGES", "locate", "agree", "function_starts", "x86_64_triples", "aarch64_triples"]

# The error message of each call, as gRPC core logs it (each followed by the error's name).
MESSAGES = {"SSL_read": b"SSL_read failed with error \0", "SSL_write": b"SSL_write failed with error \0",
            "SSL_do_handshake": b"Unexpected error received from first SSL_do_handshake call: \0"}
_EM_X86_64, _EM_AARCH64 = 62, 183
# How far the calls lie before the message's reference (or the branch into its block), and from each other: gRPC
# core's call sites span 8-0x30 bytes and lie within 0xa4 of the reference in grpcio 1.85 on both architectures.
_WINDOW = 0x100
_CLEAR_TO_CALL = 0x20
_CALL_TO_ERROR = 0x48
_INTO_BLOCK = 0x40  # a branch into the error block lands at most this far before the reference
_MAX_TEXT = 64 << 20
# .eh_frame_hdr as GNU ld and lld write it: version 1, the .eh_frame pointer pc-relative sdata4, the count udata4, the
# table of (function start, FDE) pairs datarel sdata4 and sorted by start. Any other encoding is not checked: refused.
_EH_HDR = b"\x01\x1b\x03\x3b"
_EH_ENTRY = struct.Struct("<ii")

Buffer = bytes | memoryview  # the code, or a view of it in the mapped file
Triple = tuple[int, int, int, int]  # ERR_clear_error, SSL_x, SSL_get_error; and where SSL_get_error is called
Sites = list[set[Triple]]  # the triples before each reference of a message (or branch into its block)


def _triples(calls: list[tuple[int, int]]) -> set[Triple]:
    """Every (first, middle, last) call target of three calls in order, close enough together, with the last's
    address."""
    out = set()
    for i, (a, ta) in enumerate(calls):
        for j in range(i + 1, len(calls)):
            b, tb = calls[j]
            if b - a > _CLEAR_TO_CALL:
                break
            for c, tc in calls[j + 1:]:
                if c - b > _CALL_TO_ERROR:
                    break
                out.add((ta, tb, tc, c))
    return out


def x86_64_triples(text: Buffer, base: int, targets: Iterable[int]) -> dict[int, Sites]:
    """For each target address: the call triples before each RIP-relative `lea` of it in `text` (loaded at `base`),
    and before each jump into the block around it."""
    want = set(targets)
    refs: dict[int, list[int]] = {t: [] for t in want}
    for m in re.finditer(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", text):
        p = m.start()
        if p + 7 > len(text):
            continue
        at = base + p + 7 + struct.unpack_from("<i", text, p + 3)[0]
        if at in want:
            refs[at].append(p)
    spots = [(p, t) for t, ps in refs.items() for p in ps]
    if not spots:
        return {t: [] for t in want}
    # jmp rel32 and jcc rel32 whose destination is just before a reference: the entries of error blocks
    entries: dict[int, list[int]] = {p: [] for p, _ in spots}
    for m in re.finditer(rb"\xe9|\x0f[\x80-\x8f]", text):
        p = m.start()
        n = 5 if text[p] == 0xE9 else 6
        if p + n > len(text):
            continue
        dest = p + n + struct.unpack_from("<i", text, p + n - 4)[0]
        for q, _ in spots:
            if 0 <= q - dest <= _INTO_BLOCK:
                entries[q].append(p)
    out: dict[int, Sites] = {t: [] for t in want}
    for q, t in spots:
        for p in entries[q] or [q]:  # a block entered by branches is read from them, else from the reference
            calls = [(base + c, base + c + 5 + struct.unpack_from("<i", text, c + 1)[0])
                     for c in range(max(0, p - _WINDOW), p - 4) if text[c] == 0xE8]
            out[t].append(_triples(calls))
    return out


def _words_with_top_byte(text: Buffer, tops: bytes, lo: int = 0, hi: int | None = None) -> Iterator[int]:
    """Indices of the 32-bit little-endian words of `text` (between word indices lo and hi) whose top byte is one of
    `tops` (the opcode bits of the instructions looked for), without decoding every word."""
    pattern = re.compile(b"(?=[" + b"".join(re.escape(bytes([t])) for t in tops) + b"])")
    end = len(text) if hi is None else min(len(text), 4 * hi)
    return (m.start() >> 2 for m in pattern.finditer(text, max(0, 4 * lo), end) if m.start() & 3 == 3)


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def aarch64_triples(text: Buffer, base: int, targets: Iterable[int]) -> dict[int, Sites]:
    """For each target address: the call triples before each `adrp`+`add` of it in `text` (loaded at `base`), and
    before each branch into the block around it."""
    want = set(targets)
    n = len(text) >> 2
    word = lambda i: struct.unpack_from("<I", text, 4 * i)[0]  # noqa: E731
    spots: list[tuple[int, int]] = []
    for i in _words_with_top_byte(text, bytes([0x90, 0xB0, 0xD0, 0xF0])):
        w = word(i)
        if w & 0x9F000000 != 0x90000000:  # adrp
            continue
        page = ((base + 4 * i) & ~0xFFF) + (_signed(((w >> 5) & 0x7FFFF) << 2 | (w >> 29) & 3, 21) << 12)
        rd = w & 31
        for k in range(i + 1, min(i + 5, n)):
            a = word(k)
            if a & 0xFFC00000 == 0x91000000 and (a >> 5) & 31 == rd:  # add xd, xd, #lo12
                at = page + ((a >> 10) & 0xFFF)
                if at in want:
                    spots.append((k, at))
                break
    if not spots:
        return {t: [] for t in want}
    entries: dict[int, list[int]] = {k: [] for k, _ in spots}
    branches = bytes([0x54, 0x34, 0x35, 0xB4, 0xB5, 0x36, 0x37, 0xB6, 0xB7, 0x14, 0x15, 0x16, 0x17])
    # only where a branch can reach the references from (b.cond, cbz: 1 MiB); a far `b` into a block is not looked
    # for, so that block's site finds no calls and nothing is located
    near = 1 << 18
    for i in _words_with_top_byte(text, branches, min(k for k, _ in spots) - near, max(k for k, _ in spots) + near):
        w = word(i)
        if w & 0xFF000010 == 0x54000000 or w & 0x7E000000 == 0x34000000:  # b.cond, cbz/cbnz: imm19
            off = _signed((w >> 5) & 0x7FFFF, 19)
        elif w & 0x7E000000 == 0x36000000:  # tbz/tbnz: imm14
            off = _signed((w >> 5) & 0x3FFF, 14)
        elif w & 0xFC000000 == 0x14000000:  # b: imm26
            off = _signed(w & 0x3FFFFFF, 26)
        else:
            continue
        dest = i + off
        for k, _ in spots:
            if 0 <= (k - dest) * 4 <= _INTO_BLOCK:
                entries[k].append(i)
    out: dict[int, Sites] = {t: [] for t in want}
    for r, t in spots:
        for k in entries[r] or [r]:  # a block entered by branches is read from them, else from the reference
            calls = []
            for q in range(max(0, k - _WINDOW // 4), k):
                w = word(q)
                if w & 0xFC000000 == 0x94000000:  # bl
                    calls.append((base + 4 * q, base + 4 * (q + _signed(w & 0x3FFFFFF, 26))))
            out[t].append(_triples(calls))
    return out


def agree(found: dict[str, Sites]) -> dict[str, int]:
    """The address of each function when exactly one (ERR_clear_error, SSL_get_error) pair is common to all messages
    and, taking at each site the call nearest to it, names one distinct function for each; else nothing."""
    pairs: set[tuple[int, int]] | None = None
    for sites in found.values():
        here = {(e, g) for triples in sites for e, _, g, _ in triples}
        pairs = here if pairs is None else pairs & here
    if not pairs or len(pairs) != 1:
        return {}
    (e, g), = pairs
    out = {}
    for name, sites in found.items():
        middle = set()
        for triples in sites:
            ours = [(at, f) for te, f, tg, at in triples if (te, tg) == (e, g)]
            if ours:
                middle.add(max(ours)[1])
        if len(middle) != 1:
            return {}
        out[name] = middle.pop()
    return out if len(set(out.values())) == len(out) and not {e, g} & set(out.values()) else {}


def function_starts(hdr: Buffer, hdr_addr: int, addrs: Iterable[int]) -> bool:
    """Whether every address is a function start in the binary search table of an `.eh_frame_hdr` loaded at
    `hdr_addr`."""
    if len(hdr) < 12 or bytes(hdr[:4]) != _EH_HDR:
        return False
    (count,) = struct.unpack_from("<I", hdr, 8)
    if count == 0 or 12 + count * _EH_ENTRY.size > len(hdr):
        return False
    for addr in addrs:
        lo, hi = 0, count
        while lo < hi:
            mid = (lo + hi) // 2
            start = hdr_addr + _EH_ENTRY.unpack_from(hdr, 12 + mid * _EH_ENTRY.size)[0]
            if start < addr:
                lo = mid + 1
            else:
                hi = mid
        if lo == count or hdr_addr + _EH_ENTRY.unpack_from(hdr, 12 + lo * _EH_ENTRY.size)[0] != addr:
            return False
    return True


def locate(elf: ElfFile, fd: int) -> dict[str, int]:
    """File offsets of SSL_read, SSL_write and SSL_do_handshake in gRPC's BoringSSL inside `elf` (open as `fd`), or {}
    when they cannot be found with certainty."""
    text, rodata, eh = elf.section(".text"), elf.section(".rodata"), elf.section(".eh_frame_hdr")
    if text is None or rodata is None or eh is None or text.size > _MAX_TEXT or rodata.size > _MAX_TEXT \
            or eh.size > _MAX_TEXT:
        return {}
    if elf.machine not in (_EM_X86_64, _EM_AARCH64) or not elf.is64:
        return {}
    # The file mapped, not read: read into a worker thread's heap, its ~16 MB stayed resident in the agent after the
    # scan (glibc keeps a thread arena's memory); mapped pages go with the mapping.
    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
        if max(text.offset + text.size, rodata.offset + rodata.size, eh.offset + eh.size) > len(mm):
            return {}
        where: dict[str, int] = {}
        end = rodata.offset + rodata.size
        for name, message in MESSAGES.items():
            at = mm.find(message, rodata.offset, end)
            # one copy, starting a string (not the tail of another one)
            if at < 0 or mm.find(message, at + 1, end) >= 0 or (at > rodata.offset and mm[at - 1] != 0):
                return {}
            where[name] = rodata.addr + at - rodata.offset
        scan = x86_64_triples if elf.machine == _EM_X86_64 else aarch64_triples
        with memoryview(mm) as whole, whole[text.offset: text.offset + text.size] as code:
            by_target = scan(code, text.addr, where.values())
        found = agree({name: by_target[addr] for name, addr in where.items()})
        with memoryview(mm) as whole, whole[eh.offset: eh.offset + eh.size] as hdr:
            if not function_starts(hdr, eh.addr, found.values()):
                return {}
    return {name: addr - text.addr + text.offset for name, addr in found.items()
            if text.addr <= addr < text.addr + text.size}
