"""Slow file I/O: a read, write or fsync slower than `sources.ebpf.slow_file_io` (filtered in the kernel) is a span."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ....model import Attributes, Span, SpanKind
from ..events import FileIoEvent, FileOp
from .tables import process_attrs

if TYPE_CHECKING:
    from . import SpanBuilder

__all__ = ["on_file_io"]

_FILE_SPAN_NAMES = {FileOp.READ: "file.read", FileOp.WRITE: "file.write", FileOp.FSYNC: "file.fsync"}


def on_file_io(b: SpanBuilder, ev: FileIoEvent, out: list[Span]) -> None:
    """An internal span for one slow file operation."""
    proc = b.procs.get(ev.pid)
    attrs: Attributes = {"file.path": ev.path, "helix.io.bytes": ev.size}
    process_attrs(attrs, ev.pid, ev.tid, proc.comm)
    name = _FILE_SPAN_NAMES.get(ev.op, "file.io")
    span = b.span(name, SpanKind.INTERNAL, ev.ts_ns, ev.end_ns, proc, attrs, None, [])
    b.stats.file_spans += 1
    out.append(span)
