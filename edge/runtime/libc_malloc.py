"""Puts `helix run` on the C library's malloc for every object, so that memory a burst took can go back.

CPython's own small-object allocator returns memory only by whole arenas, and under steady load every arena keeps a
few live objects; glibc frees by the page, which the governor's periodic `malloc_trim(0)` hands back. The cost is
a little CPU per decoded span; figures in docs/benchmarks.md (memory budget, item 1).

The allocator is chosen when the interpreter starts, so the launcher executes itself again, once, with
`PYTHONMALLOC=malloc` (same pid, arguments and environment otherwise). A PYTHONMALLOC the operator set wins, and
on another C library (musl images) nothing changes.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

__all__ = ["wants_libc_malloc", "use_libc_malloc"]


def _libc() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return ""


def wants_libc_malloc(environ: Mapping[str, str] = os.environ, libc: str | None = None) -> bool:
    """True when this process should start again on glibc's malloc: glibc, and no PYTHONMALLOC chosen yet."""
    if "PYTHONMALLOC" in environ:
        return False
    return (libc if libc is not None else _libc()).startswith("glibc")


def use_libc_malloc() -> None:
    """Execute this command again with PYTHONMALLOC=malloc when wants_libc_malloc(); returns only if it does not."""
    argv = getattr(sys, "orig_argv", None)
    if not argv or not sys.executable or not wants_libc_malloc():
        return
    env = dict(os.environ, PYTHONMALLOC="malloc")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:
        return  # a read-only or odd installation: run on as we are (the budget holds, RSS recovers less)
