"""The container images built from the Dockerfile and run for real, by scripts/container-smoke.sh (docs/container.md).

Native: the node and gateway images for this machine's architecture; `helix doctor` in the node image names the
missing capabilities and flags without them and attaches the probes with the documented ones (as user helix);
an OpenTelemetry SDK app at its defaults and a curl inside its span produce one trace whose SDK and kernel spans
reach an OTLP sink through the gateway image. Minutes, and root: skipped for a developer who is not root, a failure
under CI (CI=true or HELIX_REQUIRE_CONTAINER=1), where it must run.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "container-smoke.sh"


def _required() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("HELIX_REQUIRE_CONTAINER") == "1"


def _smoke(mode: str, timeout: float) -> dict[str, object]:
    if os.geteuid() != 0:
        msg = "the container smoke test needs root (debootstrap, dockerd, the kernel probes)"
        if _required():
            pytest.fail(msg)
        pytest.skip(msg)
    proc = subprocess.run(["bash", str(SCRIPT), mode], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(figures, dict)
    return figures


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_native_images_attach_probes_and_deliver_sdk_and_kernel_spans() -> None:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
    figures = _smoke("native", 1750)
    assert float(figures[f"image_mb_node_{arch}"]) > 0 and float(figures[f"image_mb_gateway_{arch}"]) > 0
    assert float(figures[f"idle_rss_mib_node_{arch}"]) > 0
    assert float(figures[f"start_to_sdk_and_kernel_span_s_{arch}"]) > 0
    # The wheel in the image carries the accelerator built for it: the compiled modules and the C head parser run.
    assert figures[f"accel_compiled_node_{arch}"] == 1


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_arm64_images_run_emulated_on_sdk_spans() -> None:
    # ~16 minutes from nothing here (debootstrap and apt under qemu): on demand, not in CI (docs/container.md).
    if os.environ.get("HELIX_CONTAINER_ARM64") != "1":
        pytest.skip("the emulated arm64 build and run take ~16 minutes: HELIX_CONTAINER_ARM64=1 runs them")
    figures = _smoke("arm64", 3500)
    assert float(figures["image_mb_node_arm64"]) <= 120  # the node image's goal
    assert float(figures["start_to_sdk_span_s_arm64_emulated"]) > 0
    # Cross-compiled for aarch64 (scripts/target-wheel.sh), and what runs there, not the pure-Python fallback.
    assert figures["accel_compiled_node_arm64"] == 1
