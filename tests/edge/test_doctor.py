"""How `helix doctor` reports its checks (the checks themselves run on the kernel: tests/bpf/test_doctor.py)."""
from __future__ import annotations

from edge.doctor import Check, doctor_exit_code, format_checks


def test_format_and_exit_code() -> None:
    checks = [Check("a", True, "fine"), Check("b", False, "broken", "do this")]
    text = format_checks(checks)
    assert "✔ a: fine" in text and "✘ b: broken" in text and "fix: do this" in text
    assert doctor_exit_code(checks) == 1 and doctor_exit_code(checks[:1]) == 0
