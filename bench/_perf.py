"""perf_event_open for the kernel-cost benches: per-process tracepoint counters and reference BPF programs.

`TracepointCounter` counts how often a tracepoint fired in given processes (and the children they start), which
tells how many runs of a probe program a workload caused while the rest of a shared machine runs the same programs.
Syscall tracepoints cannot be counted that way while a BPF program is attached to them (a program that returns 0
stops the kernel from passing the record on to perf), so `syscall_counter` counts raw_syscalls:sys_enter filtered
on the syscall's number instead.
`ReferenceProgram` attaches a tiny hand-assembled program next to the probes, so that a run of it gives the floor
of what any tracepoint program costs on this machine (the same-run reference of bench/kernel_cost.py).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import struct

from edge.sources.ebpf import _libbpf
from edge.sources.ebpf.events import KernelEvent
from edge.sources.ebpf.loader import KernelEventStream, ProbeSet, ensure_tracefs

__all__ = ["tracepoint_id", "TracepointCounter", "syscall_counter", "SYSCALL_NR", "ReferenceProgram", "REFERENCES",
           "Drain"]

_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}[platform.machine()]
_PERF_TYPE_TRACEPOINT = 2
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_ATTR_SIZE = 128  # PERF_ATTR_SIZE_VER7
_INHERIT = 1 << 1  # perf_event_attr flags bit
_IOC_ENABLE = 0x2400  # _IO('$', 0)
_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
_IOC_SET_FILTER = 0x40082406  # _IOW('$', 6, char *)
_BPF_PROG_TYPE_TRACEPOINT = 5

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def tracepoint_id(name: str) -> int:
    """The id of a tracepoint such as 'syscalls/sys_enter_read'."""
    return int((ensure_tracefs() / "events" / name / "id").read_text())


def _perf_event_open(config: int, pid: int, cpu: int, flags: int, period: int) -> int:
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIQQ", attr, 0, _PERF_TYPE_TRACEPOINT, _ATTR_SIZE, config, period)
    struct.pack_into("=Q", attr, 40, flags)
    buf = (ctypes.c_char * _ATTR_SIZE).from_buffer(attr)
    fd = _libc.syscall(_NR_PERF_EVENT_OPEN, buf, ctypes.c_int(pid), ctypes.c_int(cpu), ctypes.c_int(-1),
                       ctypes.c_ulong(_PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open(tracepoint {config}, pid {pid}): {os.strerror(err)}")
    return fd


# The syscalls the probes trace: their numbers per architecture (arch/x86/entry/syscalls/syscall_64.tbl,
# include/uapi/asm-generic/unistd.h).
SYSCALL_NR = {
    "x86_64": {"read": 0, "write": 1, "close": 3, "readv": 19, "writev": 20, "connect": 42, "accept": 43,
               "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "fsync": 74, "fdatasync": 75,
               "accept4": 288, "epoll_wait": 232, "epoll_pwait": 281, "epoll_pwait2": 441},
    "aarch64": {"close": 57, "read": 63, "write": 64, "readv": 65, "writev": 66, "fsync": 82, "fdatasync": 83,
                "accept": 202, "connect": 203, "sendto": 206, "recvfrom": 207, "sendmsg": 211, "recvmsg": 212,
                "accept4": 242, "epoll_pwait": 22, "epoll_pwait2": 441},
}[platform.machine()]


class TracepointCounter:
    """How often each tracepoint fired in the processes `pids` (and children started after); keys name the counts,
    values are (tracepoint, filter or "")."""

    def __init__(self, counts: dict[str, tuple[str, str]], pids: list[int]) -> None:
        self.fds: dict[str, list[int]] = {}
        try:
            for key, (tp, flt) in counts.items():
                tid = tracepoint_id(tp)
                self.fds[key] = []
                for pid in pids:
                    fd = _perf_event_open(tid, pid, -1, _INHERIT, 0)
                    self.fds[key].append(fd)
                    if flt:
                        fcntl.ioctl(fd, _IOC_SET_FILTER, ctypes.create_string_buffer(flt.encode()))
        except OSError:
            self.close()
            raise

    def read(self) -> dict[str, int]:
        """Counts so far, per tracepoint, summed over the processes."""
        return {tp: sum(struct.unpack("=Q", os.read(fd, 8))[0] for fd in fds) for tp, fds in self.fds.items()}

    def close(self) -> None:
        for fds in self.fds.values():
            for fd in fds:
                os.close(fd)
        self.fds.clear()


def syscall_counter(calls: list[str], pids: list[int], extra: dict[str, str] | None = None) -> TracepointCounter:
    """Counts of each syscall in `calls` made by `pids` (keys: the call names), plus `extra` tracepoints by name."""
    counts = {c: ("raw_syscalls/sys_enter", f"id == {SYSCALL_NR[c]}") for c in calls}
    counts.update({k: (tp, "") for k, tp in (extra or {}).items()})
    return TracepointCounter(counts, pids)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("=BBhi", code, (src << 4) | dst, off, imm)


# Hand-assembled programs (struct bpf_insn): what any tracepoint program pays, and one hash-map miss on the tgid.
_MOV_R0_0, _EXIT = _insn(0xb7), _insn(0x95)
REFERENCES = ("return 0", "tgid hash miss")


def _program(kind: str, map_fd: int) -> bytes:
    if kind == "return 0":
        return _MOV_R0_0 + _EXIT
    return b"".join([
        _insn(0x85, imm=14),                   # call bpf_get_current_pid_tgid
        _insn(0x77, dst=0, imm=32),            # r0 >>= 32: the tgid
        _insn(0x63, dst=10, src=0, off=-4),    # *(u32 *)(r10 - 4) = r0
        _insn(0xbf, dst=2, src=10),            # r2 = r10
        _insn(0x07, dst=2, imm=-4),            # r2 += -4
        _insn(0x18, dst=1, src=1, imm=map_fd),  # r1 = map (BPF_PSEUDO_MAP_FD)
        _insn(0x00),
        _insn(0x85, imm=1),                    # call bpf_map_lookup_elem
        _MOV_R0_0, _EXIT,
    ])


class ReferenceProgram:
    """A reference program (one of REFERENCES) attached to a tracepoint until close()."""

    def __init__(self, kind: str, tracepoint: str) -> None:
        lib = _libbpf.libbpf()
        self.kind = kind
        self.map_fd = -1
        self.prog_fd = -1
        self.perf_fd = -1
        try:
            if kind != "return 0":
                # the size of the probes' allowed_pids: an empty hash, so that every lookup misses
                self.map_fd = lib.map_create(_libbpf.BPF_MAP_TYPE_HASH, "ref_tgids", 4, 1, 4096)
            insns = _program(kind, self.map_fd)
            lib.lib.bpf_prog_load.restype = ctypes.c_int
            lib.lib.bpf_prog_load.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                              ctypes.c_size_t, ctypes.c_void_p]
            self.prog_fd = lib.check(lib.lib.bpf_prog_load(_BPF_PROG_TYPE_TRACEPOINT, b"helix_ref", b"GPL", insns,
                                                           len(insns) // 8, None), f"cannot load the {kind} reference")
            self.perf_fd = _perf_event_open(tracepoint_id(tracepoint), -1, 0, 0, 1)
            fcntl.ioctl(self.perf_fd, _IOC_SET_BPF, self.prog_fd)
            fcntl.ioctl(self.perf_fd, _IOC_ENABLE, 0)
        except BaseException:
            self.close()
            raise

    def info(self) -> _libbpf.ProgInfo:
        """The program's bpf_prog_info (run counters)."""
        return _libbpf.libbpf().prog_info(self.prog_fd)

    def close(self) -> None:
        for fd in (self.perf_fd, self.prog_fd, self.map_fd):
            if fd >= 0:
                os.close(fd)
        self.perf_fd = self.prog_fd = self.map_fd = -1



class Drain:
    """The bench process standing in for the agent: it reads and decodes the probes' ring buffer on the running
    loop (the records' consumer the kernel wakes), counting the events."""

    def __init__(self, probes: ProbeSet) -> None:
        self.events = 0
        self.stream = KernelEventStream(probes, self._count)
        self.stream.start()

    def _count(self, events: list[KernelEvent]) -> None:
        self.events += len(events)

    def close(self) -> None:
        self.stream.close()
