"""How `helix doctor` reports its checks (the checks themselves run on the kernel: tests/bpf/test_doctor.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge import doctor
from edge.doctor import Check, doctor_exit_code, format_checks

ROOT = Path(__file__).resolve().parents[2]


def test_format_and_exit_code() -> None:
    checks = [Check("a", True, "fine"), Check("b", False, "broken", "do this")]
    text = format_checks(checks)
    assert "✔ a: fine" in text and "✘ b: broken" in text and "fix: do this" in text
    assert doctor_exit_code(checks) == 1 and doctor_exit_code(checks[:1]) == 0


def test_only_the_tls_check_failing_says_kernel_spans_still_run() -> None:
    tls_only = format_checks([Check("probes load and attach", True, "ok"), Check(doctor.TLS_CHECK, False, "EACCES")])
    assert tls_only.endswith("the agent runs with kernel spans, but reads no TLS plaintext until they are fixed")
    both = format_checks([Check("kernel BTF", False, "missing"), Check(doctor.TLS_CHECK, False, "EACCES")])
    assert both.endswith("2 problem(s): the agent runs without kernel spans (SDK spans only) until they are fixed")


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


def test_doctor_says_which_span_builder_runs() -> None:
    import subprocess
    import sys

    from edge import accel

    assert doctor._span_builder() == Check("span builder", True,
                                           f"{accel.status().detail}; {accel.c_status().detail}")
    code = "from edge import doctor; print(doctor.format_checks([doctor._span_builder()]))"
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "HELIX_ACCEL": "0"}, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "✔ span builder: pure Python: the compiled modules are turned off (HELIX_ACCEL=0); " \
           "C extensions off (HELIX_ACCEL=0)" in out
