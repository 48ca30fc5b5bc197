"""The process's capabilities, and the switch from root to the agent's own user keeping only the probes' ones.

Container engines give capabilities to root alone: a non-root user's are cleared at exec (Docker has no ambient
capabilities for it), and file capabilities on the interpreter make every exec fail wherever the engine cannot
grant all of them (Docker 20.10 knows no CAP_BPF). So the image starts `helix run` / `helix doctor` as root with
`--cap-add` and the process itself becomes the user named by $HELIX_USER, keeping in effect only CAP_BPF,
CAP_PERFMON, CAP_DAC_READ_SEARCH and CAP_SYS_RESOURCE, with no_new_privs set. CAP_SYS_ADMIN is kept, where it is
granted, only for the TLS uprobes (kernels with "perf: Revert to requiring CAP_SYS_ADMIN for uprobes", 2025, refuse
them to CAP_PERFMON) or where it stands in for the first two. Without $HELIX_USER, or started as another user,
nothing changes.
"""
from __future__ import annotations

import ctypes
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from ..errors import HelixError

__all__ = ["CAP_NAMES", "ProcessCaps", "read_caps", "caps_to_keep", "why_kept", "Switched", "switch_user",
           "switch_user_from_env", "switched", "in_container", "in_host_pid_namespace"]

CAP_DAC_READ_SEARCH = 2
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
CAP_PERFMON = 38
CAP_BPF = 39
CAP_NAMES = {CAP_DAC_READ_SEARCH: "DAC_READ_SEARCH", CAP_SETGID: "SETGID", CAP_SETUID: "SETUID",
             CAP_SYS_ADMIN: "SYS_ADMIN", CAP_SYS_RESOURCE: "SYS_RESOURCE", CAP_PERFMON: "PERFMON", CAP_BPF: "BPF"}
# What the probes use: bpf() and perf events (CAP_SYS_ADMIN covers both before 5.8 and where an engine cannot
# grant CAP_BPF), tracefs, which is root-only (DAC_READ_SEARCH), and RLIMIT_MEMLOCK on kernels before 5.11.
PROBE_CAPS = (CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_SYS_RESOURCE)

_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_INIT_PID_NS = "pid:[4026531836]"  # PROC_PID_INIT_INO: the kernel's first pid namespace, the host's


@dataclass(slots=True, frozen=True)
class ProcessCaps:
    """Capability sets of a process, as bit masks (bit n = capability n)."""

    effective: int
    permitted: int
    bounding: int

    def has(self, cap: int) -> bool:
        """Whether `cap` is in effect."""
        return bool(self.effective >> cap & 1)


def read_caps(status: str | None = None) -> ProcessCaps:
    """This process's capabilities from /proc/self/status (or the given text of such a file)."""
    text = status if status is not None else Path("/proc/self/status").read_text()
    sets = {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in text.splitlines()) if k.startswith("Cap")}
    return ProcessCaps(sets.get("CapEff", 0), sets.get("CapPrm", 0), sets.get("CapBnd", 0))


def caps_to_keep(permitted: int, *, uprobes: bool) -> int:
    """The probe capabilities among `permitted`; CAP_SYS_ADMIN too for `uprobes`, or where CAP_BPF or CAP_PERFMON is
    missing."""
    keep = 0
    for cap in PROBE_CAPS:
        keep |= permitted & (1 << cap)
    if uprobes or (keep >> CAP_BPF & 1) == 0 or (keep >> CAP_PERFMON & 1) == 0:
        keep |= permitted & (1 << CAP_SYS_ADMIN)
    return keep


def why_kept(kept: int, *, uprobes: bool) -> str:
    """Why CAP_SYS_ADMIN is or is not among `kept`, for the log line at start."""
    if not kept >> CAP_SYS_ADMIN & 1:
        if uprobes:
            return ("CAP_SYS_ADMIN is not granted: current kernels refuse the TLS uprobes without it, so TLS plaintext "
                    "may not be read (grant it, or set sources.ebpf.tls = false)")
        return "no CAP_SYS_ADMIN: sources.ebpf.tls is off, so no uprobes are attached"
    if uprobes:
        return "CAP_SYS_ADMIN kept for the TLS uprobes: current kernels refuse uprobes without it"
    return "CAP_SYS_ADMIN kept in place of CAP_BPF or CAP_PERFMON, which are not granted"


def cap_list(mask: int) -> str:
    """'CAP_BPF, CAP_PERFMON' for a mask (capabilities this module does not name by number)."""
    names = [f"CAP_{CAP_NAMES.get(n, str(n))}" for n in range(64) if mask >> n & 1]
    return ", ".join(names) or "none"


@dataclass(slots=True, frozen=True)
class Switched:
    """What switch_user did: the user it became and the capabilities it kept ('' = it stayed root, and why)."""

    user: str
    uid: int
    kept: int
    stayed_root_because: str = ""
    why: str = ""  # why CAP_SYS_ADMIN is kept or not


_switched: Switched | None = None


def switched() -> Switched | None:
    """What this process's switch_user_from_env did, or None when it did nothing."""
    return _switched


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _capset(libc: ctypes.CDLL, mask: int) -> None:
    data = (_CapData * 2)()
    for i in range(2):
        word = mask >> (32 * i) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
        data[i].inheritable = 0
    if libc.capset(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _prctl(libc: ctypes.CDLL, option: int, arg: int) -> None:
    if libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def switch_user(name: str, *, uprobes: bool) -> Switched | None:
    """As root: become user `name`, keeping the probe capabilities this process has (CAP_SYS_ADMIN too for `uprobes`);
    None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise HelixError(f"HELIX_USER={name}: there is no such user here (set HELIX_USER to an existing user, "
                         "or unset it to run as root)") from None
    if pw.pw_uid == 0:
        return None
    caps = read_caps()
    keep = caps_to_keep(caps.permitted, uprobes=uprobes)
    why = why_kept(keep, uprobes=uprobes)
    missing = [CAP_NAMES[c] for c in (CAP_SETUID, CAP_SETGID) if not caps.permitted >> c & 1]
    if missing:
        # Root without the right to change user: it stays root, with no more than the probe capabilities.
        libc = ctypes.CDLL(None, use_errno=True)
        _capset(libc, keep)
        _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1)
        return Switched("root", 0, keep, f"no CAP_{' or CAP_'.join(missing)} to switch to user {name}", why)
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, _PR_SET_KEEPCAPS, 1)  # permitted capabilities survive the change of uid
    os.setgroups([])
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    _prctl(libc, _PR_SET_KEEPCAPS, 0)
    _capset(libc, keep)  # in effect again (the uid change cleared the effective set), and nothing else permitted
    _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1)
    os.environ["HOME"] = pw.pw_dir
    return Switched(name, pw.pw_uid, keep, why=why)


def switch_user_from_env(*, uprobes: bool) -> Switched | None:
    """switch_user($HELIX_USER) when it is set and this process is root; remembered for switched()."""
    global _switched
    name = os.environ.get("HELIX_USER", "")
    if name and _switched is None:
        _switched = switch_user(name, uprobes=uprobes)
    return _switched


def in_container() -> bool:
    """Whether this is a container: $container set (podman, systemd-nspawn, our image) or /run/.containerenv."""
    # Not /.dockerenv: machines made from exported container images keep it.
    return bool(os.environ.get("container")) or Path("/run/.containerenv").exists()


def in_host_pid_namespace() -> bool:
    """Whether this process sees the host's process ids, as the probes do (false in a container without --pid=host)."""
    try:
        return os.readlink("/proc/self/ns/pid") == _INIT_PID_NS
    except OSError:
        return True  # cannot tell: do not claim a problem
