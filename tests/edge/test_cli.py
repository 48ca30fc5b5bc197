from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge.cli import main


def test_check_config_ok_and_invalid(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[uplink]\ntransport = "http"\n')
    assert main(["check-config", str(good), "-v"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "uplink.transport = http" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[sampler]\nratio = 7\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sampler.ratio" in err and "between 0.0 and 1.0" in err


def test_help_explains_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "edge", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("run", "gateway", "check-config", "demo", "doctor"):
        assert cmd in out
    demo = subprocess.run([sys.executable, "-m", "edge", "demo", "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert "--duration" in demo and "--out" in demo


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "usage: helix" in capsys.readouterr().out


def test_the_gateway_entry_point_resolves() -> None:
    from edge.cli import GATEWAY_ENTRY, entry_point
    from uplink.gateway import serve_gateway

    assert entry_point(GATEWAY_ENTRY) is serve_gateway
