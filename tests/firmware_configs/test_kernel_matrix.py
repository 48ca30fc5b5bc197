"""The amd64 device image booted on the bullseye 5.10 and bookworm 6.1 kernels (scripts/kernel-matrix.sh).

Each boot runs the agent from the systemd unit and checks, inside the guest and at an OTLP peer on the host: Type=notify
and watchdog pings, the helix user with exactly the unit's capabilities, `helix doctor`, kernel spans of a curl ->
nginx request and an MQTT v5 publish carrying a traceparent, and the disk spool across SIGKILL of the agent. KVM is
used where /dev/kvm runs a stock kernel, emulation otherwise (a PVM host's /dev/kvm does not). The arm64 column
(emulated, slow) runs on demand; docs/portability.md has its last result.

Slow (the Helix part of the image is rebuilt with this checkout's wheel, then two boots; docs/portability.md has the
times): it runs in CI (CI=true), where a machine without root or a way to get qemu fails it, and elsewhere with
HELIX_KERNEL_MATRIX=1.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
SCRIPT = REPO / "scripts" / "kernel-matrix.sh"
KERNELS = {"5.10": "compat", "6.1": "main"}  # kernel -> the io object it must load (bpf_loop needs 5.17)


def _what_is_missing() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (debootstrap, chroot)")
    if shutil.which("apt-get") is None and shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86 (and apt-get to install it)")
    return missing


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_amd64_image_on_5_10_and_6_1(tmp_path: Path) -> None:
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if not in_ci and os.environ.get("HELIX_KERNEL_MATRIX") != "1":
        pytest.skip("kernel matrix boots run in CI or with HELIX_KERNEL_MATRIX=1 (several minutes)")
    missing = _what_is_missing()
    if missing:
        message = "the kernel matrix needs " + ", ".join(missing)
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)
    args = [str(SCRIPT), "--arch", "amd64", "--results", str(tmp_path), "--timeout", "1200"]
    for kernel in KERNELS:
        args += ["--kernel", kernel]
    # The image must carry this checkout's wheel: rebuild the Helix part (the Debian root stays cached).
    env = {**os.environ, "HELIX_IMAGE_REBUILD": "1"}
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=2900)
    report = out.stdout[-6000:] + out.stderr[-3000:]
    assert out.returncode == 0, report
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("amd64-*.json"))]
    assert len(runs) == len(KERNELS), report
    for kernel, obj in KERNELS.items():
        run = next(r for r in runs if r["kernel"].startswith(kernel + "."))
        assert run["problems"] == [], (kernel, run["problems"])
        loaded = next(d for d in run["doctor"] if "probes load and attach" in d)
        assert ("io_compat.bpf.o" in loaded) == (obj == "compat"), (kernel, loaded)
        # curl's GET and connect, nginx's GET, mosquitto_pub's publish; the spooled request's spans after SIGKILL
        assert run["spans_trace1"].get("ebpf", 0) >= 4 and run["spans_trace2"].get("ebpf", 0) >= 2, run
        assert any(n.startswith("publish ") for n in run["ebpf_names_trace1"]), run["ebpf_names_trace1"]
