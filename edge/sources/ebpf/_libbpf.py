"""A thin ctypes binding over the distribution's libbpf.so.1: only the calls the loader and doctor use.

libbpf 1.x reports errors as a negative errno (int calls) or NULL with errno set (pointer calls); both
become `LibbpfError`, a `ProbeUnavailable` whose `fix` is chosen from the errno. libbpf's own log lines go
to this module's logger (warnings at WARNING, the rest at DEBUG); the last warnings are kept so that an
error can say what the verifier or the loader complained about.
"""
from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno as _errno
import logging
import os
import struct
from dataclasses import dataclass

from ...errors import ProbeUnavailable

__all__ = [
    "LibbpfError",
    "Libbpf",
    "libbpf",
    "SampleCallback",
    "BPF_MAP_TYPE_HASH",
    "BPF_MAP_TYPE_ARRAY",
    "BPF_MAP_TYPE_PERCPU_ARRAY",
    "BPF_MAP_TYPE_RINGBUF",
    "BPF_ANY",
    "BPF_NOEXIST",
    "BPF_EXIST",
    "BPF_STATS_RUN_TIME",
    "ProgInfo",
]

log = logging.getLogger(__name__)

# include/uapi/linux/bpf.h
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_RINGBUF = 27
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_STATS_RUN_TIME = 0  # enum bpf_stats_type

# struct bpf_prog_info (include/uapi/linux/bpf.h, unchanged in layout since 5.16): its size and the offsets of the
# fields read here. The kernel fills min(its size, ours) and checks that anything beyond its own size is zero.
_PROG_INFO_SIZE = 232
_PI_ID, _PI_JITED_LEN, _PI_XLATED_LEN, _PI_NAME = 4, 16, 20, 64
_PI_RUN_TIME_NS, _PI_RUN_CNT, _PI_RECURSION_MISSES, _PI_VERIFIED_INSNS = 192, 200, 208, 216
_BPF_OBJ_NAME_LEN = 16
_BPF_INSN_SIZE = 8

# enum libbpf_print_level
_LIBBPF_WARN = 0

_c_void_p = ctypes.c_void_p
_PrintFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
SampleCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class _UprobeOpts(ctypes.Structure):
    """struct bpf_uprobe_opts as libbpf 1.0 and 1.1 lay it out (`sz` tells newer versions which fields we know)."""

    _fields_ = [("sz", ctypes.c_size_t), ("ref_ctr_offset", ctypes.c_size_t), ("bpf_cookie", ctypes.c_uint64),
                ("retprobe", ctypes.c_bool), ("func_name", ctypes.c_char_p)]

_FIXES = {
    _errno.EPERM: "run the agent as root, or give it CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE "
                  "(and check that kernel.unprivileged_bpf_disabled or a security module does not forbid bpf())",
    _errno.EACCES: "the kernel verifier or a security module refused the program; run `helix doctor` and send "
                   "its output with the kernel version to support",
    _errno.ENOENT: "a tracepoint or kernel type is missing: mount tracefs (mount -t tracefs nodev "
                   "/sys/kernel/tracing) and use a kernel with BTF (CONFIG_DEBUG_INFO_BTF=y), 5.8 or newer",
    _errno.EINVAL: "the kernel rejected a program or map: it is probably older than 5.8 (no ring buffer) or lacks "
                   "BTF; use a newer kernel",
    _errno.ENOMEM: "not enough locked memory: raise RLIMIT_MEMLOCK (ulimit -l unlimited) or free memory",
    _errno.E2BIG: "the kernel rejected a program as too large or complex; use a newer kernel",
    _errno.EOPNOTSUPP: "this kernel does not support a needed BPF feature; use a kernel 5.8 or newer with BTF",
    _errno.ENOTSUP: "this kernel does not support a needed BPF feature; use a kernel 5.8 or newer with BTF",
    _errno.ENOSYS: "this kernel was built without bpf() (CONFIG_BPF_SYSCALL); use a kernel with BPF enabled",
}


@dataclass(slots=True, frozen=True)
class ProgInfo:
    """What the kernel reports about one loaded program (bpf_obj_get_info_by_fd on a program fd).

    run_time_ns and run_cnt only advance while run-time statistics are on (kernel.bpf_stats_enabled, or a
    BPF_ENABLE_STATS fd held open); they are cumulative since the program was loaded.
    """

    id: int
    name: str  # the function name, truncated by the kernel to 15 characters
    run_time_ns: int
    run_cnt: int
    recursion_misses: int
    xlated_insns: int  # instructions after the verifier's rewriting (what runs, before JIT)
    jited_bytes: int
    verified_insns: int  # instructions the verifier walked (all paths), 0 before 5.16


class LibbpfError(ProbeUnavailable):
    """A libbpf call failed; `errno` is the cause, `fix` what to do about it."""

    def __init__(self, what: str, err: int, hint: str = "") -> None:
        self.errno = err
        detail = os.strerror(err) if err else "unknown error"
        reason = f"{what}: {detail} (errno {err})"
        if hint:
            reason += f"; libbpf said: {hint}"
        super().__init__(reason, _FIXES.get(err, "run `helix doctor` to see which kernel feature is missing"))


class Libbpf:
    """The loaded shared library with typed entry points."""

    def __init__(self, path: str | None = None) -> None:
        name = path or os.environ.get("HELIX_LIBBPF") or "libbpf.so.1"
        try:
            self.lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise ProbeUnavailable(f"cannot load {name}: {e}",
                                   "install the distribution's libbpf 1.x (Debian/Ubuntu: apt install libbpf1)") from None
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self.libc = ctypes.CDLL(libc_name, use_errno=True)
        self.libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        self.libc.vsnprintf.restype = ctypes.c_int
        self.recent_warnings: collections.deque[str] = collections.deque(maxlen=8)
        self._declare()
        self._print_fn = _PrintFn(self._on_print)  # kept referenced: libbpf holds the raw pointer
        self.lib.libbpf_set_print(self._print_fn)

    def _fn(self, name: str, restype: object, *argtypes: object) -> None:
        f = getattr(self.lib, name)
        f.restype = restype
        f.argtypes = list(argtypes)

    def _declare(self) -> None:
        c_int, c_size_t, c_char_p, c_bool = ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_bool
        v = _c_void_p
        self._fn("libbpf_set_print", v, _PrintFn)
        self._fn("libbpf_num_possible_cpus", c_int)
        self._fn("bpf_object__open_file", v, c_char_p, v)
        self._fn("bpf_object__load", c_int, v)
        self._fn("bpf_object__close", None, v)
        self._fn("bpf_object__next_map", v, v, v)
        self._fn("bpf_object__find_map_by_name", v, v, c_char_p)
        self._fn("bpf_object__next_program", v, v, v)
        self._fn("bpf_map__name", c_char_p, v)
        self._fn("bpf_map__fd", c_int, v)
        self._fn("bpf_map__key_size", ctypes.c_uint32, v)
        self._fn("bpf_map__value_size", ctypes.c_uint32, v)
        self._fn("bpf_map__max_entries", ctypes.c_uint32, v)
        self._fn("bpf_map__type", c_int, v)
        self._fn("bpf_map__set_max_entries", c_int, v, ctypes.c_uint32)
        self._fn("bpf_map__set_initial_value", c_int, v, v, c_size_t)
        self._fn("bpf_map__initial_value", v, v, ctypes.POINTER(c_size_t))
        self._fn("bpf_map__reuse_fd", c_int, v, c_int)
        self._fn("bpf_program__name", c_char_p, v)
        self._fn("bpf_program__section_name", c_char_p, v)
        self._fn("bpf_program__set_autoload", c_int, v, c_bool)
        self._fn("bpf_program__autoload", c_bool, v)
        self._fn("bpf_program__attach", v, v)
        self._fn("bpf_program__attach_tracepoint", v, v, c_char_p, c_char_p)
        self._fn("bpf_object__find_program_by_name", v, v, c_char_p)
        self._fn("bpf_program__attach_uprobe_opts", v, v, c_int, c_char_p, c_size_t, ctypes.POINTER(_UprobeOpts))
        self._fn("bpf_link__destroy", c_int, v)
        self._fn("bpf_map_create", c_int, c_int, c_char_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, v)
        self._fn("bpf_map_update_elem", c_int, c_int, v, v, ctypes.c_uint64)
        self._fn("bpf_map_lookup_elem", c_int, c_int, v, v)
        self._fn("bpf_map_delete_elem", c_int, c_int, v)
        self._fn("bpf_map_get_next_key", c_int, c_int, v, v)
        self._fn("ring_buffer__new", v, c_int, SampleCallback, v, v)
        self._fn("ring_buffer__epoll_fd", c_int, v)
        self._fn("ring_buffer__consume", c_int, v)
        self._fn("ring_buffer__free", None, v)
        self._fn("bpf_program__fd", c_int, v)
        self._fn("bpf_obj_get_info_by_fd", c_int, c_int, v, ctypes.POINTER(ctypes.c_uint32))
        self._fn("bpf_prog_get_fd_by_id", c_int, ctypes.c_uint32)
        self._fn("bpf_enable_stats", c_int, c_int)

    def _on_print(self, level: int, fmt: bytes | None, args: int | None) -> int:
        try:
            buf = ctypes.create_string_buffer(1 << 18)  # verifier logs come as one message
            self.libc.vsnprintf(buf, len(buf), fmt, args)
            msg = buf.value.decode("utf-8", "replace").rstrip()
            if level == _LIBBPF_WARN:
                self.recent_warnings.append(msg)
                log.warning("libbpf: %s", msg)
            else:
                log.debug("libbpf: %s", msg)
        except Exception:  # a logging failure must never unwind into C
            pass
        return 0

    def hint(self) -> str:
        """The last few libbpf warnings, for error messages."""
        # the end of a verifier log is where it says what it refused
        return " | ".join(w if len(w) < 600 else "..." + w[-600:] for w in list(self.recent_warnings)[-3:])

    # -- error plumbing ------------------------------------------------------------------------------

    def check(self, rc: int, what: str) -> int:
        """Raise LibbpfError for a negative return code; pass the value through otherwise."""
        if rc < 0:
            raise LibbpfError(what, -rc, self.hint())
        return rc

    def check_ptr(self, ptr: int | None, what: str) -> int:
        """Raise LibbpfError for a NULL pointer (errno holds the cause)."""
        if not ptr:
            raise LibbpfError(what, ctypes.get_errno() or _errno.EINVAL, self.hint())
        return ptr

    # -- object, map and program wrappers ------------------------------------------------------------

    def open_file(self, path: str) -> int:
        """bpf_object__open_file; returns the object pointer."""
        self.recent_warnings.clear()
        return self.check_ptr(self.lib.bpf_object__open_file(path.encode(), None), f"cannot open {path}")

    def maps(self, obj: int) -> list[int]:
        """Every map of an object."""
        out, m = [], None
        while True:
            m = self.lib.bpf_object__next_map(obj, m)
            if not m:
                return out
            out.append(m)

    def programs(self, obj: int) -> list[int]:
        """Every program of an object."""
        out, p = [], None
        while True:
            p = self.lib.bpf_object__next_program(obj, p)
            if not p:
                return out
            out.append(p)

    def map_name(self, m: int) -> str:
        """A map's name (internal maps are '<obj>.rodata' and the like)."""
        return (self.lib.bpf_map__name(m) or b"").decode()

    def prog_name(self, p: int) -> str:
        """A program's function name."""
        return (self.lib.bpf_program__name(p) or b"").decode()

    def prog_section(self, p: int) -> str:
        """A program's ELF section, e.g. 'tracepoint/syscalls/sys_enter_read'."""
        return (self.lib.bpf_program__section_name(p) or b"").decode()

    def attach(self, p: int) -> int:
        """bpf_program__attach by section name; returns the link."""
        return self.check_ptr(self.lib.bpf_program__attach(p), f"cannot attach {self.prog_name(p)}")

    def attach_tracepoint(self, p: int, tracepoint: str) -> int:
        """bpf_program__attach_tracepoint on 'category/name', whatever the program's section says; returns the link."""
        category, name = tracepoint.split("/", 1)
        return self.check_ptr(self.lib.bpf_program__attach_tracepoint(p, category.encode(), name.encode()),
                              f"cannot attach {self.prog_name(p)} to {tracepoint}")

    def attach_uprobe(self, p: int, path: str, offset: int, *, retprobe: bool = False, pid: int = -1) -> int:
        """bpf_program__attach_uprobe_opts at a file offset of `path` (every process mapping it with pid -1); returns
        the link."""
        opts = _UprobeOpts(ctypes.sizeof(_UprobeOpts), 0, 0, retprobe, None)
        return self.check_ptr(self.lib.bpf_program__attach_uprobe_opts(p, pid, path.encode(), offset, ctypes.byref(opts)),
                              f"cannot attach {self.prog_name(p)} to {path}+{offset:#x}")

    def map_create(self, map_type: int, name: str, key_size: int, value_size: int, max_entries: int) -> int:
        """bpf_map_create; returns the new fd (the caller closes it)."""
        return self.check(self.lib.bpf_map_create(map_type, name.encode(), key_size, value_size, max_entries, None),
                          f"cannot create a {name} map")

    def update(self, fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """bpf_map_update_elem."""
        self.check(self.lib.bpf_map_update_elem(fd, key, value, flags), "cannot update a BPF map")

    def lookup(self, fd: int, key: bytes, value_size: int) -> bytes | None:
        """bpf_map_lookup_elem; None when the key is absent."""
        buf = ctypes.create_string_buffer(value_size)
        rc = self.lib.bpf_map_lookup_elem(fd, key, buf)
        if rc == -_errno.ENOENT:
            return None
        self.check(rc, "cannot read a BPF map")
        return buf.raw

    def delete(self, fd: int, key: bytes) -> bool:
        """bpf_map_delete_elem; False when the key was absent."""
        rc = self.lib.bpf_map_delete_elem(fd, key)
        if rc == -_errno.ENOENT:
            return False
        self.check(rc, "cannot delete from a BPF map")
        return True

    def keys(self, fd: int, key_size: int, limit: int = 1 << 22) -> list[bytes]:
        """Every key of a hash map (bpf_map_get_next_key from NULL)."""
        out: list[bytes] = []
        cur = ctypes.create_string_buffer(key_size)
        nxt = ctypes.create_string_buffer(key_size)
        prev: object = None
        while len(out) < limit:
            rc = self.lib.bpf_map_get_next_key(fd, prev, nxt)
            if rc == -_errno.ENOENT:
                break
            self.check(rc, "cannot iterate a BPF map")
            out.append(nxt.raw)
            ctypes.memmove(cur, nxt, key_size)
            prev = cur
        return out

    def prog_fd(self, p: int) -> int:
        """A loaded program's fd (owned by the object: not to be closed by the caller)."""
        return self.check(self.lib.bpf_program__fd(p), f"{self.prog_name(p)} is not loaded")

    def prog_info(self, fd: int) -> ProgInfo:
        """bpf_obj_get_info_by_fd on a program fd."""
        buf = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        size = ctypes.c_uint32(_PROG_INFO_SIZE)
        self.check(self.lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)), "cannot read a BPF program's info")
        raw = buf.raw
        u32, u64 = struct.Struct("=I").unpack_from, struct.Struct("=Q").unpack_from
        name = raw[_PI_NAME:_PI_NAME + _BPF_OBJ_NAME_LEN].split(b"\0", 1)[0].decode("ascii", "replace")
        return ProgInfo(id=u32(raw, _PI_ID)[0], name=name, run_time_ns=u64(raw, _PI_RUN_TIME_NS)[0],
                        run_cnt=u64(raw, _PI_RUN_CNT)[0], recursion_misses=u64(raw, _PI_RECURSION_MISSES)[0],
                        xlated_insns=u32(raw, _PI_XLATED_LEN)[0] // _BPF_INSN_SIZE, jited_bytes=u32(raw, _PI_JITED_LEN)[0],
                        verified_insns=u32(raw, _PI_VERIFIED_INSNS)[0])

    def prog_fd_by_id(self, prog_id: int) -> int:
        """bpf_prog_get_fd_by_id: an fd of any loaded program (the caller closes it); needs CAP_SYS_ADMIN."""
        return self.check(self.lib.bpf_prog_get_fd_by_id(prog_id), f"cannot open BPF program {prog_id}")

    def enable_stats(self) -> int:
        """bpf_enable_stats(BPF_STATS_RUN_TIME): run-time statistics stay on, for every program, while the returned fd
        is open (the kernel counts holders; closing it, or the process ending, turns them off unless another holder or
        the sysctl keeps them on)."""
        return self.check(self.lib.bpf_enable_stats(BPF_STATS_RUN_TIME), "cannot turn on BPF run-time statistics")

    def possible_cpus(self) -> int:
        """Number of possible CPUs (the stride of per-CPU map values)."""
        return self.check(self.lib.libbpf_num_possible_cpus(), "cannot count CPUs")


_instance: Libbpf | None = None


def libbpf() -> Libbpf:
    """The process-wide binding, loaded on first use (raises ProbeUnavailable without libbpf.so.1)."""
    global _instance
    if _instance is None:
        _instance = Libbpf()
    return _instance

