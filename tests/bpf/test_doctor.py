"""`helix doctor` on this machine, as root and as an unprivileged user."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.agent.metrics_http import health_metrics, render_prometheus
from edge.config import Config, parse_config
from edge.demo.broker import Mosquitto
from edge.doctor import doctor_exit_code, format_checks, run_checks
from edge.sources.ebpf.cost import stats_sysctl

from .conftest import Server, bpf_unavailable, running_agent
from .test_kernel_sampling import curl

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bpf
def test_everything_passes_here() -> None:
    checks = run_checks(Config())
    failed = [c for c in checks if not c.ok]
    if failed and os.geteuid() != 0:
        bpf_unavailable(format_checks(failed))
    assert not failed, format_checks(checks)
    assert doctor_exit_code(checks) == 0
    names = {c.name for c in checks}
    assert {"kernel BTF", "bpf() permission", "tracefs", "ring buffer maps", "probes load and attach"} <= names
    # which io object the kernel got (io_compat.bpf.o before 5.17), as the kernel matrix reads it
    loaded = next(c for c in checks if c.name == "probes load and attach")
    assert loaded.detail.endswith("(io.bpf.o, proc.bpf.o)"), loaded.detail


@pytest.mark.bpf
def test_unprivileged_user_gets_reasons_and_fixes() -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop privileges")
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from edge.doctor import main_doctor; sys.exit(main_doctor(None))"
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                          sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 1, out.stderr
    assert "✘ bpf() permission" in out.stdout and "fix: run the agent as root" in out.stdout
    assert "✘ probes load and attach" in out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.bpf
def test_open_probes_degrades_with_probe_unavailable() -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop privileges")
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from edge.errors import ProbeUnavailable\n"
            "from edge.sources.ebpf.loader import open_probes\n"
            "try:\n    open_probes(None)\nexcept ProbeUnavailable as e:\n    print('UNAVAILABLE', e.reason, '|', e.fix)\n")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                          sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("UNAVAILABLE") and "root" in out.stdout


@pytest.mark.bpf
async def test_cost_of_the_running_agent(mosquitto: Mosquitto, http_server: Server, tmp_path: Path) -> None:
    """`helix doctor --cost` finds the agent's programs from outside and measures them over live traffic; the
    statistics it turned on are off again and the sysctl is untouched, and /metrics shows what they counted."""
    cfg = parse_config({
        "sources": {"mqtt": {"enabled": False}, "ebpf": {"enabled": "auto"},
                    "otlp": {"grpc_listen": "", "http_listen": ""}},
        "uplink": {"broker": mosquitto.url, "spool_dir": str(tmp_path / "spool")},
    })
    sysctl = stats_sysctl()
    async with running_agent(cfg) as agent:
        doctor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge", "doctor", "--cost", "--seconds", "2", "--pid", str(os.getpid()),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT))
        for _ in range(20):  # traffic while it measures
            await curl(f"http://127.0.0.1:{http_server.port}/path")
            await asyncio.sleep(0.05)
        out_b, err_b = await asyncio.wait_for(doctor.communicate(), 60)
        out = out_b.decode()
        assert doctor.returncode == 0, out + err_b.decode()
        assert f"agent pid {os.getpid()}" in out
        rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")
                and line.split()[0] in agent.ebpf.probes.attached_programs}
        # curl and http.server talk through sendto/recvfrom; each row: runs/s, ns/run, CPU us/s, instructions
        for prog in ("enter_sendto", "enter_recvfrom", "exit_rw"):
            runs_per_s, ns_per_run = (float(x.replace(",", "")) for x in rows[prog][:2])
            assert runs_per_s > 0 and ns_per_run > 0, out
        assert "% of one CPU in the kernel" in out
        assert stats_sysctl() == sysctl
        # What the statistics counted while they were on is in the agent's metrics.
        programs = agent.status()["kernel"]["programs"]
        assert programs["exit_rw"]["runs"] > 0 and programs["exit_rw"]["run_time_ns"] > 0
        text = render_prometheus([health_metrics(agent)])
        assert 'helix_agent_kernel_program_runs_total{service_name="helix-agent",program="exit_rw"}' in text
        assert "helix_agent_kernel_program_run_time_seconds_total" in text


@pytest.mark.bpf
def test_cost_without_an_agent_says_so() -> None:
    out = subprocess.run([sys.executable, "-m", "edge", "doctor", "--cost", "--seconds", "0.1", "--pid", "1"],
                         capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 1
    assert "process 1 holds no Helix probes" in out.stdout and "helix run" in out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.bpf
def test_cost_unprivileged_says_what_it_needs() -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop privileges")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                          sys.executable, "-m", "edge", "doctor", "--cost", "--seconds", "0.1"],
                         capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert "cannot read BPF run-time statistics" in out.stdout and "CAP_SYS_ADMIN" in out.stdout, out.stdout


@pytest.mark.bpf
def test_doctor_lists_tls_libraries_attached_and_processes_it_cannot_read(tmp_path: Path) -> None:
    # a process on the host's libssl (Python's ssl), one on grpcio (its BoringSSL located), and one whose only TLS is a
    # symbol-less BoringSSL whose calls cannot be located: a grpcio copy with one of gRPC's messages reworded
    import grpc._cython.cygrpc as cygrpc
    data = bytearray(Path(cygrpc.__file__).read_bytes())
    at = data.find(b"SSL_write failed with error ")
    data[at:at + 4] = b"ssl_"
    (tmp_path / "reworded.so").write_bytes(bytes(data))
    script = "import sys, time; exec(sys.argv[1]); print('up', flush=True); time.sleep(60)"
    reworded = f"import ctypes; ctypes.CDLL({str(tmp_path / 'reworded.so')!r})"
    procs = [subprocess.Popen([sys.executable, "-c", script, code], stdout=subprocess.PIPE, text=True)
             for code in ("import ssl", "import grpc", reworded)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "up\n"
        checks = run_checks(Config())
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
    tls = next(c for c in checks if c.name == "TLS libraries")
    if not tls.ok and os.geteuid() != 0:
        bpf_unavailable(tls.detail)
    assert tls.ok, tls.detail
    lines = tls.detail.splitlines()
    assert lines[0].startswith("attached to ") and any(ln.strip().startswith("/") and "libssl.so.3 (OpenSSL, mapped by"
                                                       in ln for ln in lines), tls.detail
    assert any(ln.strip().startswith(cygrpc.__file__) and "(BoringSSL (gRPC core, located), mapped by" in ln
               for ln in lines), tls.detail
    boring = [ln for ln in lines if "BoringSSL (static, no symbols)" in ln]
    # named, unless ten processes with lower pids are named before it on a busy host
    assert any(f"python ({procs[2].pid})" in ln or ln.endswith(", ...") for ln in boring), tls.detail
    assert not any(f"python ({procs[1].pid})" in ln for ln in boring), tls.detail
    # and what that means for gRPC: which side of its calls still has spans
    assert any("most often Python's grpcio" in ln and "Node.js's grpc-js" in ln for ln in lines), tls.detail
    text = format_checks(checks)
    assert "✔ TLS libraries: attached to" in text and "TLS the probes cannot read" in text
