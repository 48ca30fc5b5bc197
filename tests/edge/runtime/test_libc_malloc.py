"""`helix run` starts again on glibc's malloc, once, unless the operator chose an allocator."""
from __future__ import annotations

import os
import subprocess
import sys

from edge.runtime.libc_malloc import wants_libc_malloc

_REPORT = ("import os, sys; from edge.runtime.libc_malloc import use_libc_malloc; use_libc_malloc(); "
           "print(os.getpid(), os.environ.get('PYTHONMALLOC'), sys.argv[1:])")


def test_only_glibc_without_a_chosen_allocator_starts_again() -> None:
    assert wants_libc_malloc({}, "glibc 2.36")
    assert not wants_libc_malloc({"PYTHONMALLOC": "pymalloc"}, "glibc 2.36")
    assert not wants_libc_malloc({"PYTHONMALLOC": "malloc"}, "glibc 2.36")  # already restarted: never a loop
    assert not wants_libc_malloc({}, "")  # musl and other C libraries have no CS_GNU_LIBC_VERSION


def _run(env: dict[str, str]) -> list[str]:
    proc = subprocess.Popen([sys.executable, "-c", _REPORT, "run", "--config", "x.toml"], env=env,
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    pid, allocator, args = out.strip().split(" ", 2)
    assert int(pid) == proc.pid  # the same process, executed again: systemd and PID files see no change
    return [allocator, args]


def test_the_process_starts_again_with_the_same_arguments() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    assert _run(env) == ["malloc", "['run', '--config', 'x.toml']"]


def test_the_operators_allocator_wins() -> None:
    assert _run(dict(os.environ, PYTHONMALLOC="pymalloc")) == ["pymalloc", "['run', '--config', 'x.toml']"]
