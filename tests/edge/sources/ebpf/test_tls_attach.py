"""Attaching the TLS uprobes per library file: a process that exits between its scan and the attach is no failure."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.errors import ProbeUnavailable
from edge.sources.ebpf import tls_attach, uprobe_attach
from edge.sources.ebpf.tls_libs import TlsCode


class _Probes:
    def uprobe_programs(self) -> dict[str, int]:
        return {"tls_read_enter": 1, "tls_return": 2}


class _Refusing:
    """libbpf as it answers when the path it is given is gone."""

    def attach_uprobe(self, *a: object, **k: object) -> int:
        raise ProbeUnavailable("cannot attach tls_read_enter: No such file or directory (errno 2)")


@pytest.fixture
def attacher(monkeypatch: pytest.MonkeyPatch) -> tls_attach.TlsAttacher:
    monkeypatch.setattr(uprobe_attach._libbpf, "libbpf", lambda: _Refusing())
    a = tls_attach.TlsAttacher(_Probes(), own_pid=1)  # type: ignore[arg-type]
    a._programs = _Probes().uprobe_programs()  # what start() takes from the loaded objects
    return a


def test_a_process_gone_before_the_attach_counts_no_error_and_blocks_no_later_process(attacher) -> None:
    code = TlsCode("OpenSSL", "/usr/lib/x86_64-linux-gnu/libssl.so.3", {"SSL_read": 0x1000})
    gone = "/proc/999999999/root/usr/lib/x86_64-linux-gnu/libssl.so.3"
    assert attacher._attach((1, 2), gone, code) is None
    assert attacher.attach_errors == 0 and (1, 2) not in attacher._failed


def test_a_file_that_is_there_and_refused_is_an_error_retried_later(attacher, tmp_path: Path) -> None:
    lib = tmp_path / "libssl.so.3"
    lib.write_bytes(b"\x7fELF")
    code = TlsCode("OpenSSL", str(lib), {"SSL_read": 0x1000})
    assert attacher._attach((1, 3), str(lib), code) is None
    assert attacher.attach_errors == 1 and (1, 3) in attacher._failed
