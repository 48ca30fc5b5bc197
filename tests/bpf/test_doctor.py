"""`helix doctor` on this machine, as root and as an unprivileged user."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge import doctor
from edge.config import Config
from edge.doctor import Check, doctor_exit_code, format_checks, run_checks

from .conftest import bpf_unavailable

ROOT = Path(__file__).resolve().parents[2]


def test_format_and_exit_code() -> None:
    checks = [Check("a", True, "fine"), Check("b", False, "broken", "do this")]
    text = format_checks(checks)
    assert "✔ a: fine" in text and "✘ b: broken" in text and "fix: do this" in text
    assert doctor_exit_code(checks) == 1 and doctor_exit_code(checks[:1]) == 0


@pytest.mark.parametrize("level,ok", [("2\n", True), ("3\n", False), ("-1\n", True)])
def test_perf_paranoid_level_3_is_named_with_the_sysctl_that_fixes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       level: str, ok: bool) -> None:
    # Debian's kernels default to 3, where perf_event_open (syscall tracepoints) admits only CAP_SYS_ADMIN.
    fake = tmp_path / "perf_event_paranoid"
    fake.write_text(level)
    monkeypatch.setattr(doctor, "_PARANOID", fake)
    check = doctor._perf_paranoid()
    assert check.ok is ok
    if not ok:
        assert "CAP_SYS_ADMIN" in check.detail and "perf_event_paranoid = 2" in check.fix
        conf = ROOT / "firmware-configs" / "sysctl" / "60-helix.conf"
        assert "kernel.perf_event_paranoid = 2" in conf.read_text()


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
