"""Slow file I/O spans."""
from __future__ import annotations

from edge.model import SpanKind
from edge.sources.ebpf.events import ExecEvent, FileIoEvent, FileOp
from ._helpers import builder


def test_slow_file_io_spans():
    b = builder()
    b.feed([ExecEvent(1, 400, 1, "logger", "/usr/bin/logger-daemon")])
    sp = b.feed([FileIoEvent(10_000, 60_000_000, 400, 401, FileOp.FSYNC, 3, 0, "var/log/app.log")])[0]
    assert (sp.name, sp.kind) == ("file.fsync", SpanKind.INTERNAL)
    assert sp.duration_ns == 60_000_000 - 10_000
    assert sp.attributes["file.path"] == "var/log/app.log" and sp.attributes["thread.id"] == 401
    assert sp.resource.service_name == "logger"
