"""Boots device images (scripts/device-image.sh) on each kernel of the matrix and checks the agent there.

Run through scripts/kernel-matrix.sh. For each (arch, kernel) it starts, on the host's loopback, a Mosquitto broker,
`helix gateway` and an OTLP peer (the central side), boots the image in a VM (KVM for the host's architecture,
emulation otherwise; serial console; qemu user networking with `restrict=on`, so the guest's only link is two
forwarded addresses: 10.0.2.100:1883 to the broker and 10.0.2.100:4380 to the gateway's HTTP ingress), reads the
self-test's findings (scripts/matrix-guest-check.sh) from a virtio port and checks that kernel spans of the two
traces it made reached the OTLP peer. Each run's findings go to RESULTS/<arch>-<kernel>.json; the table row is printed.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.demo.broker import Mosquitto
from edge.demo.otlp_peer import OtlpPeer
from edge.model import Span

HOST_LINK = "10.0.2.100"
# CapEff bits of the unit's AmbientCapabilities (linux/capability.h)
CAPS = {"CAP_DAC_READ_SEARCH": 2, "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39}
_HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass
class Run:
    """Findings of one boot."""

    arch: str
    kernel: str
    suite: str
    accel: str
    trace1: str
    trace2: str
    started: str = ""
    boot_s: float | None = None  # VM start to the agent's READY=1 (wall clock on the host)
    total_s: float | None = None  # VM start to power-off
    findings: dict[str, str] = field(default_factory=dict)
    doctor: list[str] = field(default_factory=list)
    agent_log: list[str] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)  # the agent's journal at the end of the run
    spans_trace1: dict[str, int] = field(default_factory=dict)  # source -> spans at the OTLP peer
    spans_trace2: dict[str, int] = field(default_factory=dict)
    ebpf_names_trace1: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    qemu_error: str = ""  # qemu's exit status and last stderr line when it failed

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return not self.problems


def kvm_usable() -> bool:
    """Whether /dev/kvm can run a stock distribution kernel (HELIX_MATRIX_ACCEL=kvm|tcg decides instead).

    A PVM host (kvm_pvm: KVM without hardware virtualisation, for machines that are VMs themselves) runs only guest
    kernels built for PVM; a Debian kernel hangs there before its first message, so such a host boots by emulation.
    """
    forced = os.environ.get("HELIX_MATRIX_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced == "kvm"
    return os.access("/dev/kvm", os.R_OK | os.W_OK) and not Path("/sys/module/kvm_pvm").exists()


def _trace_id() -> str:
    # The low 56 bits start with 0xf: kept by consistent probability sampling at every ratio >= 1/16 (the arm64
    # profile samples 20 %), so the check is about the probes, not about the sampling draw.
    return secrets.token_hex(9) + "f" + secrets.token_hex(7)[:13]


def _source(s: Span) -> str:
    v = s.attributes.get("helix.source", s.source.value)
    return v if isinstance(v, str) else s.source.value


def qemu_command(arch: str, image_dir: Path, kernel: str, overlay: Path, results: Path, console: Path,
                 broker_port: int, gateway_port: int, trace1: str, trace2: str, memory_mb: int) -> tuple[list[str], str]:
    """The qemu command line for one boot and the accelerator it uses."""
    boot = image_dir / "boot"
    fwd = ",".join(f"guestfwd=tcp:{HOST_LINK}:{gport}-cmd:socat STDIO TCP:127.0.0.1:{hport}"
                   for gport, hport in ((1883, broker_port), (4380, gateway_port)))
    kvm = arch == _HOST_ARCH and kvm_usable()
    console_dev = "ttyS0" if arch == "amd64" else "ttyAMA0"
    append = (f"root=/dev/vda rw console={console_dev} panic=-1 helix.matrix=1 helix.trace1={trace1} "
              f"helix.trace2={trace2}")
    if arch == "amd64":
        # Without arch-capabilities: a KVM host that is itself a VM refuses that MSR and qemu aborts at start.
        cmd = ["qemu-system-x86_64", "-machine", "q35" + (",accel=kvm" if kvm else ""),
               "-cpu", "host,-arch-capabilities" if kvm else "max"]
    else:
        # A Raspberry Pi 4's core; `max` would emulate pointer authentication, which costs TCG a lot.
        cmd = ["qemu-system-aarch64", "-machine", "virt" + (",accel=kvm" if kvm else ""),
               "-cpu", "host" if kvm else "cortex-a72"]
    if not kvm:
        # One host thread runs both vCPUs in turn: multi-threaded emulation can stall a guest for good while its
        # kernel patches a tracepoint in or out (docs/portability.md).
        cmd += ["-accel", "tcg,thread=single"]
    cmd += ["-smp", "2", "-m", str(memory_mb), "-nographic", "-no-reboot", "-nodefaults",
            "-kernel", str(boot / f"vmlinuz-{kernel}"), "-initrd", str(boot / f"initrd.img-{kernel}"),
            "-append", append,
            "-drive", f"file={overlay},if=none,id=root,format=qcow2", "-device", "virtio-blk-pci,drive=root",
            "-netdev", f"user,id=net0,restrict=on,{fwd}", "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-serial-pci", "-chardev", f"file,id=results,path={results}",
            "-device", "virtserialport,chardev=results,name=helix.results",
            "-chardev", f"file,id=console,path={console}", "-serial", "chardev:console"]
    return cmd, "kvm" if kvm else "tcg"


async def _spawn_gateway(workdir: Path, broker: Mosquitto, peer: OtlpPeer) -> tuple[asyncio.subprocess.Process, int]:
    cfg = workdir / "gateway.toml"
    cfg.write_text(f'[gateway]\nbroker = "{broker.url}"\nhttp_listen = "127.0.0.1:0"\n'
                   f'export_protocol = "grpc"\nexport_endpoint = "{peer.grpc_endpoint}"\n')
    log = workdir / "gateway.log"
    with open(log, "wb") as fh:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edge", "gateway", "--config", str(cfg),
                                                    "--log-level", "info", stdout=fh, stderr=fh,
                                                    stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    port = 0
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        m = re.search(r"accepting batches on http://[\d.]+:(\d+)/", text)
        if m and "gateway subscribed" in text:
            port = int(m.group(1))
            break
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.2)
    if not port:
        raise SystemExit(f"kernel-matrix: the gateway did not start; {log}:\n{log.read_text()[-2000:]}")
    return proc, port


def _read_findings(path: Path, run: Run) -> bool:
    """Parse the self-test's lines so far; True once it said `end`."""
    ended = False
    run.doctor.clear()
    run.agent_log.clear()
    run.journal.clear()
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("HELIX-MATRIX "):
            continue
        key, _, value = line[len("HELIX-MATRIX "):].partition(" ")
        if key == "doctor":
            run.doctor.append(value)
        elif key == "agent_log":
            run.agent_log.append(value)
        elif key == "metrics":
            run.agent_log.append("metrics " + value)
        elif key == "journal":
            run.journal.append(value)
        else:
            run.findings[key] = value
        ended |= key == "end"
    return ended


def _kv(text: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in text.split() if "=" in p)


def judge(run: Run) -> None:
    """Turn the findings into problems (an empty list: every check passed)."""
    f, p = run.findings, run.problems
    if "begin" not in f:
        p.append("the self-test never reported" + (f" ({run.qemu_error})" if run.qemu_error else ""))
        return
    if f.get("end") != "ok":
        p.append(f"self-test did not finish (end={f.get('end', 'missing')})")
    unit = _kv(f.get("unit", ""))
    if unit.get("type") != "notify" or unit.get("state") != "active/running":
        p.append(f"unit not active as Type=notify: {f.get('unit')}")
    if unit.get("uid") in (None, "0"):
        p.append(f"agent runs as uid {unit.get('uid')}, not the helix user")
    eff = int(unit.get("cap_eff", "0"), 16)
    if eff != sum(1 << b for b in CAPS.values()):
        p.append(f"agent capabilities {unit.get('cap_eff')} are not exactly {', '.join(CAPS)}")
    if not f.get("watchdog", "").startswith("ok"):
        p.append(f"no watchdog ping seen: {f.get('watchdog')}")
    if not any("probes load and attach" in d and d.startswith("✔") for d in run.doctor):
        p.append("helix doctor: the probes did not load")
    if run.spans_trace1.get("ebpf", 0) == 0:
        p.append("no kernel span of the curl/MQTT trace reached the OTLP peer")
    if not any("publish" in n for n in run.ebpf_names_trace1):
        p.append("no kernel span of the MQTT publish reached the OTLP peer")
    if run.spans_trace2.get("ebpf", 0) == 0:
        p.append("no kernel span of the request spooled across SIGKILL reached the OTLP peer")
    if "restarted" not in f:
        p.append(f"systemd did not restart the agent after SIGKILL: {f.get('restart_failed')}")
    kept = _kv(f.get("spool_after_restart", ""))
    if not kept or kept.get("kept") != kept.get("of"):
        p.append(f"spool lost batches across SIGKILL: {f.get('spool_after_restart')}")
    if "spool_drained" not in f:
        p.append(f"spool not drained after the link came back: {f.get('spool_not_drained')}")


async def boot_one(arch: str, image_dir: Path, kernel: str, suite: str, results_dir: Path, timeout: float,
                   memory_mb: int, keep: bool) -> Run:
    """Boot one kernel of one image and check everything; never raises for a failing guest."""
    run = Run(arch, kernel, suite, "", _trace_id(), _trace_id(), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    workdir = Path(tempfile.mkdtemp(prefix=f"helix-matrix-{arch}-", dir=image_dir))
    broker = Mosquitto(workdir=workdir)
    peer = OtlpPeer(json_path=workdir / "otlp.jsonl")
    gateway = None
    qemu = None
    try:
        await broker.astart()
        await peer.start()
        gateway, gw_port = await _spawn_gateway(workdir, broker, peer)
        overlay = workdir / "overlay.qcow2"
        rc = await (await asyncio.create_subprocess_exec(
            "qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image_dir / "rootfs.img"), "-F", "raw",
            str(overlay))).wait()
        if rc:
            raise SystemExit("kernel-matrix: qemu-img create failed")
        results, console = workdir / "results.txt", workdir / "console.log"
        cmd, run.accel = qemu_command(arch, image_dir, kernel, overlay, results, console, broker.port, gw_port,
                                      run.trace1, run.trace2, memory_mb)
        (workdir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
        print(f"kernel-matrix: booting {arch} {kernel} ({suite}, {run.accel}); console {console}", flush=True)
        t0 = time.monotonic()
        qemu = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=open(workdir / "qemu.err", "wb"), start_new_session=True)
        seen: set[str] = set()
        while qemu.returncode is None and time.monotonic() - t0 < timeout:
            try:
                await asyncio.wait_for(qemu.wait(), 2)
            except asyncio.TimeoutError:
                pass
            if results.exists():
                _read_findings(results, run)
                for key in run.findings:
                    if key not in seen:
                        seen.add(key)
                        if key == "uptime_at_check" and run.boot_s is None:
                            run.boot_s = round(time.monotonic() - t0, 1)
                        print(f"  [{time.monotonic() - t0:6.0f}s] {key} {run.findings[key]}", flush=True)
        run.total_s = round(time.monotonic() - t0, 1)
        if qemu.returncode is None:
            run.problems.append(f"the VM did not power off within {timeout:.0f}s")
        elif qemu.returncode != 0:
            err = (workdir / "qemu.err").read_text(errors="replace").strip().splitlines()
            run.qemu_error = f"qemu exited {qemu.returncode}: {err[-1] if err else 'no message'}"
        if results.exists():
            _read_findings(results, run)
        await asyncio.sleep(3)  # the gateway's last export
        spans = peer.spans()
        for tid, counts, names in ((run.trace1, run.spans_trace1, run.ebpf_names_trace1),
                                   (run.trace2, run.spans_trace2, None)):
            for s in spans:
                if s.trace_id.hex() == tid:
                    src = _source(s)
                    counts[src] = counts.get(src, 0) + 1
                    if names is not None and src == "ebpf":
                        names.append(s.name)
        judge(run)
    finally:
        if qemu is not None and qemu.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                qemu.kill()
            await qemu.wait()
        if gateway is not None and gateway.returncode is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(gateway.wait(), 10)
            except asyncio.TimeoutError:
                gateway.kill()
                await gateway.wait()
        await peer.stop()
        broker.stop()
        with contextlib.suppress(OSError):
            (workdir / "overlay.qcow2").unlink()
        if run.ok and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            run.findings.setdefault("workdir", str(workdir))
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{arch}-{kernel}.json").write_text(json.dumps(asdict(run), indent=2) + "\n")
    return run


TABLE_HEAD = ("| kernel | arch | io object | programs attached | kernel spans: trace 1 / spooled trace 2 | "
              "agent READY after kernel start | restart after SIGKILL | agent idle RSS | whole run | result |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def table_row(run: Run) -> str:
    """One row of docs/portability.md's table."""
    f = run.findings
    loaded = next((d for d in run.doctor if "probes load and attach" in d), "")
    progs = re.search(r"(\d+) programs attached", loaded)
    obj = "io_compat" if "io_compat.bpf.o" in loaded else ("io" if progs else "-")
    skipped = re.search(r"skipped \(tracepoint missing\): ([^(]*)", loaded)
    programs = (progs.group(1) if progs else "0") + (f" (skipped: {skipped.group(1).strip()})" if skipped else "")
    names = sorted(set(run.ebpf_names_trace1))
    spans = (f"{run.spans_trace1.get('ebpf', 0)} ({', '.join(names) or '-'}) / {run.spans_trace2.get('ebpf', 0)}")
    ready = (f.get("agent_ready_us", "").split() or [""])[0]
    ready_s = f"{int(ready) / 1e6:.0f} s" if ready.isdigit() else "-"
    restart = _kv(f.get("restarted", "")).get("after_s")
    rss = f.get("rss_idle_kib", "").split()
    rss_mib = f"{int(rss[0]) / 1024:.1f} MiB" if rss and rss[0].isdigit() else "-"
    verdict = "pass" if run.ok else "FAIL: " + "; ".join(run.problems)
    return (f"| {run.kernel} ({run.suite}) | {run.arch} ({run.accel}) | {obj} | {programs} | {spans} | {ready_s} | "
            f"{restart + ' s' if restart else '-'} | {rss_mib} | {run.total_s:.0f} s | {verdict} |")


def _kernels(image_dir: Path) -> list[tuple[str, str]]:
    path = image_dir / "kernels.txt"
    if not path.is_file():
        raise SystemExit(f"kernel-matrix: no image in {image_dir}: run scripts/device-image.sh first")
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines() if line.strip()]  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    """Entry point; 0 when every selected boot passed."""
    ap = argparse.ArgumentParser(prog="kernel-matrix")
    ap.add_argument("--images", type=Path, required=True, help="directory with <arch>/rootfs.img from device-image.sh")
    ap.add_argument("--arch", action="append", choices=("amd64", "arm64"), help="architectures (default: both)")
    ap.add_argument("--kernel", action="append", default=[],
                    help="kernel releases or prefixes (5.10, 6.1, 6.12...); default: every kernel of the image")
    ap.add_argument("--results", type=Path, help="where each run's JSON goes (default IMAGES/results)")
    ap.add_argument("--timeout", type=float, default=0, help="seconds per boot (default 600 with KVM, 3600 emulated)")
    ap.add_argument("--memory", type=int, default=1024, help="guest memory in MiB (default 1024: a 1 GB board)")
    ap.add_argument("--keep", action="store_true", help="keep each run's working directory (logs) even when it passed")
    args = ap.parse_args(argv)
    results_dir = args.results or args.images / "results"
    runs: list[Run] = []
    for arch in args.arch or ["amd64", "arm64"]:
        image_dir = args.images / arch
        for kernel, suite in _kernels(image_dir):
            if args.kernel and not any(kernel == k or kernel.startswith(k + ".") or kernel.startswith(k + "-")
                                       for k in args.kernel):
                continue
            timeout = args.timeout or (600 if arch == _HOST_ARCH and kvm_usable() else 3600)
            run = asyncio.run(boot_one(arch, image_dir, kernel, suite, results_dir, timeout, args.memory, args.keep))
            runs.append(run)
            print(table_row(run), flush=True)
            for problem in run.problems:
                print(f"  FAIL {arch} {kernel}: {problem}", flush=True)
    if not runs:
        print("kernel-matrix: no kernel selected", file=sys.stderr)
        return 2
    print("\n" + TABLE_HEAD)
    for run in runs:
        print(table_row(run))
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
