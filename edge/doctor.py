"""`helix doctor`: what this host allows the eBPF probes to do, and how to fix what it does not.

Each check is independent and never raises; the last one actually loads and attaches the probes, then
detaches them, so "ok" means the agent will get kernel events here.
"""
from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import accel
from .config import Config, load_config
from .errors import ConfigError, HelixError, ProbeUnavailable

if TYPE_CHECKING:
    from .sources.ebpf.uprobe_attach import UprobeAttacher

__all__ = ["Check", "run_checks", "format_checks", "doctor_exit_code", "main_doctor", "cost_report", "main_doctor_cost"]

TLS_CHECK = "TLS libraries"
PY_CHECK = "python task contexts"
_FIX_ROOT = "run the agent as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE"


@dataclass(slots=True, frozen=True)
class Check:
    """One verdict: what was checked, whether it passed, what was seen, and what would fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _capabilities() -> Check:
    from .runtime.privileges import (CAP_BPF, CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SYS_ADMIN, cap_list, in_container,
                             read_caps, switched)
    caps, uid = read_caps(), os.geteuid()
    admin = caps.has(CAP_SYS_ADMIN)  # stands in for CAP_BPF and CAP_PERFMON
    need = {CAP_BPF: caps.has(CAP_BPF) or admin, CAP_PERFMON: caps.has(CAP_PERFMON) or admin,
            CAP_DAC_READ_SEARCH: caps.has(CAP_DAC_READ_SEARCH) or uid == 0}
    shown = sum(1 << c for c in (CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN))
    detail = f"{_who(uid)} with {cap_list(caps.effective & shown)}"
    missing = [c for c, ok in need.items() if not ok]
    if not missing:
        return Check("capabilities", True, detail)
    detail += f"; lacks {cap_list(sum(1 << c for c in missing))}"
    if not in_container():
        return Check("capabilities", False, detail, "run the agent as root, or as the systemd unit in firmware-configs/ "
                     "does: AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_DAC_READ_SEARCH CAP_SYS_RESOURCE")
    granted = caps.bounding | (caps.bounding >> CAP_SYS_ADMIN & 1) * ((1 << CAP_BPF) | (1 << CAP_PERFMON))
    flags = [f"--cap-add {cap_list(1 << c)[4:]}" for c in missing if not granted >> c & 1]
    if _cap_last() < CAP_BPF:  # this kernel predates CAP_BPF: CAP_SYS_ADMIN is the only way
        flags = ["--cap-add SYS_ADMIN" if f in ("--cap-add BPF", "--cap-add PERFMON") else f for f in flags]
    fix = f"run the container with {' '.join(dict.fromkeys(flags))}" if flags else ""
    if any(f in flags for f in ("--cap-add BPF", "--cap-add PERFMON")):
        fix += " (Docker >= 23, podman; Docker 20.10 rejects BPF and PERFMON: --cap-add SYS_ADMIN instead)"
    as_user = uid != 0 and switched() is None
    if as_user:
        fix += ("; and " if fix else "the container has them, but the engine gives capabilities to root only: run it ")
        fix += "with --user 0 (helix then switches to user helix, keeping only these; leave it SETUID and SETGID)"
    fix += f"; or, instead, --privileged{' --user 0' if as_user else ''}"
    return Check("capabilities", False, detail + " (in a container)", fix)


def _who(uid: int) -> str:
    from .runtime.privileges import switched
    user = switched()
    if user is None:
        return f"uid {uid}"
    if user.stayed_root_because:
        return f"root ({user.stayed_root_because})"
    return f"user {user.user} (uid {user.uid}, switched from root)"


def _cap_last() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def _pid_namespace() -> Check:
    from .runtime.privileges import in_host_pid_namespace
    if in_host_pid_namespace():
        return Check("pid namespace", True, "the host's: kernel events' process ids are this process's")
    return Check("pid namespace", False, "a container's own: the probes report host process ids, so the agent "
                 "would trace its own traffic and name no process", "run the container with --pid=host")


def _btf() -> Check:
    from .sources.ebpf.loader import BTF_PATH
    if BTF_PATH.exists():
        return Check("kernel BTF", True, f"{BTF_PATH} ({BTF_PATH.stat().st_size // 1024} KiB)")
    return Check("kernel BTF", False, f"{BTF_PATH} is missing: CO-RE probes cannot be relocated",
                 "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (stock kernels of most distributions since 2020)")


def _map_create(name: str, map_type: int, key: int, value: int, entries: int) -> tuple[bool, str, str]:
    from .sources.ebpf import _libbpf
    try:
        lib = _libbpf.libbpf()
        fd = lib.map_create(map_type, name, key, value, entries)
    except _libbpf.LibbpfError as e:
        return False, e.reason, e.fix
    except ProbeUnavailable as e:
        return False, e.reason, e.fix
    os.close(fd)
    return True, "", ""


def _bpf_permission() -> Check:
    from .sources.ebpf import _libbpf
    ok, detail, fix = _map_create("helix_doctor", _libbpf.BPF_MAP_TYPE_ARRAY, 4, 8, 1)
    if ok:
        return Check("bpf() permission", True, f"created a BPF map as uid {os.geteuid()}")
    return Check("bpf() permission", False, detail, fix or _FIX_ROOT)


def _ringbuf() -> Check:
    from .sources.ebpf import _libbpf
    ok, detail, fix = _map_create("helix_doctor_rb", _libbpf.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    if ok:
        return Check("ring buffer maps", True, "BPF_MAP_TYPE_RINGBUF supported")
    return Check("ring buffer maps", False, detail,
                 fix if "permission" not in detail.lower() else _FIX_ROOT)


def _tracefs() -> Check:
    from .sources.ebpf.loader import ensure_tracefs, tracefs_root
    root = tracefs_root()
    if root is not None:
        return Check("tracefs", True, f"mounted at {root}")
    try:
        root = ensure_tracefs()
    except ProbeUnavailable as e:
        return Check("tracefs", False, e.reason, e.fix)
    return Check("tracefs", True, f"was not mounted; mounted it at {root} (the agent does the same at start)")


def _tracepoints() -> list[Check]:
    from .sources.ebpf.loader import TRACEPOINTS, tracefs_root
    root = tracefs_root()
    if root is None:
        return [Check("tracepoints", False, "cannot list tracepoints without tracefs",
                      "mount -t tracefs nodev /sys/kernel/tracing")]
    out = []
    for probe_set, names in TRACEPOINTS.items():
        missing = [n for n in names if not (root / "events" / n).is_dir()]
        if missing:
            out.append(Check(f"tracepoints ({probe_set})", False, f"missing: {', '.join(missing)}",
                             "use a kernel with CONFIG_FTRACE_SYSCALLS=y and the sock/tcp/sched tracepoints (5.8+)"))
        else:
            out.append(Check(f"tracepoints ({probe_set})", True, f"all {len(names)} present"))
    return out


_PARANOID = Path("/proc/sys/kernel/perf_event_paranoid")


def _perf_paranoid() -> Check:
    # Debian's and Ubuntu's kernels add level 3, their default, at which perf_event_open (what attaching to a syscall
    # tracepoint takes) admits CAP_SYS_ADMIN only: CAP_PERFMON, all the systemd unit grants, is refused (EACCES).
    try:
        level = int(_PARANOID.read_text())
    except (OSError, ValueError):
        return Check("perf events", True, f"{_PARANOID} not readable; assuming the upstream levels")
    if level < 3:
        return Check("perf events", True, f"perf_event_paranoid {level}: CAP_PERFMON attaches to tracepoints")
    return Check("perf events", False, f"perf_event_paranoid {level}: only CAP_SYS_ADMIN may attach to syscall "
                 "tracepoints on this kernel, so the agent as its systemd unit runs it (CAP_PERFMON) cannot",
                 "install firmware-configs/sysctl/60-helix.conf (kernel.perf_event_paranoid = 2) in /etc/sysctl.d/")


def _memlock() -> Check:
    from .sources.ebpf.loader import memlock_needed
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    shown = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"
    if not memlock_needed():
        return Check("locked memory", True, f"RLIMIT_MEMLOCK {shown}; this kernel (>= 5.11) accounts BPF memory "
                     "to the memory cgroup instead")
    if soft == resource.RLIM_INFINITY or soft >= 64 * 1024 * 1024:
        return Check("locked memory", True, f"RLIMIT_MEMLOCK {shown}")
    if os.geteuid() == 0:
        return Check("locked memory", True, f"RLIMIT_MEMLOCK {shown}; the agent raises it to unlimited at start (root)")
    return Check("locked memory", False, f"RLIMIT_MEMLOCK {shown} is too low for the probe maps on this kernel (< 5.11)",
                 "set LimitMEMLOCK=infinity in the systemd unit, or `ulimit -l unlimited` before starting")


def _load(cfg: Config) -> list[Check]:
    from .sources.ebpf.loader import open_probes
    try:
        probes = open_probes(cfg.ebpf if cfg.ebpf.enabled != "off" else None)
    except ProbeUnavailable as e:
        return [Check("probes load and attach", False, e.reason, e.fix)]
    try:
        attached = probes.attached_programs
        tracepoints = probes.attached_tracepoints
        skipped = probes.skipped_programs
        objects = probes.object_files
        tls = _tls(cfg, probes) if cfg.ebpf.tls else Check(TLS_CHECK, True, "sources.ebpf.tls = false: TLS "
                                                            "plaintext is not read")
        py = (_python_contexts(cfg, probes) if cfg.ebpf.python_contexts
              else Check(PY_CHECK, True, "sources.ebpf.python_contexts = false: asyncio calls are decided by the "
                                         "kernel's orders alone"))
    finally:
        probes.close()
    detail = (f"{len(attached)} programs attached to {tracepoints} tracepoints and detached again "
              f"({', '.join(objects)})")
    if skipped:
        detail += f"; skipped (tracepoint missing): {', '.join(skipped)}"
    return [Check("probes load and attach", True, detail), tls, py]


# Since "perf: Revert to requiring CAP_SYS_ADMIN for uprobes" (2025, CVE-2025-38466, in the stable kernels too)
# perf_event_open admits a uprobe with CAP_SYS_ADMIN only: CAP_PERFMON, enough from 5.8 until then, gets EACCES.
_FIX_UPROBES = ("this kernel requires CAP_SYS_ADMIN for uprobes, which CAP_BPF and CAP_PERFMON no longer cover: grant "
                "it (systemd: install firmware-configs/systemd/helix-agent.service.d/tls.conf as a drop-in; container: "
                "--cap-add SYS_ADMIN), or set sources.ebpf.tls = false to run without TLS plaintext; the other probes "
                "work as they are")


def _has_sys_admin() -> bool:
    from .runtime.privileges import CAP_SYS_ADMIN, read_caps
    return read_caps().has(CAP_SYS_ADMIN)


# grpcio's BoringSSL is read where its calls are located (boringssl_calls.py); docs/known-gaps.md says where not.
_BORINGSSL_HINT = ("BoringSSL without symbols is most often Python's grpcio of a release whose TLS calls were not "
                   "found: its gRPC over TLS has no kernel spans on its own side; a peer on OpenSSL (libssl, Node.js's "
                   "grpc-js) still has spans for its side")


def _tls(cfg: Config, probes: Any) -> Check:
    """Attach the TLS uprobes as the agent would, to every OpenSSL the traced processes map, and name the processes
    whose TLS they cannot read."""
    from .sources.ebpf.tls_attach import TlsAttacher

    def describe(status: dict[str, Any]) -> list[str]:
        libs = status["libraries"]
        lines = [f"attached to {len(libs)} file(s) and detached again:"]
        lines += [f"      {lib['path']} ({lib['stack']}, mapped by {lib['processes']} process(es))" for lib in libs]
        if status["unreadable"]:
            lines.append("    TLS the probes cannot read (counted, their encrypted traffic has no HTTP/MQTT spans):")
            lines += [f"      {stack}: {_processes(u)}" for stack, u in status["unreadable"].items()]
            if any(stack.startswith("BoringSSL (static") for stack in status["unreadable"]):
                lines.append(f"    {_BORINGSSL_HINT}")
        return lines

    def fix(failures: list[str]) -> str:
        if any(f"(errno {errno.EACCES})" in f for f in failures) and not _has_sys_admin():
            return _FIX_UPROBES
        return "check that the files are readable by root and not on a noexec mount"

    return _uprobe_check(TLS_CHECK, TlsAttacher(probes, os.getpid(), _allowed(cfg)), describe, fix)


def _python_contexts(cfg: Config, probes: Any) -> Check:
    """Attach the Python task-context probes as the agent would, and name the interpreters whose version they do not
    read (informational: those processes' calls keep the kernel's rules)."""
    from .sources.ebpf.py_attach import PyContextAttacher

    def describe(status: dict[str, Any]) -> list[str]:
        interpreters = status["interpreters"]
        lines = [f"attached to {len(interpreters)} interpreter file(s) and detached again "
                 f"(versions read: {', '.join(status['supported_versions'])}):"]
        lines += [f"      {i['path']} (CPython {i['version']}, {i['processes']} process(es))" for i in interpreters]
        lines += [f"    unsupported interpreter version {version} (its task contexts are not read): {_processes(u)}"
                  for version, u in status["unsupported"].items()]
        return lines

    fix = _FIX_UPROBES.replace("sources.ebpf.tls = false to run without TLS plaintext",
                               "sources.ebpf.python_contexts = false")
    return _uprobe_check(PY_CHECK, PyContextAttacher(probes, os.getpid(), _allowed(cfg)), describe, lambda _: fix)


def _allowed(cfg: Config) -> frozenset[int] | None:
    return frozenset(cfg.ebpf.pids) if cfg.ebpf.pids else None


def _processes(u: dict[str, Any]) -> str:
    """'N process(es): comm (pid), ...' of a status entry that names its first processes."""
    return f"{u['processes']} process(es): {', '.join(u['names'])}" + (", ..." if u["processes"] > len(u["names"])
                                                                        else "")


def _uprobe_check(name: str, attacher: UprobeAttacher, describe: Callable[[dict[str, Any]], list[str]],
                  fix: Callable[[list[str]], str]) -> Check:
    """Attach `attacher`'s uprobes as the agent would and detach them again: what `describe` says of its status, failed
    with `fix`'s advice for the failures when an attach failed."""
    try:
        attacher.start()
        status = attacher.status()
    except ProbeUnavailable as e:
        return Check(name, False, e.reason, e.fix)
    finally:
        attacher.close()
    lines = describe(status)
    if status["attach_errors"]:
        failures = status["attach_failures"]
        lines.append(f"    {status['attach_errors']} attach(es) failed: " + "; ".join(failures))
        return Check(name, False, "\n".join(lines), fix(failures))
    return Check(name, True, "\n".join(lines))


def _span_builder() -> Check:
    # Informational: the pure-Python fallback is correct, only slower, so it never fails the doctor.
    return Check("span builder", True, f"{accel.status().detail}; {accel.c_status().detail}")


def run_checks(cfg: Config | None = None) -> list[Check]:
    """Run every check in order; never raises."""
    cfg = cfg or Config()
    checks: list[Check] = []
    steps: list[Any] = [_capabilities, _pid_namespace, _btf, _bpf_permission, _tracefs, _tracepoints, _ringbuf,
                        _perf_paranoid, _memlock, lambda: _load(cfg), _span_builder]
    for step in steps:
        try:
            result = step()
        except ProbeUnavailable as e:
            result = Check(getattr(step, "__name__", "check").strip("_"), False, e.reason, e.fix or _FIX_ROOT)
        except HelixError as e:
            result = Check(getattr(step, "__name__", "check").strip("_"), False, str(e), "run as root and retry")
        except OSError as e:
            result = Check(getattr(step, "__name__", "check").strip("_"), False,
                           f"{e.strerror or e} ({errno.errorcode.get(e.errno or 0, '?')})", "run as root and retry")
        checks.extend(result if isinstance(result, list) else [result])
    if cfg.ebpf.enabled == "off":
        checks.append(Check("configuration", True, "sources.ebpf.enabled = off: the agent will not load the probes"))
    return checks


def format_checks(checks: list[Check]) -> str:
    """Human-readable report: one ✔/✘ line per check, with the fix under each failure."""
    lines = []
    for c in checks:
        lines.append(f"{'✔' if c.ok else '✘'} {c.name}: {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"    fix: {c.fix}")
    failed = [c.name for c in checks if not c.ok]
    if not failed:
        lines.append("all probes can run here")
    elif all(name == TLS_CHECK for name in failed):
        # The uprobes attach apart from the tracepoints: only TLS plaintext is missing.
        lines.append(f"{len(failed)} problem(s): the agent runs with kernel spans, but reads no TLS plaintext until "
                     "they are fixed")
    else:
        lines.append(f"{len(failed)} problem(s): the agent runs without kernel spans (SDK spans only) until they are "
                     "fixed")
    return "\n".join(lines)


def doctor_exit_code(checks: list[Check]) -> int:
    """0 when every check passed (every probe can load and attach here), 1 otherwise."""
    return 0 if all(c.ok for c in checks) else 1


def cost_report(seconds: float, pid: int | None = None) -> tuple[str, bool]:
    """What the running agents' probes cost in the kernel over `seconds` (BPF run-time statistics, turned on for
    that window only); returns the report and whether any agent was measured. Raises ProbeUnavailable."""
    from .sources.ebpf import _libbpf
    from .sources.ebpf.cost import agent_programs, measure, stats_sysctl
    from .sources.ebpf.loader import program_names

    # Fails here (EPERM) where statistics cannot be had at all, before a search that could not see the agent anyway.
    os.close(_libbpf.libbpf().enable_stats())
    agents = agent_programs(program_names(), pid)
    if not agents:
        where = f"process {pid} holds no" if pid is not None else "no process on this host holds the"
        return (f"✘ {where} Helix probes: start the agent (helix run) with the eBPF source on, or give its pid "
                "with --pid", False)
    sysctl = stats_sysctl()
    ids = [i for progs in agents.values() for i in progs]
    costs, elapsed = measure(ids, seconds)
    by_id = {i: p for p, progs in agents.items() for i in progs}
    lines = [f"BPF run-time statistics over {elapsed:.1f} s (on for this window only; kernel.bpf_stats_enabled "
             f"{'is ' + str(sysctl) if sysctl is not None else 'is absent'}, left as it was)"]
    per_agent: dict[int, list[Any]] = {p: [] for p in agents}
    for cost in costs:
        per_agent[by_id[cost.id]].append(cost)
    for p, progs in per_agent.items():
        total_runs = sum(c.runs for c in progs)
        total_ns = sum(c.run_time_ns for c in progs)
        sys_runs = sum(c.runs for c in progs if c.name.startswith(("enter_", "exit_")))
        sys_ns = sum(c.run_time_ns for c in progs if c.name.startswith(("enter_", "exit_")))
        lines.append(f"agent pid {p} ({_cmdline(p)}): {len(progs)} programs")
        lines.append(f"  {'program':22s} {'runs/s':>10s} {'ns/run':>8s} {'CPU µs/s':>9s} {'insns':>6s}")
        for c in sorted(progs, key=lambda c: -c.run_time_ns):
            if not c.runs:
                continue
            lines.append(f"  {c.name:22s} {c.runs / elapsed:10,.0f} {c.ns_per_run:8,.0f} "
                         f"{c.run_time_ns / elapsed / 1000:9,.1f} {c.xlated_insns:6d}")
        idle = sum(1 for c in progs if not c.runs)
        if idle:
            lines.append(f"  ({idle} programs did not run)")
        lines.append(f"  total: {total_runs / elapsed:,.0f} runs/s, {total_ns / max(1, total_runs):,.0f} ns/run, "
                     f"{total_ns / elapsed / 1e7:.2f} % of one CPU in the kernel")
        lines.append(f"  syscall tracepoints: {sys_ns / max(1, sys_runs):,.0f} ns per run over every process's "
                     "syscalls, traced or not (bench/kernel_cost.py splits traced from untraced and gives the cost "
                     "per request)")
    return "\n".join(lines), True


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())[:80] or "?"
    except OSError:
        return "?"


def main_doctor_cost(seconds: float, pid: int | None) -> int:
    """Entry point for `helix doctor --cost`: print what the probes cost; 0 when an agent was measured."""
    try:
        text, ok = cost_report(seconds, pid)
    except ProbeUnavailable as e:
        fix = e.fix
        if getattr(e, "errno", None) == errno.EPERM:
            # BPF_ENABLE_STATS and opening another process's programs by id both need CAP_SYS_ADMIN
            fix = ("run `helix doctor --cost` as root on the host (in a container: with --cap-add SYS_ADMIN and "
                   "without $HELIX_USER); it needs CAP_SYS_ADMIN, more than the agent itself")
        print(f"✘ cannot read BPF run-time statistics: {e.reason}\n    fix: {fix}")
        return 1
    print(text)
    return 0 if ok else 1


def main_doctor(config_path: str | None) -> int:
    """Entry point for `helix doctor [--config PATH]`: print the report, return the exit code."""
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        print(f"✘ configuration: {e}")
        return 2
    checks = run_checks(cfg)
    print(format_checks(checks))
    return doctor_exit_code(checks)
