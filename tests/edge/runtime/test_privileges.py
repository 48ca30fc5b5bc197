"""helix started as root switches to $HELIX_USER keeping the probes' capabilities; doctor names what is missing."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.runtime.privileges import (CAP_BPF, CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SETUID, CAP_SYS_ADMIN,
                                     CAP_SYS_RESOURCE, caps_to_keep, read_caps, why_kept)

HELIX = [sys.executable, "-m", "edge"]


def test_read_caps_from_status_text() -> None:
    caps = read_caps("Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000000c000200004\n"
                     "CapEff:\t0000008000000004\nCapBnd:\t000001ffffffffff\n")
    assert caps.permitted == (1 << 39) | (1 << 38) | (1 << 21) | (1 << 2)
    assert caps.has(CAP_BPF) and caps.has(CAP_DAC_READ_SEARCH) and not caps.has(CAP_PERFMON)
    assert caps.bounding == (1 << 41) - 1


PROBES = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_SYS_RESOURCE)


def test_sys_admin_is_kept_for_the_tls_uprobes_or_where_it_stands_in_for_bpf_or_perfmon() -> None:
    full = (1 << 41) - 1
    assert caps_to_keep(full, uprobes=False) == PROBES
    assert caps_to_keep(full, uprobes=True) == PROBES | (1 << CAP_SYS_ADMIN)
    assert caps_to_keep(PROBES, uprobes=True) == PROBES  # kept only where it is granted
    docker_20_10 = (1 << 38) - 1  # no CAP_PERFMON or CAP_BPF to grant
    for uprobes in (False, True):
        kept = caps_to_keep(docker_20_10, uprobes=uprobes)
        assert kept >> CAP_SYS_ADMIN & 1 and not kept >> CAP_SETUID & 1
        assert caps_to_keep(0, uprobes=uprobes) == 0


def test_the_reason_for_sys_admin_is_said() -> None:
    assert "TLS uprobes" in why_kept(PROBES | (1 << CAP_SYS_ADMIN), uprobes=True)
    assert "sources.ebpf.tls = false" in why_kept(PROBES, uprobes=True)
    assert "tls is off" in why_kept(PROBES, uprobes=False)


def _helix(args: list[str], env: dict[str, str], prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), *HELIX, *args], capture_output=True, text=True, timeout=120, cwd="/",
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env})


def _need_root() -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")


@pytest.mark.bpf
def test_doctor_as_root_switches_to_the_user_and_the_probes_and_tls_uprobes_still_attach() -> None:
    _need_root()
    out = _helix(["doctor"], {"HELIX_USER": "nobody"})
    # TLS is on by default, and the uprobes need CAP_SYS_ADMIN on current kernels: it is kept
    assert ("✔ capabilities: user nobody (uid 65534, switched from root) with CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN, "
            "CAP_PERFMON, CAP_BPF") in out.stdout, out.stdout + out.stderr
    assert "✔ probes load and attach" in out.stdout, out.stdout
    assert "✔ TLS libraries: attached to" in out.stdout, out.stdout
    assert out.returncode == 0 and "✘" not in out.stdout, out.stdout


@pytest.mark.bpf
def test_with_tls_off_the_user_keeps_no_sys_admin(tmp_path: Path) -> None:
    _need_root()
    config = tmp_path / "helix.toml"
    config.write_text("[sources.ebpf]\ntls = false\n")
    config.chmod(0o644)
    out = _helix(["doctor", "--config", str(config)], {"HELIX_USER": "nobody"})
    assert ("✔ capabilities: user nobody (uid 65534, switched from root) with CAP_DAC_READ_SEARCH, CAP_PERFMON, "
            "CAP_BPF\n") in out.stdout, out.stdout + out.stderr
    assert "✔ TLS libraries: sources.ebpf.tls = false" in out.stdout and out.returncode == 0, out.stdout


@pytest.mark.bpf
def test_without_sys_admin_doctor_says_the_kernel_requires_it_for_uprobes() -> None:
    _need_root()
    out = _helix(["doctor"], {"HELIX_USER": "nobody"}, ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-all"])
    assert ("✔ capabilities: user nobody (uid 65534, switched from root) with CAP_DAC_READ_SEARCH, CAP_PERFMON, "
            "CAP_BPF\n") in out.stdout, out.stdout + out.stderr
    assert "✔ probes load and attach" in out.stdout, out.stdout
    failed = [ln for ln in out.stdout.splitlines() if ln.startswith("✘")]
    assert failed == ["✘ TLS libraries: attached to 0 file(s) and detached again:"], out.stdout
    assert "Permission denied (errno 13)" in out.stdout
    assert "this kernel requires CAP_SYS_ADMIN for uprobes" in out.stdout
    assert "helix-agent.service.d/tls.conf" in out.stdout and "--cap-add SYS_ADMIN" in out.stdout
    assert "set sources.ebpf.tls = false" in out.stdout and "as root" not in out.stdout
    assert out.returncode == 1


def test_without_setuid_root_stays_root_with_only_the_probe_capabilities() -> None:
    _need_root()
    out = _helix(["doctor"], {"HELIX_USER": "nobody"}, ["setpriv", "--bounding-set=-setuid", "--inh-caps=-all"])
    assert "✔ capabilities: root (no CAP_SETUID to switch to user nobody)" in out.stdout, out.stdout + out.stderr


def test_an_unknown_user_is_a_clear_error() -> None:
    _need_root()
    out = _helix(["doctor"], {"HELIX_USER": "no-such-user-here"})
    assert out.returncode == 2 and "HELIX_USER=no-such-user-here: there is no such user" in out.stderr


def test_doctor_in_a_container_names_the_flags_that_grant_what_is_missing() -> None:
    _need_root()
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    not_granted = _helix(["doctor"], {"container": "docker", "HELIX_USER": ""},
                         [*drop, "--bounding-set=-bpf,-perfmon,-sys_admin,-dac_read_search"])
    assert not_granted.returncode == 1
    text = not_granted.stdout
    assert "✘ capabilities: uid 65534 with none; lacks CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_BPF" in text, text
    assert "--cap-add BPF --cap-add PERFMON --cap-add DAC_READ_SEARCH" in text and "--cap-add SYS_ADMIN instead" in text
    assert "with --user 0" in text
    granted_to_root_only = _helix(["doctor"], {"container": "docker", "HELIX_USER": ""}, drop).stdout
    assert "the engine gives capabilities to root only: run it with --user 0" in granted_to_root_only
    on_a_host = _helix(["doctor"], {"container": "", "HELIX_USER": ""}, drop).stdout
    assert "AmbientCapabilities=CAP_BPF" in on_a_host and "--cap-add" not in on_a_host
