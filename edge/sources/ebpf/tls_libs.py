"""Which TLS code the processes of this host run, from the files they map: what the uprobes can read, what not.

The probes read TLS plaintext through OpenSSL's API (`SSL_read`, `SSL_write`, ...; bpf/tls.bpf.h): in `libssl.so.*`,
or in a binary that links OpenSSL (or BoringSSL) statically and keeps the symbols, as Node.js does. Everything else
that speaks TLS is named so that it can be counted, not silently missed: GnuTLS, mbedTLS, wolfSSL and NSS by their
libraries, Go's crypto/tls, rustls and symbol-less static OpenSSL/BoringSSL by what their binaries contain; gRPC
core's symbol-less BoringSSL (Python's grpcio) is read where its calls can be located with certainty
(boringssl_calls.py). Files are classified once per identity (device, inode, size, mtime); `scan_process` reads one
process's executable mappings (/proc/<pid>/maps; a container's files through /proc/<pid>/root).
"""
from __future__ import annotations

import os
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .boringssl_calls import locate as locate_grpc_boringssl
from .elf import ElfError, read_elf
from .proc_maps import Mapping, read_maps

__all__ = ["GRPC_BORINGSSL", "OPENSSL_FUNCTIONS", "TlsCode", "ProcessTls", "Catalog", "scan_process",
           "host_openssl_files", "traced_pids"]

# What the probes attach to, when the file defines it; SSL_read and SSL_write at least.
OPENSSL_FUNCTIONS = ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex", "SSL_do_handshake", "SSL_connect",
                     "SSL_accept", "SSL_set_fd", "SSL_set_rfd", "SSL_set_wfd", "SSL_free")
_REQUIRED = ("SSL_read", "SSL_write")
# gRPC core's BoringSSL without symbols, its SSL_read/SSL_write/SSL_do_handshake located (boringssl_calls.py).
GRPC_BORINGSSL = "BoringSSL (gRPC core, located)"

_OPENSSL_LIB = re.compile(r"^libssl\.so(\.[0-9.]+)?$")
# TLS libraries the probes cannot read, by file name (NSS's libssl3.so is not OpenSSL).
_OTHER_LIBS = ((re.compile(r"^libgnutls\.so"), "GnuTLS"), (re.compile(r"^libmbedtls\.so"), "mbedTLS"),
               (re.compile(r"^libwolfssl\.so"), "wolfSSL"), (re.compile(r"^(libnss3|libssl3)\.so"), "NSS"))
# Statically linked TLS without usable symbols, by what the binary contains (most specific first).
_MARKERS = ((b"crypto/tls.(*Conn)", "Go crypto/tls"), (b"rustls", "rustls"), (b"boringssl", "BoringSSL"),
            (b"BoringSSL", "BoringSSL"), (b"mbedtls", "mbedTLS"), (b"wolfSSL", "wolfSSL"),
            (b"ssl/statem/statem_", "OpenSSL"))  # OpenSSL's libssl source paths (its error records name them)
# The distribution's library directories: their files are known by name, and scanning all of them would cost.
_SYSTEM_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/libexec/")
_MAX_SCAN = 1 << 30  # bytes: larger files are not searched for markers
_CACHE_MAX = 4096


@dataclass(slots=True, frozen=True)
class TlsCode:
    """TLS code in one file: OpenSSL's API the uprobes attach to (`functions`: symbol -> file offset), or a stack they
    cannot read (`functions` empty, `stack` names it)."""

    stack: str  # "OpenSSL" (libssl), "OpenSSL (static)", "GnuTLS", "Go crypto/tls", ...
    path: str  # as the process sees it
    functions: dict[str, int] = field(default_factory=dict)

    @property
    def readable(self) -> bool:
        """Whether the probes can read this code's plaintext."""
        return bool(self.functions)


@dataclass(slots=True)
class ProcessTls:
    """The TLS code one process maps: readable files keyed by (device, inode), with a path the agent can open."""

    pid: int
    comm: str
    readable: dict[tuple[int, int], tuple[str, TlsCode]] = field(default_factory=dict)  # key -> (open path, code)
    unreadable: list[TlsCode] = field(default_factory=list)
    error: str = ""  # why the process could not be read (gone, permission)


class Catalog:
    """Classifications of files by identity, so that each file is read once however many processes map it."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[int, int, int, int], TlsCode | None] = OrderedDict()
        self.errors = 0  # files that could not be read or parsed (replaced, truncated, not ELF)

    def classify(self, open_path: str, shown: str, executable: bool) -> tuple[tuple[int, int], TlsCode] | None:
        """The TLS code of a mapped file (None: none). `executable`: the process's own binary."""
        try:
            st = os.stat(open_path)
        except OSError:
            self.errors += 1
            return None
        key = (st.st_dev, st.st_ino)
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if ident in self._seen:
            self._seen.move_to_end(ident)
            code = self._seen[ident]
        else:
            code = self._classify(open_path, shown, executable)
            self._seen[ident] = code
            if len(self._seen) > _CACHE_MAX:
                self._seen.popitem(last=False)
        return (key, code) if code is not None else None

    def _classify(self, open_path: str, shown: str, executable: bool) -> TlsCode | None:
        base = os.path.basename(shown)
        if _OPENSSL_LIB.match(base):
            funcs = self._functions(open_path)
            return TlsCode("OpenSSL", shown, funcs) if funcs else TlsCode("OpenSSL (no symbols)", shown)
        for pattern, stack in _OTHER_LIBS:
            if pattern.match(base):
                return TlsCode(stack, shown)
        if not executable and shown.startswith(_SYSTEM_DIRS):
            return None
        try:
            elf, reader = read_elf(open_path)
        except (ElfError, OSError):
            self.errors += 1
            return None
        try:
            funcs = self._wanted(elf.functions(OPENSSL_FUNCTIONS))
            if funcs:
                return TlsCode("OpenSSL (static)", shown, funcs)
            if reader.size > _MAX_SCAN or elf.imports(_REQUIRED):
                return None  # too large to search, or it uses a shared libssl (whose version string it may hold)
            go = elf.has_section(".go.buildinfo", ".gopclntab", ".note.go.buildid")
            found = elf.contains(*(m for m, _ in _MARKERS))
            for marker, stack in _MARKERS:
                if marker in found and (stack != "Go crypto/tls" or go):
                    if stack == "BoringSSL":
                        # gRPC core's (grpcio): its calls are found from how gRPC makes them
                        funcs = self._wanted(locate_grpc_boringssl(elf, reader.fd))
                        if funcs:
                            return TlsCode(GRPC_BORINGSSL, shown, funcs)
                    return TlsCode(stack if stack.startswith("Go") else f"{stack} (static, no symbols)", shown)
            return None
        except (ElfError, OSError, struct.error, ValueError):
            self.errors += 1
            return None
        finally:
            reader.close()

    def _functions(self, path: str) -> dict[str, int]:
        try:
            elf, reader = read_elf(path)
        except (ElfError, OSError):
            self.errors += 1
            return {}
        try:
            return self._wanted(elf.functions(OPENSSL_FUNCTIONS))
        except (ElfError, OSError, struct.error, ValueError):
            self.errors += 1
            return {}
        finally:
            reader.close()

    @staticmethod
    def _wanted(funcs: dict[str, int]) -> dict[str, int]:
        return funcs if all(f in funcs for f in _REQUIRED) else {}


def _executable_files(maps: list[Mapping]) -> list[tuple[str, str]]:
    """(path, address range) of each file mapped executable, first mapping of each path."""
    out: dict[str, str] = {}
    for m in maps:
        if m.executable and m.path not in out:
            out[m.path] = m.span
    return list(out.items())


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def scan_process(pid: int, catalog: Catalog, maps: list[Mapping] | None = None) -> ProcessTls:
    """The TLS code process `pid` maps now (an `error` when it is gone or cannot be read); `maps` when already
    read."""
    found = ProcessTls(pid, _comm(pid))
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        files = _executable_files(read_maps(pid) if maps is None else maps)
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            found.error = "exited"
        return found  # else a kernel thread: no program, no mappings
    except OSError as e:
        found.error = e.strerror or str(e)
        return found
    for path, span in files:
        if path.endswith(" (deleted)"):
            # replaced on disk since it was mapped: only the mapping itself still reaches the old file
            open_path, path = f"/proc/{pid}/map_files/{span}", path[: -len(" (deleted)")]
        else:
            open_path = f"/proc/{pid}/root{path}"
        hit = catalog.classify(open_path, path, executable=path == exe)
        if hit is None:
            continue
        key, code = hit
        if code.readable:
            found.readable[key] = (open_path, code)
        else:
            found.unreadable.append(code)
    return found


def host_openssl_files() -> list[str]:
    """The host's own libssl.so.* in the usual library directories (multiarch included)."""
    roots = [Path(d) for d in ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib")]
    dirs: list[Path] = []
    for root in roots:
        if root.is_dir():
            dirs.append(root)
            dirs += [p for p in root.glob("*-linux-gnu*") if p.is_dir()]
    seen: set[tuple[int, int]] = set()
    out = []
    for d in dirs:
        for p in sorted(d.glob("libssl.so.*")):
            try:
                st = p.stat()
            except OSError:
                continue
            if _OPENSSL_LIB.match(p.name) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                out.append(str(p))
    return out


def traced_pids(allowed: frozenset[int] | None, own_pid: int) -> list[int]:
    """Processes to look at: every process but this one, or those of the allow-list."""
    if allowed is not None:
        return sorted(p for p in allowed if p != own_pid)
    return sorted(int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != own_pid)


def rescan(known: Iterable[int], allowed: frozenset[int] | None, own_pid: int, forget: Callable[[int], None],
           scan: Callable[[int], None]) -> None:
    """Forget the `known` processes no longer traced (gone, or off the allow-list), then scan every traced one."""
    pids = traced_pids(allowed, own_pid)
    live = set(pids)
    for pid in list(known):
        if pid not in live:
            forget(pid)
    for pid in pids:
        scan(pid)
