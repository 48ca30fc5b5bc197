"""Locating gRPC core's BoringSSL calls in a binary without symbols: in the grpcio installed here, in hand-assembled
x86-64 and aarch64 code with the same shapes (call sites inline and error blocks moved away), and failing closed."""
from __future__ import annotations

import glob
import shutil
import struct
import sysconfig
from pathlib import Path

import pytest

from edge.sources.ebpf.boringssl_calls import MESSAGES, aarch64_triples, agree, function_starts, locate, x86_64_triples
from edge.sources.ebpf.elf import read_elf
from edge.sources.ebpf.tls_libs import GRPC_BORINGSSL, Catalog

BASE, CLEAR, GET_ERROR = 0x10000, 0x90000, 0x90100
FUNCS = {"SSL_read": 0x90200, "SSL_write": 0x90300, "SSL_do_handshake": 0x90400}
STRINGS = {name: 0x200000 + 0x100 * i for i, name in enumerate(MESSAGES)}


def cygrpc() -> str:
    """grpcio's extension module, as installed with the test extra."""
    found = glob.glob(f"{sysconfig.get_paths()['purelib']}/grpc/_cython/cygrpc*.so")
    assert found, "grpcio is not installed (pip install -e '.[test]')"
    return found[0]


def test_grpcio_installed_here_has_its_three_calls_located() -> None:
    elf, reader = read_elf(cygrpc())
    try:
        found = locate(elf, reader.fd)
        text = elf.section(".text")
        assert text is not None
    finally:
        reader.close()
    assert set(found) == set(MESSAGES) and len(set(found.values())) == 3, found
    assert all(text.offset <= off < text.offset + text.size for off in found.values())


def test_a_grpcio_whose_messages_changed_stays_unreadable(tmp_path: Path) -> None:
    # a release that words one message otherwise: nothing is located, the file stays named as unreadable
    copy = tmp_path / "cygrpc.so"
    shutil.copy(cygrpc(), copy)
    data = bytearray(copy.read_bytes())
    at = data.find(MESSAGES["SSL_write"])
    data[at:at + 4] = b"ssl_"
    copy.write_bytes(bytes(data))
    elf, reader = read_elf(str(copy))
    try:
        assert locate(elf, reader.fd) == {}
    finally:
        reader.close()
    key_code = Catalog().classify(str(copy), str(copy), executable=False)
    assert key_code is not None and key_code[1].stack == "BoringSSL (static, no symbols)"
    assert not key_code[1].readable


def test_the_installed_grpcio_is_classified_readable() -> None:
    key_code = Catalog().classify(cygrpc(), cygrpc(), executable=False)
    assert key_code is not None and key_code[1].stack == GRPC_BORINGSSL and key_code[1].readable
    assert set(key_code[1].functions) == set(MESSAGES)


# x86-64: e8 call rel32, 48 8d 15 lea rel32(%rip),%rdx, 0f 85 jne rel32, 90 nop
class X86:
    def __init__(self) -> None:
        self.code = bytearray()

    def pc(self) -> int:
        return BASE + len(self.code)

    def call(self, to: int) -> None:
        self.code += b"\xe8" + struct.pack("<i", to - (self.pc() + 5))

    def lea(self, to: int) -> None:
        self.code += b"\x48\x8d\x15" + struct.pack("<i", to - (self.pc() + 7))

    def jne(self, to: int) -> None:
        self.code += b"\x0f\x85" + struct.pack("<i", to - (self.pc() + 6))

    def nops(self, n: int) -> None:
        self.code += b"\x90" * n


def x86_code(cold: set[str], clear: int = CLEAR) -> bytes:
    """gRPC core's three call sites; the error blocks of the `cold` ones at the end of the code."""
    a = X86()
    later: list[tuple[int, str]] = []
    for name, func in FUNCS.items():
        a.nops(32)
        a.call(clear)
        a.nops(8)
        a.call(func)
        a.nops(12)
        a.call(GET_ERROR)
        a.nops(3)
        if name in cold:
            later.append((len(a.code), name))
            a.jne(0)
        else:
            a.nops(20)
            a.lea(STRINGS[name])
    for at, name in later:
        a.nops(64)
        block = a.pc()
        a.code[at + 2: at + 6] = struct.pack("<i", block - (BASE + at + 6))
        a.nops(17)
        a.lea(STRINGS[name])
    return bytes(a.code)


def aarch64_code(cold: set[str]) -> bytes:
    words: list[int] = []
    later: list[tuple[int, str]] = []
    pc = lambda: BASE + 4 * len(words)  # noqa: E731
    bl = lambda to: words.append(0x94000000 | ((to - pc()) >> 2) & 0x3FFFFFF)  # noqa: E731

    def ref(to: int) -> None:
        imm = ((to & ~0xFFF) - (pc() & ~0xFFF)) >> 12
        words.append(0x90000000 | (imm & 3) << 29 | ((imm >> 2) & 0x7FFFF) << 5 | 2)  # adrp x2
        words.append(0x91000000 | (to & 0xFFF) << 10 | 2 << 5 | 2)  # add x2, x2, #lo12

    nops = lambda n: words.extend([0xD503201F] * n)  # noqa: E731
    for name, func in FUNCS.items():
        nops(8)
        bl(CLEAR)
        nops(2)
        bl(func)
        nops(5)
        bl(GET_ERROR)
        nops(1)
        if name in cold:
            later.append((len(words), name))
            words.append(0)
        else:
            nops(12)
            ref(STRINGS[name])
    for at, name in later:
        nops(16)
        words[at] = 0x54000001 | ((len(words) - at) & 0x7FFFF) << 5  # b.ne
        nops(6)
        ref(STRINGS[name])
    return struct.pack(f"<{len(words)}I", *words)


@pytest.mark.parametrize("cold", [set(), {"SSL_write", "SSL_do_handshake"}, set(FUNCS)])
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_call_sites_inline_or_with_their_error_blocks_moved_away(arch: str, cold: set[str]) -> None:
    scan, code = (x86_64_triples, x86_code(cold)) if arch == "x86_64" else (aarch64_triples, aarch64_code(cold))
    by_target = scan(code, BASE, STRINGS.values())
    assert agree({name: by_target[at] for name, at in STRINGS.items()}) == FUNCS


def test_sites_that_disagree_give_nothing() -> None:
    # one site calls another function first: no single (ERR_clear_error, SSL_get_error) pair, so no guess
    code = bytearray(x86_code(set()))
    other = x86_code(set(), clear=CLEAR + 0x10)
    third = len(code) * 2 // 3
    code[third:] = other[third:]
    by_target = x86_64_triples(bytes(code), BASE, STRINGS.values())
    assert agree({name: by_target[at] for name, at in STRINGS.items()}) == {}


def test_a_missing_site_gives_nothing() -> None:
    by_target = aarch64_triples(aarch64_code(set()), BASE, [*STRINGS.values(), 0x300000])
    found = {name: by_target[at] for name, at in STRINGS.items()}
    found["SSL_read"] = by_target[0x300000]  # a message nothing references
    assert agree(found) == {}


def _eh_frame_hdr(at: int, starts: list[int]) -> bytes:
    """An .eh_frame_hdr loaded at `at` whose table names these function starts (datarel sdata4, sorted)."""
    table = b"".join(struct.pack("<ii", s - at, 0x100) for s in sorted(starts))
    return b"\x01\x1b\x03\x3b" + struct.pack("<iI", 0, len(starts)) + table


def test_located_addresses_must_begin_functions_in_the_unwind_table() -> None:
    hdr = _eh_frame_hdr(0x5000, [0x1000, 0x2000, 0x3000])
    assert function_starts(hdr, 0x5000, [0x1000, 0x3000])
    assert not function_starts(hdr, 0x5000, [0x2004])  # inside a function: refused
    assert not function_starts(hdr, 0x5000, [0x4000])  # past the last one
    assert not function_starts(b"\x01\x1b\x03\x1b" + hdr[4:], 0x5000, [0x1000])  # an encoding not checked
    assert not function_starts(hdr[:20], 0x5000, [0x1000])  # a table cut short


def test_a_grpcio_whose_unwind_table_does_not_name_the_calls_stays_unreadable(tmp_path: Path) -> None:
    # A call target that the unwind table does not name as a function start is not a breakpoint the agent sets.
    elf, reader = read_elf(cygrpc())
    try:
        found = locate(elf, reader.fd)
        text, eh = elf.section(".text"), elf.section(".eh_frame_hdr")
    finally:
        reader.close()
    assert text is not None and eh is not None and found
    data = bytearray(Path(cygrpc()).read_bytes())
    read_at = found["SSL_read"] - text.offset + text.addr
    count = struct.unpack_from("<I", data, eh.offset + 8)[0]
    for i in range(count):
        entry = eh.offset + 12 + 8 * i
        if eh.addr + struct.unpack_from("<i", data, entry)[0] == read_at:
            struct.pack_into("<i", data, entry, read_at + 1 - eh.addr)
            break
    else:
        pytest.fail("SSL_read is not in the unwind table")
    copy = tmp_path / "cygrpc.so"
    copy.write_bytes(bytes(data))
    elf, reader = read_elf(str(copy))
    try:
        assert locate(elf, reader.fd) == {}
    finally:
        reader.close()
