"""Loading the probe objects into the kernel and reading their ring buffer from the asyncio loop.

`ProbeSet` opens the compiled objects (objects/io.bpf.o, objects/proc.bpf.o), writes their load-time
settings into .rodata, makes the second object reuse the first one's shared maps (one ring buffer, one
config, one off-CPU table), loads and attaches every program, and detaches all of it on `close()`; nothing
is pinned, so nothing outlives the process. `KernelEventStream` registers the ring buffer's epoll fd with the
loop and decodes records into events.py dataclasses in batches.
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import errno
import logging
import os
import platform
import resource
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ProbeUnavailable
from . import _libbpf
from .decode import DecodeStats, decode_event
from .events import KernelEvent

__all__ = [
    "ProbeSettings",
    "ProbeSet",
    "RedAggregate",
    "RED_SERVER",
    "RED_CLIENT",
    "RED_PRODUCER",
    "RED_CONSUMER",
    "RED_BOUNDS_MAX",
    "KernelEventStream",
    "open_probes",
    "program_names",
    "settings_from_config",
    "objects_dir",
    "ensure_tracefs",
    "tracefs_root",
    "raise_memlock",
    "memlock_needed",
    "PROBE_SETS",
    "TRACEPOINTS",
    "BTF_PATH",
]

log = logging.getLogger(__name__)

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
_TRACEFS_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

# Load order matters: the first object creates the shared maps, the next ones reuse them.
PROBE_SETS = ("io", "proc")
# io.bpf.o samples per exchange with bpf_loop callbacks, which kernels before 5.17 refuse even where they are never
# called; there io_compat.bpf.o (the same probes, deciding nothing: every exchange is sent) is loaded instead.
_BPF_LOOP_KERNEL = (5, 17)
_SHARED_MAPS = ("events", "drops", "config", "allowed_pids", "allowed_cgroups", "offcpu", "inflight", "allowed_bits",
                "busy_tids", "offcpu_tids")
# Bitmaps by pid (bpf/maps.bpf.h allowed_bits, busy_tids, offcpu_tids): one bit per pid up to the machine's pid_max.
_PID_BITMAPS = ("allowed_bits", "busy_tids", "offcpu_tids")
_PID_MAX = Path("/proc/sys/kernel/pid_max")

# Programs whose tracepoint may be missing on an older or differently configured kernel: skipped, not fatal.
_OPTIONAL_PROGRAMS = frozenset({"enter_fdatasync", "exit_accept", "on_tcp_destroy_sock",
                                "on_tcp_receive_reset", "on_sched_waking",
                                "on_sched_wakeup_new", "exit_epoll_wait", "exit_epoll_pwait", "exit_epoll_pwait2"})

# Programs attached to more tracepoints than their section names: one loaded (and verified) program serves calls
# whose handling is the same. Their optional tracepoints may be missing, like optional programs.
_ALSO_ATTACHED: dict[str, tuple[str, ...]] = {
    "exit_rw": tuple(f"syscalls/sys_exit_{call}" for call in (
        "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "fsync", "fdatasync")),
}
_OPTIONAL_TRACEPOINTS = frozenset({"syscalls/sys_exit_fdatasync"})

# Every tracepoint the programs attach to, as category/name (what `helix doctor` checks).
TRACEPOINTS: dict[str, tuple[str, ...]] = {
    "io": tuple(f"syscalls/sys_{edge}_{call}" for call in (
        "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "fsync", "fdatasync",
        "connect", "accept4", "accept", "close") for edge in ("enter", "exit")
        if not (edge == "exit" and call in ("connect", "close")) and not (edge == "enter" and call.startswith("accept")))
    + ("sock/inet_sock_set_state", "tcp/tcp_retransmit_skb", "tcp/tcp_send_reset", "tcp/tcp_receive_reset",
       "tcp/tcp_destroy_sock"),
    "proc": ("sched/sched_switch", "sched/sched_process_exec", "sched/sched_process_exit", "sched/sched_waking",
             "sched/sched_wakeup_new", "syscalls/sys_exit_epoll_wait", "syscalls/sys_exit_epoll_pwait",
             "syscalls/sys_exit_epoll_pwait2"),
}

# bpf/helix.h struct helix_settings (the whole .rodata of every object)
_SETTINGS = struct.Struct("=IIQQQ")
# bpf/helix.h struct helix_config (value of the `config` array map)
_CONFIG = struct.Struct("=QII")
_FILTER_PIDS = 1 << 0
_FILTER_CGROUPS = 1 << 1
_PAYLOAD_MAX = 1024  # bpf/helix.h HELIX_PAYLOAD_MAX
_THRESHOLD_MAX = (1 << 56) - 1
_SLOW_FILE_OFF = (1 << 64) - 1
_DROP_REASONS = ("ringbuf_full", "state_full", "tls_unlinked", "h2_desync")  # bpf/helix.h enum helix_drop
# bpf/io.h enum helix_pyctx_count
_PYCTX_COUNTS = ("context_edges", "context_chains", "context_no_thread_state", "context_other_thread")
# bpf/helix.h enum helix_decision
_DECISIONS = ("kept", "sampled_out", "undecidable_kept", "aggregate_full", "no_status", "incomplete", "thread_rv",
              "broker_publish", "peer_rv")
# bpf/helix.h struct helix_red_bounds, helix_red_key, helix_red_val
RED_BOUNDS_MAX = 16
_RED_BOUNDS = struct.Struct("=II16Q")
_RED_KEY = struct.Struct("=IHBB 16s 8s 64s 40s")
_RED_VAL = struct.Struct("=QQQ 17Q")
RED_SERVER, RED_CLIENT, RED_PRODUCER, RED_CONSUMER = 2, 1, 3, 4  # bpf/helix.h enum helix_red_kind
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")


@dataclass(slots=True, frozen=True)
class RedAggregate:
    """One `red_agg` series (bpf/helix.h helix_red_key -> helix_red_val): cumulative since it was created."""

    tgid: int
    kind: int  # RED_SERVER, RED_CLIENT, RED_PRODUCER or RED_CONSUMER
    comm: str
    method: str
    path: str  # HTTP: the request path up to '?'; MQTT: the topic
    host: str  # client: the Host header value; producer: the remote address; consumer: ''

    count: int
    errors: int
    sum_ns: int
    buckets: tuple[int, ...]  # RED_BOUNDS_MAX + 1 counters; only the first (bounds + 1) are used
    raw_key: bytes

    @classmethod
    def decode(cls, raw_key: bytes, raw_val: bytes) -> RedAggregate:
        """From the map's raw key and value."""
        tgid, family, kind, _pad, comm, method, path, host = _RED_KEY.unpack(raw_key)
        count, errors, sum_ns, *buckets = _RED_VAL.unpack(raw_val)
        if kind == RED_PRODUCER:
            fam = socket.AF_INET6 if family == 10 else socket.AF_INET
            host_s = socket.inet_ntop(fam, host[:16] if fam == socket.AF_INET6 else host[:4])
        else:
            host_s = _cstr(host)
        return cls(tgid, kind, _cstr(comm), _cstr(method), _cstr(path), host_s, count, errors, sum_ns,
                   tuple(buckets), raw_key)


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


@dataclass(slots=True, frozen=True)
class ProbeSettings:
    """Load-time settings: fixed once the programs are loaded (changing them means a new ProbeSet)."""

    payload_bytes: int = 512  # first bytes of each message sent to userspace, 0..1024
    slow_file_ns: int | None = 10_000_000  # None: no file I/O events at all
    self_pid: int | None = None  # the agent's pid, never traced; None = this process
    ringbuf_bytes: int = 1 << 20  # power of two, >= one page
    message_gap_ns: int = 5_000_000  # rodata msg_idle_gap_ns: same-direction idle gap (exit to exit) that starts
    # a new message; 0: only a change of direction does
    thread_rv_ttl_ns: int = 30_000_000_000  # rodata: how long a server request's randomness decides the thread's
    # context-less calls (the span builder's response timeout: the longest a request is served)
    sets: tuple[str, ...] = PROBE_SETS

    def validate(self) -> None:
        """Refuse values the kernel side cannot honour."""
        if not 0 <= self.payload_bytes <= _PAYLOAD_MAX:
            raise ProbeUnavailable(f"payload_bytes must be 0..{_PAYLOAD_MAX}, got {self.payload_bytes}",
                                   "set sources.ebpf.payload_bytes between 16 and 1024")
        rb = self.ringbuf_bytes
        if rb < 4096 or rb & (rb - 1):
            raise ProbeUnavailable(f"ring buffer size must be a power of two >= 4096, got {rb}", "use e.g. 1048576")
        unknown = set(self.sets) - set(PROBE_SETS)
        if unknown or not self.sets or self.sets[0] != PROBE_SETS[0]:
            raise ProbeUnavailable(f"probe sets must start with 'io' and be among {PROBE_SETS}, got {self.sets}",
                                   "use the default probe sets")


def settings_from_config(cfg: Any) -> ProbeSettings:
    """ProbeSettings from a Config (or its EbpfSourceConfig)."""
    e = getattr(cfg, "ebpf", cfg)
    return ProbeSettings(payload_bytes=e.payload_bytes, slow_file_ns=int(e.slow_file_io * 1e9),
                         message_gap_ns=int(e.message_gap * 1e9), thread_rv_ttl_ns=int(e.response_timeout * 1e9))


def objects_dir() -> Path:
    """Where the compiled .bpf.o files are: $HELIX_BPF_OBJECTS or the package's objects/ directory."""
    env = os.environ.get("HELIX_BPF_OBJECTS")
    return Path(env) if env else Path(__file__).with_name("objects")


def tracefs_root() -> Path | None:
    """The mounted tracefs (the one libbpf uses for tracepoint ids), or None."""
    for root in _TRACEFS_MOUNTS:
        try:
            if (root / "events").is_dir():
                return root
        except PermissionError:
            raise ProbeUnavailable(f"tracefs at {root} is not readable by uid {os.geteuid()}",
                                   "run the agent as root (tracepoint ids are read from tracefs)") from None
    return None


def ensure_tracefs() -> Path:
    """Return the tracefs mount, mounting it at /sys/kernel/tracing first when missing (needs root)."""
    root = tracefs_root()
    if root is not None:
        return root
    target = _TRACEFS_MOUNTS[0]
    fix = "mount -t tracefs nodev /sys/kernel/tracing (or add it to /etc/fstab), or run the agent as root"
    if not target.is_dir():
        raise ProbeUnavailable(f"tracefs is not mounted and {target} does not exist (kernel without CONFIG_TRACING?)",
                               "use a kernel with tracing support (CONFIG_FTRACE, CONFIG_BPF_EVENTS)")
    if os.geteuid() != 0:
        raise ProbeUnavailable("tracefs is not mounted at /sys/kernel/tracing and only root can mount it", fix)
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(b"nodev", str(target).encode(), b"tracefs", ctypes.c_ulong(0), None)
    if rc != 0:
        err = ctypes.get_errno()
        raise ProbeUnavailable(f"cannot mount tracefs at {target}: {os.strerror(err)}", fix)
    log.info("mounted tracefs path=%s", target)
    return target


def _kernel_version() -> tuple[int, int]:
    parts = platform.release().split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def memlock_needed() -> bool:
    """Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK instead of the memory cgroup."""
    return _kernel_version() < (5, 11)


def raise_memlock() -> str:
    """Lift RLIMIT_MEMLOCK on kernels that still charge it; returns a one-line account of what was done."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if not memlock_needed():
        return "kernel charges BPF memory to the memory cgroup; RLIMIT_MEMLOCK does not matter"
    if soft == resource.RLIM_INFINITY:
        return "RLIMIT_MEMLOCK is already unlimited"
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError) as e:
        raise ProbeUnavailable(f"cannot raise RLIMIT_MEMLOCK (now {soft} bytes): {e}",
                               "run as root or set `LimitMEMLOCK=infinity` in the systemd unit") from None
    return "raised RLIMIT_MEMLOCK to unlimited"


def _is_uprobe(section: str) -> bool:
    """Uprobe programs (the TLS library's) attach per library file (tls_attach.py), not with the object."""
    return section.startswith(("uprobe", "uretprobe"))


def _tracepoint_of(section: str) -> str | None:
    """'tracepoint/syscalls/sys_enter_read' -> 'syscalls/sys_enter_read'; raw_tp sections -> category unknown."""
    if section.startswith("tracepoint/"):
        return section[len("tracepoint/"):]
    return None


def also_attached(name: str, tracefs: Path | None) -> tuple[list[str], list[str]]:
    """The extra tracepoints of program `name` this kernel has, and its optional ones it lacks; a required one
    missing is ProbeUnavailable."""
    present: list[str] = []
    missing: list[str] = []
    for tp in _ALSO_ATTACHED.get(name, ()):
        if tracefs is None or (tracefs / "events" / tp).is_dir():
            present.append(tp)
        elif tp in _OPTIONAL_TRACEPOINTS:
            missing.append(tp)
        else:
            raise ProbeUnavailable(f"this kernel has no tracepoint {tp} (needed by {name})",
                                   "use a kernel with CONFIG_FTRACE_SYSCALLS and the sock/tcp/sched tracepoints "
                                   "(5.8 or newer)")
    return present, missing


def _raw_tp_exists(name: str, root: Path | None) -> bool:
    if root is None:
        return True  # cannot tell without tracefs; let the attach decide
    return any((d / name).is_dir() for d in (root / "events").iterdir() if d.is_dir())


class _Object:
    """One .bpf.o: opened, configured, loaded, attached; its links and the object itself freed on close."""

    def __init__(self, lib: _libbpf.Libbpf, name: str, path: Path) -> None:
        self.lib = lib
        self.name = name
        self.path = path
        self.obj = lib.open_file(str(path))
        self.links: list[int] = []
        self.skipped: list[str] = []
        self.attached: list[str] = []
        self.attached_fds: list[int] = []  # program fds, owned by the object
        self.also: dict[str, list[str]] = {}  # program name -> the extra tracepoints this kernel has

    def has_map(self, name: str) -> bool:
        return bool(self.lib.lib.bpf_object__find_map_by_name(self.obj, name.encode()))

    def map(self, name: str) -> int:
        m = self.lib.lib.bpf_object__find_map_by_name(self.obj, name.encode())
        if not m:
            raise ProbeUnavailable(f"{self.path.name} has no map '{name}' (objects from another version?)",
                                   "rebuild the probes: pip install . (or make -C bpf)")
        return m

    def set_rodata(self, settings: ProbeSettings) -> None:
        rodata = [m for m in self.lib.maps(self.obj) if self.lib.map_name(m).endswith(".rodata")]
        if len(rodata) != 1:
            raise ProbeUnavailable(f"{self.path.name}: expected one .rodata section, found {len(rodata)}",
                                   "rebuild the probes from the bpf/ sources of this version")
        size = ctypes.c_size_t(0)
        self.lib.lib.bpf_map__initial_value(rodata[0], ctypes.byref(size))
        if size.value != _SETTINGS.size:
            raise ProbeUnavailable(f"{self.path.name}: .rodata is {size.value} bytes, expected {_SETTINGS.size} "
                                   "(struct helix_settings)", "rebuild the probes from the bpf/ sources of this version")
        self_pid = os.getpid() if settings.self_pid is None else settings.self_pid
        slow = _SLOW_FILE_OFF if settings.slow_file_ns is None else max(0, settings.slow_file_ns)
        data = _SETTINGS.pack(settings.payload_bytes, self_pid, slow, max(0, settings.message_gap_ns),
                              max(0, settings.thread_rv_ttl_ns))
        self.lib.check(self.lib.lib.bpf_map__set_initial_value(rodata[0], data, len(data)),
                       f"cannot set the settings of {self.path.name}")

    def skip_missing(self, tracefs: Path | None) -> None:
        """Turn off optional programs whose tracepoint this kernel lacks; fail on required ones."""
        for p in self.lib.programs(self.obj):
            name, section = self.lib.prog_name(p), self.lib.prog_section(p)
            if _is_uprobe(section):
                continue
            self.also[name] = self._also_attached(name, tracefs)
            tp = _tracepoint_of(section)
            if tp is not None:
                exists = tracefs is None or (tracefs / "events" / tp).is_dir()
            else:
                exists = _raw_tp_exists(section.split("/", 1)[1], tracefs)
            if exists:
                continue
            if name in _OPTIONAL_PROGRAMS:
                self.lib.check(self.lib.lib.bpf_program__set_autoload(p, False), f"cannot skip {name}")
                self.skipped.append(name)
                log.info("tracepoint missing, program skipped program=%s section=%s", name, section)
            else:
                raise ProbeUnavailable(f"this kernel has no tracepoint {section.split('/', 1)[1]} (needed by {name})",
                                       "use a kernel with CONFIG_FTRACE_SYSCALLS and the sock/tcp/sched tracepoints "
                                       "(5.8 or newer)")

    def _also_attached(self, name: str, tracefs: Path | None) -> list[str]:
        present, missing = also_attached(name, tracefs)
        for tp in missing:
            self.skipped.append(f"{name}@{tp.split('/', 1)[1]}")
            log.info("tracepoint missing, not attached program=%s tracepoint=%s", name, tp)
        return present

    def load(self) -> None:
        self.lib.recent_warnings.clear()
        self.lib.check(self.lib.lib.bpf_object__load(self.obj), f"cannot load {self.path.name}")

    def attach_all(self) -> None:
        self.attached.clear()
        self.attached_fds.clear()
        for p in self.lib.programs(self.obj):
            if not self.lib.lib.bpf_program__autoload(p) or _is_uprobe(self.lib.prog_section(p)):
                continue
            name = self.lib.prog_name(p)
            self.links.append(self.lib.attach(p))
            self.links.extend(self.lib.attach_tracepoint(p, tp) for tp in self.also.get(name, ()))
            self.attached.append(name)
            self.attached_fds.append(self.lib.prog_fd(p))

    def detach_all(self) -> None:
        while self.links:
            self.lib.lib.bpf_link__destroy(self.links.pop())

    def close(self) -> None:
        self.detach_all()
        if self.obj:
            self.lib.lib.bpf_object__close(self.obj)
            self.obj = 0


@functools.cache
def _pid_words() -> int:
    """Words of a bitmap with one bit per pid of this machine (pid_max; a pid beyond it falls back to a hash)."""
    try:
        pid_max = int(_PID_MAX.read_text())
    except (OSError, ValueError):
        pid_max = 1 << 22  # PID_MAX_LIMIT on 64-bit kernels
    return max(1, (pid_max + 63) // 64)


class ProbeSet:
    """The loaded and attached probe objects, with their live settings; `close()` removes all of it."""

    def __init__(self, settings: ProbeSettings | None = None, *, objects: Path | None = None) -> None:
        self.settings = settings or ProbeSettings()
        self.settings.validate()
        self.memlock = "not checked"
        self._objects: list[_Object] = []
        self._maps: dict[str, tuple[int, int, int, int]] = {}  # name -> (fd, key size, value size, type)
        self._config = (0, 0)  # (sample_threshold, flags) as last written
        self._allowed_words: dict[int, int] = {}  # allowed_bits words as last written (absent: 0)
        self._closed = False
        self.kernel_sampling = True  # False: the compat object, which holds no exchange back
        if not BTF_PATH.exists():
            raise ProbeUnavailable("this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing)",
                                   "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions since 2020)")
        try:
            self._open(objects or objects_dir())
        except ProbeUnavailable:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise ProbeUnavailable(f"cannot load the probes: {e}", "run `helix doctor`") from None

    def _open(self, directory: Path) -> None:
        lib = _libbpf.libbpf()
        tracefs = ensure_tracefs()
        self.memlock = raise_memlock()
        first: _Object | None = None
        for name in self.settings.sets:
            path = directory / f"{name}.bpf.o"
            if name == "io" and _kernel_version() < _BPF_LOOP_KERNEL and (directory / "io_compat.bpf.o").is_file():
                path = directory / "io_compat.bpf.o"
                self.kernel_sampling = False
                log.info("kernel %s has no bpf_loop: exchanges are sampled in userspace only", platform.release())
            if not path.is_file():
                raise ProbeUnavailable(f"probe object {path} is missing",
                                       "install the package from a build that compiled bpf/ (pip install . on a "
                                       "machine with clang), or point HELIX_BPF_OBJECTS at the .bpf.o files")
            obj = _Object(lib, name, path)
            self._objects.append(obj)
            obj.set_rodata(self.settings)
            if first is None:
                lib.check(lib.lib.bpf_map__set_max_entries(obj.map("events"), self.settings.ringbuf_bytes),
                          "cannot size the ring buffer")
                for bitmap in _PID_BITMAPS:
                    if obj.has_map(bitmap):  # objects built before the bitmaps check the hash alone
                        lib.check(lib.lib.bpf_map__set_max_entries(obj.map(bitmap), _pid_words()),
                                  f"cannot size the {bitmap} bitmap")
            else:
                for shared in _SHARED_MAPS:
                    if shared in _PID_BITMAPS and not obj.has_map(shared):
                        continue
                    lib.check(lib.lib.bpf_map__reuse_fd(obj.map(shared), self._maps[shared][0]),
                              f"cannot share map {shared} with {name}.bpf.o")
            obj.skip_missing(tracefs)
            obj.load()
            for m in lib.maps(obj.obj):
                map_name = lib.map_name(m)
                if map_name not in self._maps and "." not in map_name:  # internal .rodata/.bss maps
                    self._maps[map_name] = (lib.lib.bpf_map__fd(m), lib.lib.bpf_map__key_size(m),
                                            lib.lib.bpf_map__value_size(m), lib.lib.bpf_map__type(m))
            if first is None:
                first = obj
                self._write_config()
                self.set_red_bounds(())
        for obj in self._objects:
            obj.attach_all()
        log.info("probes attached sets=%s programs=%d tracepoints=%d skipped=%s", ",".join(self.settings.sets),
                 sum(len(o.attached) for o in self._objects), self.attached_tracepoints, ",".join(s for o in self._objects for s in o.skipped) or "-")

    # -- live settings -------------------------------------------------------------------------------

    def _write_config(self) -> None:
        fd = self._map("config")[0]
        threshold, flags = self._config
        _libbpf.libbpf().update(fd, _U32.pack(0), _CONFIG.pack(threshold, flags, 0))

    def update_config(self, *, sample_threshold: int | None = None, filter_pids: bool | None = None,
                      filter_cgroups: bool | None = None) -> None:
        """Change live settings in the kernel's config map; None leaves a setting as it is."""
        threshold, flags = self._config
        if sample_threshold is not None:
            if not 0 <= sample_threshold <= _THRESHOLD_MAX:
                raise ValueError(f"sample threshold must be a 56-bit value, got {sample_threshold}")
            threshold = sample_threshold
        if filter_pids is not None:
            flags = (flags | _FILTER_PIDS) if filter_pids else (flags & ~_FILTER_PIDS)
        if filter_cgroups is not None:
            flags = (flags | _FILTER_CGROUPS) if filter_cgroups else (flags & ~_FILTER_CGROUPS)
        self._config = (threshold, flags)
        self._write_config()

    def set_sample_threshold(self, threshold: int) -> None:
        """Set the 56-bit sampling threshold: exchanges whose randomness is below it are held back (0 keeps all)."""
        self.update_config(sample_threshold=threshold)

    def sample_threshold(self) -> int:
        """The sampling threshold as the kernel sees it."""
        raw = _libbpf.libbpf().lookup(self._map("config")[0], _U32.pack(0), _CONFIG.size)
        return _CONFIG.unpack(raw)[0] if raw else 0

    def _replace_set(self, map_name: str, key: struct.Struct, values: Iterable[int]) -> None:
        lib = _libbpf.libbpf()
        fd, key_size, _, _ = self._map(map_name)
        wanted = {key.pack(v) for v in values}
        for k in lib.keys(fd, key_size):
            if k not in wanted:
                lib.delete(fd, k)
        for k in wanted:
            lib.update(fd, k, b"\x01")

    def _replace_bits(self, pids: Iterable[int]) -> None:
        """The allow-list's bitmap (bpf/maps.bpf.h allowed_bits): the words that change are rewritten."""
        if "allowed_bits" not in self._maps:
            return
        lib = _libbpf.libbpf()
        fd = self._map("allowed_bits")[0]
        words: dict[int, int] = {}
        for pid in pids:
            words[pid // 64] = words.get(pid // 64, 0) | (1 << (pid % 64))
        old, self._allowed_words = self._allowed_words, words
        for w in old.keys() | words.keys():
            if old.get(w) != words.get(w) and w < _pid_words():
                lib.update(fd, _U32.pack(w), _U64.pack(words.get(w, 0)))

    def set_allowed_pids(self, pids: Iterable[int] | None) -> None:
        """Trace only these processes (tgids); None traces every process again."""
        if pids is None:
            self.update_config(filter_pids=False)
            self._replace_set("allowed_pids", _U32, ())
            self._replace_bits(())
            return
        pids = list(pids)
        self._replace_set("allowed_pids", _U32, pids)
        self._replace_bits(pids)
        self.update_config(filter_pids=True)

    def set_allowed_cgroups(self, cgroup_ids: Iterable[int] | None) -> None:
        """Trace only processes in these cgroup v2 ids (inode numbers of the cgroup dirs); None lifts it."""
        if cgroup_ids is None:
            self.update_config(filter_cgroups=False)
            self._replace_set("allowed_cgroups", _U64, ())
            return
        self._replace_set("allowed_cgroups", _U64, cgroup_ids)
        self.update_config(filter_cgroups=True)

    def set_red_bounds(self, bounds_ns: Sequence[int] | None) -> None:
        """Histogram bounds (ns, ascending, at most 16) for the kernel's RED aggregates; None: the kernel never
        samples an exchange out (it could not count it into the agent's histogram)."""
        if bounds_ns is None:
            data = _RED_BOUNDS.pack(0, 0, *([0] * RED_BOUNDS_MAX))
        else:
            b = [int(x) for x in bounds_ns]
            if len(b) > RED_BOUNDS_MAX or b != sorted(b) or any(x < 0 for x in b):
                raise ValueError(f"at most {RED_BOUNDS_MAX} ascending non-negative bounds, got {b}")
            data = _RED_BOUNDS.pack(len(b), 1, *(b + [0] * (RED_BOUNDS_MAX - len(b))))
        _libbpf.libbpf().update(self._map("red_bounds")[0], _U32.pack(0), data)

    def red_aggregates(self) -> list[RedAggregate]:
        """The kernel's cumulative RED counts of sampled-out exchanges, one per series."""
        lib = _libbpf.libbpf()
        fd = self._map("red_agg")[0]
        out = []
        for raw_key in lib.keys(fd, _RED_KEY.size):
            raw = lib.lookup(fd, raw_key, _RED_VAL.size)
            if raw is None:
                continue  # deleted meanwhile
            out.append(RedAggregate.decode(raw_key, raw))
        return out

    def delete_red_aggregate(self, agg: RedAggregate) -> None:
        """Forget one series (its process has ended: nothing can add to it any more)."""
        _libbpf.libbpf().delete(self._map("red_agg")[0], agg.raw_key)

    def decision_counts(self) -> dict[str, int]:
        """The kernel's sampling decisions by outcome, summed over CPUs (counted while the threshold is not 0)."""
        return self._percpu_counts("decisions", _DECISIONS)

    # -- introspection -------------------------------------------------------------------------------

    def _map(self, name: str) -> tuple[int, int, int, int]:
        if self._closed:
            raise ProbeUnavailable("the probes are closed", "open them again")
        try:
            return self._maps[name]
        except KeyError:
            raise KeyError(f"no BPF map named {name!r}; maps: {', '.join(sorted(self._maps))}") from None

    def map_fd(self, name: str) -> int:
        """The fd of a map (valid until close)."""
        return self._map(name)[0]

    @property
    def map_names(self) -> list[str]:
        """Names of every map of the set."""
        return sorted(self._maps)

    def map_entry_count(self, name: str) -> int:
        """Number of keys in a hash map right now (for leak checks)."""
        fd, key_size, _, _ = self._map(name)
        return len(_libbpf.libbpf().keys(fd, key_size))

    def drop_counts(self) -> dict[str, int]:
        """Kernel-side counted losses, summed over CPUs: ringbuf_full, state_full."""
        return self._percpu_counts("drops", _DROP_REASONS)

    def _percpu_counts(self, map_name: str, names: tuple[str, ...]) -> dict[str, int]:
        lib = _libbpf.libbpf()
        fd, _, value_size, _ = self._map(map_name)
        ncpu = lib.possible_cpus()
        stride = (value_size + 7) // 8 * 8
        out = {}
        for i, name in enumerate(names):
            raw = lib.lookup(fd, _U32.pack(i), stride * ncpu) or b""
            out[name] = sum(_U64.unpack_from(raw, c * stride)[0] for c in range(len(raw) // stride))
        return out

    def pyctx_counts(self) -> dict[str, int]:
        """The Python context probes' counters (bpf/io.h helix_pyctx_count), summed over CPUs; {} without them."""
        return self._percpu_counts("py_counts", _PYCTX_COUNTS) if "py_counts" in self._maps else {}

    def lost_events(self) -> int:
        """Records the kernel could not put in the ring buffer (userspace too slow)."""
        return self.drop_counts()["ringbuf_full"]

    @property
    def object_files(self) -> list[str]:
        """File names of the loaded objects (io_compat.bpf.o instead of io.bpf.o on kernels before 5.17)."""
        return [o.path.name for o in self._objects]

    @property
    def attached_programs(self) -> list[str]:
        """Names of the attached programs."""
        return [p for o in self._objects for p in o.attached]

    @property
    def attached_tracepoints(self) -> int:
        """How many tracepoints the attached programs are on (one program may serve several)."""
        return sum(len(o.links) for o in self._objects)

    @property
    def attached(self) -> bool:
        """Whether the programs are attached (they are after loading, until detach() or close())."""
        return any(o.links for o in self._objects)

    def detach(self) -> None:
        """Take every program off its tracepoint; the programs and their maps (connection state, settings) stay
        loaded, so attach() resumes in milliseconds instead of loading again."""
        for obj in self._objects:
            obj.detach_all()

    def attach(self) -> None:
        """Put the programs back on their tracepoints after detach()."""
        if self._closed:
            raise ProbeUnavailable("the probes are closed", "open them again")
        for obj in self._objects:
            if not obj.links:
                obj.attach_all()

    def program_info(self) -> dict[str, _libbpf.ProgInfo]:
        """The kernel's bpf_prog_info of each attached program and of the TLS uprobe programs, by function name
        (run_time_ns and run_cnt advance only while run-time statistics are on: see cost.py)."""
        if self._closed:
            raise ProbeUnavailable("the probes are closed", "open them again")
        lib = _libbpf.libbpf()
        out = {name: lib.prog_info(fd) for o in self._objects for name, fd in zip(o.attached, o.attached_fds)}
        out.update((name, lib.prog_info(lib.prog_fd(p))) for name, p in self.uprobe_programs().items())
        return out

    def uprobe_programs(self) -> dict[str, int]:
        """The loaded uprobe programs (the TLS library's, bpf/tls.bpf.h), by name: attached per file by
        tls_attach.py, not with the objects."""
        if self._closed:
            raise ProbeUnavailable("the probes are closed", "open them again")
        lib = _libbpf.libbpf()
        return {lib.prog_name(p): p for o in self._objects for p in lib.programs(o.obj)
                if _is_uprobe(lib.prog_section(p)) and lib.lib.bpf_program__autoload(p)}

    def hint_h2(self, sock: int) -> None:
        """Tell the probes that `sock` speaks HTTP/2 (seen in its message snapshots): they walk its frames from its
        next message on (bpf/h2.bpf.h). Kernels without bpf_loop never do."""
        _libbpf.libbpf().update(self._map("h2_hint")[0], _U64.pack(sock), b"\x01")

    @property
    def skipped_programs(self) -> list[str]:
        """Optional programs left out because this kernel lacks their tracepoint."""
        return [p for o in self._objects for p in o.skipped]

    @property
    def closed(self) -> bool:
        """Whether close() ran."""
        return self._closed

    def close(self) -> None:
        """Detach every program and free every map (nothing is pinned); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for obj in reversed(self._objects):
            obj.close()
        self._objects.clear()
        self._maps.clear()

    def __enter__(self) -> ProbeSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def program_names(directory: Path | None = None) -> list[str]:
    """The function names of every program in the probe objects (opened, not loaded)."""
    lib = _libbpf.libbpf()
    names: list[str] = []
    for name in PROBE_SETS:
        obj = lib.open_file(str((directory or objects_dir()) / f"{name}.bpf.o"))
        try:
            names += [lib.prog_name(p) for p in lib.programs(obj)]
        finally:
            lib.lib.bpf_object__close(obj)
    return names


def open_probes(cfg: Any = None, **overrides: Any) -> ProbeSet:
    """Load the probes as configured (a Config, an EbpfSourceConfig or None for defaults).

    Raises ProbeUnavailable (reason + fix) and nothing else when the kernel or permissions do not allow it.
    """
    try:
        ebpf = getattr(cfg, "ebpf", cfg)
        if ebpf is not None and getattr(ebpf, "enabled", "auto") == "off":
            raise ProbeUnavailable("the eBPF source is disabled by configuration", "set sources.ebpf.enabled = \"auto\"")
        settings = settings_from_config(ebpf) if ebpf is not None else ProbeSettings()
        if overrides:
            fields = {f: getattr(settings, f) for f in ProbeSettings.__dataclass_fields__}
            fields.update(overrides)
            settings = ProbeSettings(**fields)
        probes = ProbeSet(settings)
        pids = tuple(getattr(ebpf, "pids", ()) or ())
        if pids:
            probes.set_allowed_pids(pids)
        return probes
    except ProbeUnavailable:
        raise
    except Exception as e:  # degraded mode must not crash the agent on an unforeseen failure
        log.exception("unexpected failure loading the probes")
        raise ProbeUnavailable(f"cannot load the probes: {type(e).__name__}: {e}", "run `helix doctor`") from e


class KernelEventStream:
    """Ring-buffer records -> decoded events, delivered in batches to `on_events` from the asyncio loop.

    The probes wake the reader only when a sixteenth of the ring is waiting (bpf/maps.bpf.h rb_wakeup: a wakeup per
    record cost the traced syscalls more than the record itself), so the reader also polls every `poll_interval`
    seconds: that bounds how long a record waits at low rates. Each poll that finds records is a pass of the whole
    pipeline, whose fixed cost is most of the agent's work at low rates, so the interval is as long as waiting allows:
    kernel spans wait seconds in the assembler's window anyway, and an exec, which the TLS probes must follow at once,
    wakes the reader itself (proc.bpf.c).
    """

    def __init__(self, probes: ProbeSet, on_events: Callable[[list[KernelEvent]], None], *,
                 max_batch: int = 4096, poll_interval: float = 0.25) -> None:
        self.probes = probes
        self.on_events = on_events
        self.max_batch = max_batch
        self.poll_interval = poll_interval
        self._timer: asyncio.TimerHandle | None = None
        self.stats = DecodeStats()
        self.batches = 0
        self._raw: list[bytes] = []
        self._full = False
        self._rb = 0
        self._epoll_fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cb = _libbpf.SampleCallback(self._on_sample)  # kept referenced while libbpf may call it

    def _on_sample(self, _ctx: int | None, data: int, size: int) -> int:
        self._raw.append(ctypes.string_at(data, size))
        if len(self._raw) >= self.max_batch:
            self._full = True
            return -errno.EAGAIN  # stop here; the epoll fd stays readable and the loop calls us again
        return 0

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Create the ring-buffer reader and register its epoll fd with the loop (call from the loop)."""
        if self._rb:
            return
        lib = _libbpf.libbpf()
        self._rb = lib.check_ptr(lib.lib.ring_buffer__new(self.probes.map_fd("events"), self._cb, None, None),
                                 "cannot create the ring buffer reader")
        self._epoll_fd = lib.lib.ring_buffer__epoll_fd(self._rb)
        self._loop = loop or asyncio.get_running_loop()
        self._loop.add_reader(self._epoll_fd, self._on_readable)
        self._timer = self._loop.call_later(self.poll_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._on_readable()
        if self._loop is not None:
            self._timer = self._loop.call_later(self.poll_interval, self._on_timer)

    def _on_readable(self) -> None:
        try:
            self.poll()
        except Exception:  # a failing consumer must not take the reader off the loop
            log.exception("kernel event batch failed")

    def poll(self) -> int:
        """Consume what the ring buffer holds now (never blocks); returns the number of events delivered."""
        if not self._rb:
            return 0
        self._raw.clear()
        self._full = False
        rc = _libbpf.libbpf().lib.ring_buffer__consume(self._rb)
        if rc < 0 and not self._full:
            raise _libbpf.LibbpfError("reading the ring buffer failed", -rc)
        if not self._raw:
            return 0
        events: list[KernelEvent] = []
        stats = self.stats
        for raw in self._raw:
            ev = decode_event(raw, stats)
            if ev is not None:
                events.append(ev)
        self._raw.clear()
        if events:
            self.batches += 1
            self.on_events(events)
        return len(events)

    @property
    def lost(self) -> int:
        """Records lost in the kernel (ring buffer full) since the probes were loaded."""
        return self.probes.lost_events() if not self.probes.closed else 0

    def close(self) -> None:
        """Unregister from the loop and free the reader (the probes stay loaded)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None and self._epoll_fd >= 0:
            try:
                self._loop.remove_reader(self._epoll_fd)
            except Exception:  # the loop may already be closed at shutdown
                pass
        self._loop = None
        self._epoll_fd = -1
        if self._rb:
            _libbpf.libbpf().lib.ring_buffer__free(self._rb)
            self._rb = 0
