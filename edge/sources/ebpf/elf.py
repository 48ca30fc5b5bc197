"""Just enough ELF to attach uprobes: defined function symbols as file offsets, data symbols' addresses, and section
names.

Uprobes are placed by (file, offset); the offset of a function is its symbol's address translated through the
loadable segment that contains it, as libbpf does. Files are read in place, bounded and checked: a truncated,
replaced or hostile file is an `ElfError`, never an exception of another kind and never a read past its end.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ...errors import HelixError

__all__ = ["ElfError", "ElfFile", "read_elf"]

_MAGIC = b"\x7fELF"
_SHT_SYMTAB, _SHT_DYNSYM, _SHT_GNU_HASH = 2, 11, 0x6FFFFFF6
_PT_LOAD = 1
_PF_X = 1
_STT_OBJECT, _STT_FUNC, _STT_GNU_IFUNC = 1, 2, 10
_ET_EXEC = 2
_SHN_UNDEF = 0
_MAX_SECTIONS = 1 << 16
_MAX_TABLE = 256 << 20  # a symbol or string table larger than this is refused (no real one comes close)


class ElfError(HelixError):
    """A file that is not an ELF object this reader understands, or that ends before its tables do."""


@dataclass(slots=True, frozen=True)
class _Section:
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass(slots=True, frozen=True)
class _Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int


class ElfFile:
    """An opened ELF file's section and segment tables; symbol tables are read on demand."""

    def __init__(self, path: str, data_reader: _Reader) -> None:
        self.path = path
        self._r = data_reader
        ident = self._r.read(0, 16)
        if ident[:4] != _MAGIC:
            raise ElfError(f"{path}: not an ELF file")
        cls, enc = ident[4], ident[5]
        if cls not in (1, 2) or enc not in (1, 2):
            raise ElfError(f"{path}: unknown ELF class {cls} or encoding {enc}")
        self.is64 = cls == 2
        e = "<" if enc == 1 else ">"
        self._e = e
        if self.is64:
            hdr = struct.Struct(e + "16sHHIQQQIHHHHHH")
            self._sh = struct.Struct(e + "IIQQQQIIQQ")
            self._ph = struct.Struct(e + "IIQQQQQQ")
            self._sym = struct.Struct(e + "IBBHQQ")
        else:
            hdr = struct.Struct(e + "16sHHIIIIIHHHHHH")
            self._sh = struct.Struct(e + "IIIIIIIIII")
            self._ph = struct.Struct(e + "IIIIIIII")
            self._sym = struct.Struct(e + "IIIBBH")
        (_id, self.type, self.machine, _ver, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize,
         shnum, shstrndx) = hdr.unpack(self._r.read(0, hdr.size))
        self.segments = self._segments(phoff, phentsize, phnum)
        self.sections = self._sections(shoff, shentsize, shnum, shstrndx)

    def _segments(self, off: int, entsize: int, count: int) -> list[_Segment]:
        if not count:
            return []
        if entsize < self._ph.size or count > _MAX_SECTIONS:
            raise ElfError(f"{self.path}: bad program header table")
        raw = self._r.read(off, entsize * count)
        out = []
        for i in range(count):
            f = self._ph.unpack_from(raw, i * entsize)
            if self.is64:
                p_type, flags, p_off, vaddr, _pa, filesz = f[0], f[1], f[2], f[3], f[4], f[5]
            else:
                p_type, p_off, vaddr, _pa, filesz, flags = f[0], f[1], f[2], f[3], f[4], f[6]
            out.append(_Segment(p_type, flags, p_off, vaddr, filesz))
        return out

    def _sections(self, off: int, entsize: int, count: int, strndx: int) -> list[_Section]:
        if not count:
            return []
        if entsize < self._sh.size or count > _MAX_SECTIONS:
            raise ElfError(f"{self.path}: bad section header table")
        raw = self._r.read(off, entsize * count)
        heads = []
        for i in range(count):
            f = self._sh.unpack_from(raw, i * entsize)
            if self.is64:
                name, typ, _fl, addr, s_off, size, link, _info, _al, ent = f
            else:
                name, typ, _fl, addr, s_off, size, link, _info, _al, ent = f
            heads.append((name, typ, addr, s_off, size, link, ent))
        names = b""
        if 0 < strndx < count:
            _n, _t, _a, s_off, size, _l, _e = heads[strndx]
            names = self._r.read(s_off, min(size, _MAX_TABLE))
        return [_Section(_cstr(names, n), t, a, o, s, lk, e) for n, t, a, o, s, lk, e in heads]

    def section(self, name: str) -> _Section | None:
        """The first section of that name."""
        return next((s for s in self.sections if s.name == name), None)

    def has_section(self, *names: str) -> bool:
        """Whether any of the named sections is present."""
        have = {s.name for s in self.sections}
        return any(n in have for n in names)

    def functions(self, names: Iterable[str]) -> dict[str, int]:
        """File offsets of the defined functions among `names`: the dynamic symbols first, then the full symbol
        table (statically linked code keeps its symbols there, if it keeps them at all)."""
        wanted = set(names)
        found: dict[str, int] = {}
        hashed = self._hashed(wanted)
        if hashed is not None:
            found, wanted = hashed
            if not wanted:
                return found
        for kind in (_SHT_DYNSYM, _SHT_SYMTAB):
            for sec in self.sections:
                if sec.type == kind and wanted - found.keys():
                    found.update(self._lookup(sec, wanted - found.keys())[0])
        return found

    def data_symbols(self, names: Iterable[str]) -> dict[str, int]:
        """Link-time addresses of the defined data objects among `names` (the dynamic symbols, then the full table)."""
        wanted = set(names)
        found: dict[str, int] = {}
        for kind in (_SHT_DYNSYM, _SHT_SYMTAB):
            for sec in self.sections:
                if sec.type == kind and wanted - found.keys():
                    found.update(self._lookup(sec, wanted - found.keys(), data=True)[0])
        return found

    def load_bias(self, mapped_at: int) -> int:
        """What to add to a link-time address, given where the file's first byte is mapped (0 for a fixed-address
        executable)."""
        if self.type == _ET_EXEC:
            return 0
        first = min((seg for seg in self.segments if seg.type == _PT_LOAD), key=lambda seg: seg.vaddr, default=None)
        if first is None:
            raise ElfError(f"{self.path}: no loadable segment")
        return mapped_at - (first.vaddr - first.offset)

    def _hashed(self, wanted: set[str]) -> tuple[dict[str, int], set[str]] | None:
        """Defined dynamic functions among `wanted` through the GNU hash table (a few reads per name instead of a
        pass over every symbol), and the names it does not define; None without such a table."""
        gh = next((s for s in self.sections if s.type == _SHT_GNU_HASH), None)
        if gh is None or not 0 <= gh.link < len(self.sections):
            return None
        dynsym = self.sections[gh.link]
        if dynsym.type != _SHT_DYNSYM or not 0 <= dynsym.link < len(self.sections):
            return None
        dynstr = self.sections[dynsym.link]
        u32 = struct.Struct(self._e + "I")
        nbuckets, symoffset, bloom_size, _shift = struct.unpack(self._e + "IIII", self._r.read(gh.offset, 16))
        word = 8 if self.is64 else 4
        buckets_at = gh.offset + 16 + bloom_size * word
        chain_at = buckets_at + 4 * nbuckets
        ent = dynsym.entsize or self._sym.size
        if not nbuckets or ent < self._sym.size or chain_at > gh.offset + gh.size:
            return None
        found: dict[str, int] = {}
        for name in wanted:
            key = name.encode()
            h = 5381
            for ch in key:
                h = (h * 33 + ch) & 0xFFFFFFFF
            i = u32.unpack(self._r.read(buckets_at + 4 * (h % nbuckets), 4))[0]
            if i < symoffset:
                continue
            for _ in range(1 << 16):  # a chain ends at its odd entry; the bound only guards a hostile table
                ch_at = chain_at + 4 * (i - symoffset)
                if ch_at + 4 > gh.offset + gh.size:
                    break
                chain = u32.unpack(self._r.read(ch_at, 4))[0]
                if (chain | 1) == (h | 1):
                    f = self._sym.unpack(self._r.read(dynsym.offset + i * ent, self._sym.size))
                    st_name, info, shndx, value = (f[0], f[1], f[3], f[4]) if self.is64 else (f[0], f[3], f[5], f[1])
                    n = min(len(key) + 1, max(0, dynstr.size - st_name))
                    if (n == len(key) + 1 and self._r.read(dynstr.offset + st_name, n) == key + b"\0"
                            and shndx != _SHN_UNDEF and (info & 0xF) in (_STT_FUNC, _STT_GNU_IFUNC)):
                        off = self._file_offset(value)
                        if off is not None:
                            found[name] = off
                        break
                if chain & 1:
                    break
                i += 1
        return found, wanted - found.keys()

    def imports(self, names: Iterable[str]) -> set[str]:
        """Which of `names` the file takes from a shared library (undefined dynamic symbols)."""
        out: set[str] = set()
        for sec in self.sections:
            if sec.type == _SHT_DYNSYM:
                out |= self._lookup(sec, set(names))[1]
        return out

    def _lookup(self, sec: _Section, wanted: set[str], data: bool = False) -> tuple[dict[str, int], set[str]]:
        """Defined functions among `wanted` (file offsets; with `data`, data objects' addresses), and the undefined
        ones."""
        if not 0 <= sec.link < len(self.sections) or sec.size > _MAX_TABLE:
            raise ElfError(f"{self.path}: bad symbol table {sec.name}")
        strtab = self.sections[sec.link]
        if strtab.size > _MAX_TABLE:
            raise ElfError(f"{self.path}: bad string table for {sec.name}")
        strings = self._r.read(strtab.offset, strtab.size)
        # Where each wanted name sits in the string table: most tables hold none of them, and iterating over every
        # symbol of a large binary in Python is what would cost.
        offsets: dict[int, str] = {}
        for name in wanted:
            needle = b"\0" + name.encode() + b"\0"
            start = 0
            while True:
                at = strings.find(needle, start)
                if at < 0:
                    break
                offsets[at + 1] = name
                start = at + 1
            if strings.startswith(needle[1:]):
                offsets[0] = name
        if not offsets:
            return {}, set()
        ent = sec.entsize or self._sym.size
        if ent < self._sym.size:
            raise ElfError(f"{self.path}: bad symbol size in {sec.name}")
        raw = self._r.read(sec.offset, sec.size - sec.size % ent)
        out: dict[str, int] = {}
        undefined: set[str] = set()
        name_at = struct.Struct(self._e + "I")
        for i in sorted(self._entries(raw, ent, name_at, offsets)):
            f = self._sym.unpack_from(raw, i)
            if self.is64:
                st_name, info, _other, shndx, value, _size = f
            else:
                st_name, value, _size, info, _other, shndx = f
            name = offsets.get(st_name)
            if name is None or name in out:
                continue
            if shndx == _SHN_UNDEF:
                undefined.add(name)
                continue
            if data:
                if (info & 0xF) == _STT_OBJECT:
                    out[name] = value
                continue
            if (info & 0xF) not in (_STT_FUNC, _STT_GNU_IFUNC):
                continue
            off = self._file_offset(value)
            if off is not None:
                out[name] = off
        return out, undefined - out.keys()

    @staticmethod
    def _entries(raw: bytes, ent: int, name_at: struct.Struct, offsets: dict[int, str]) -> set[int]:
        """Where the symbols naming one of `offsets` start: st_name is each entry's first word, so a search for its
        bytes at entry boundaries finds them without unpacking every symbol of a large binary."""
        hits: set[int] = set()
        for off in offsets:
            needle = name_at.pack(off)
            at = raw.find(needle)
            while at >= 0:
                if at % ent == 0:
                    hits.add(at)
                at = raw.find(needle, at + 1)
        return hits

    def _file_offset(self, vaddr: int) -> int | None:
        for seg in self.segments:
            if seg.type == _PT_LOAD and seg.flags & _PF_X and seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return vaddr - seg.vaddr + seg.offset
        return None

    def contains(self, *markers: bytes) -> set[bytes]:
        """Which of the byte strings appear anywhere in the file (read in chunks)."""
        return self._r.contains(markers)


class _Reader:
    """Bounded reads of one open file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.size = os.fstat(self.fd).st_size
        except OSError:
            os.close(self.fd)
            raise

    def read(self, off: int, n: int) -> bytes:
        if off < 0 or n < 0 or off + n > self.size:
            raise ElfError(f"{self.path}: truncated (needs bytes {off}..{off + n}, has {self.size})")
        data = os.pread(self.fd, n, off)
        if len(data) != n:
            raise ElfError(f"{self.path}: changed while read")
        return data

    def contains(self, markers: tuple[bytes, ...], chunk: int = 8 << 20) -> set[bytes]:
        found: set[bytes] = set()
        overlap = max((len(m) for m in markers), default=1) - 1
        off, tail = 0, b""
        while off < self.size and len(found) < len(markers):
            data = tail + os.pread(self.fd, chunk, off)
            if len(data) == len(tail):
                break
            found.update(m for m in markers if m not in found and m in data)
            off += len(data) - len(tail)
            tail = data[-overlap:] if overlap else b""
        return found

    def close(self) -> None:
        os.close(self.fd)


def read_elf(path: str) -> tuple[ElfFile, _Reader]:
    """Open `path` as ELF; the caller closes the reader. Raises ElfError (and OSError for the open itself)."""
    r = _Reader(path)
    try:
        return ElfFile(path, r), r
    except (ElfError, struct.error) as e:
        r.close()
        raise e if isinstance(e, ElfError) else ElfError(f"{path}: malformed ELF: {e}") from None
    except BaseException:
        r.close()
        raise


def _cstr(table: bytes, off: int) -> str:
    if not 0 <= off < len(table):
        return ""
    end = table.find(b"\0", off)
    return table[off:end if end >= 0 else len(table)].decode("utf-8", "replace")
