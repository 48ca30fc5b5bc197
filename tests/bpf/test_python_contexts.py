"""The Python task-context probes (bpf/pyctx.bpf.h, py_attach.py) on real interpreters: where they read, what they
refuse, and the calls of the testbed's aiohttp service (scenario 9, at its defaults, 8 keep-alive clients, 1 to 3
calls per request through asyncio.gather) and of a standard-library asyncio service on CPython 3.12 and 3.13 decided
by them."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.errors import ProbeUnavailable
from edge.sources.ebpf import _libbpf
from edge.sources.ebpf.loader import ProbeSet
from edge.sources.ebpf.py_attach import LAYOUTS, PyContextAttacher
from tests.edge.sources.ebpf.spans._grpc_recording import feed_as_agent, load
from tests.edge.sources.ebpf.spans._loop_recording import _record, judge

from .conftest import bpf_unavailable

pytestmark = pytest.mark.bpf

# Prints where _PyRuntime's current-thread-state field is, as the interpreter itself knows it, then waits.
_SELF = r"""
import ctypes, sys
rt = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
print(rt, flush=True)
sys.stdin.readline()
"""
_PYENV = Path.home() / ".pyenv/versions"
_PY312, _PY313 = _PYENV / "3.12.1/bin/python3.12", _PYENV / "3.13.0/bin/python3.13"
_PY310 = _PYENV / "3.10.13/bin/python3.10"


@pytest.fixture
def interpreters() -> Iterator[Callable[[str], tuple[int, int]]]:
    """Factory: start an interpreter running _SELF; (pid, its _PyRuntime address)."""
    procs: list[subprocess.Popen[str]] = []

    def start(exe: str) -> tuple[int, int]:
        p = subprocess.Popen([exe, "-c", _SELF], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None
        return p.pid, int(p.stdout.readline())

    yield start
    for p in procs:
        p.kill()
        p.wait(5)


def _entry(probes: ProbeSet, pid: int) -> tuple[int, int, int] | None:
    raw = _libbpf.libbpf().lookup(probes.map_fd("py_procs"), struct.pack("=I", pid), 16)
    return None if raw is None else struct.unpack("=QII", raw)


def test_entries_name_each_process_runtime_and_other_versions_are_refused(
        load_probes: Callable[..., ProbeSet], interpreters: Callable[[str], tuple[int, int]]) -> None:
    """A static interpreter at a fixed address (Debian's /usr/bin/python3.11), shared ones under ASLR (this venv's
    libpython3.11.so, pyenv's libpython3.12.so and libpython3.13.so) each get their own runtime address and their
    version's offsets; 3.10, whose layout is not verified here, gets none and is reported unsupported."""
    probes = load_probes()
    exes = {(3, 11): [sys.executable, "/usr/bin/python3.11"], (3, 12): [str(_PY312)], (3, 13): [str(_PY313)]}
    started = {v: [interpreters(e) for e in paths if os.path.exists(e)] for v, paths in exes.items()}
    other = interpreters(str(_PY310)) if _PY310.exists() else None
    pids = [p for runs in started.values() for p, _ in runs] + ([other[0]] if other else [])
    attacher = PyContextAttacher(probes, os.getpid(), frozenset(pids))
    try:
        attacher.start()
    except ProbeUnavailable as e:
        bpf_unavailable(str(e))
    try:
        for version, runs in started.items():
            layout = LAYOUTS[version]
            for pid, runtime in runs:
                assert _entry(probes, pid) == (runtime + layout.holder, layout.context, layout.native_tid)
        st = attacher.status()
        assert {i["version"] for i in st["interpreters"]} == {"%d.%d" % v for v, runs in started.items() if runs}
        if other is not None:
            assert _entry(probes, other[0]) is None
            assert st["unsupported"]["3.10"]["processes"] == 1
        shared = started[(3, 11)][0]
        attacher.forget(shared[0])
        assert _entry(probes, shared[0]) is None
    finally:
        attacher.close()


async def test_aiohttp_calls_follow_their_task_contexts(tmp_path: Path) -> None:
    """The live aiohttp service's calls are decided by their task contexts, right within the false-link goal; without the context probes
    (the same run's kernel events alone) the kernel's orders leave more than 5 % undecided."""
    path = tmp_path / "aiohttp.jsonl.gz"
    try:
        await _record("aiohttp", path, 300, 8, python_contexts=True)
    except ProbeUnavailable as e:
        bpf_unavailable(str(e))
    from edge.sources.ebpf.events import PyContextEvent
    from edge.sources.ebpf.spans import SpanBuilder, SpanBuilderConfig
    events = load(path)
    served, got = judge(feed_as_agent(SpanBuilder(SpanBuilderConfig()), events))
    calls = sum(got.values())
    assert served >= 0.95 * 300 and calls >= served
    # The false-link goal (0.2 %), not zero: one wrong call in 609 was seen in one of five runs, unexplained
    # (docs/known-gaps.md); a rule that links by anything but the contexts gives far more.
    wrong = sum(n for (_, verdict), n in got.items() if verdict == "wrong")
    assert wrong <= 0.002 * calls, got
    assert got[("task", "right")] >= 0.95 * calls, got
    _, alone = judge(feed_as_agent(SpanBuilder(SpanBuilderConfig()),
                                   [e for e in events if not isinstance(e, PyContextEvent)]))
    assert sum(n for (_, verdict), n in alone.items() if verdict == "right") < 0.95 * calls, alone


async def _asyncio_run(tmp_path: Path, interpreter: str,
                       tls_dir: Path | None = None) -> tuple[int, Counter, Counter]:
    """Record the standard-library asyncio service (bench/accuracy_service.py --mode asyncio, at its defaults, 296
    requests) run by `interpreter`: requests served, its calls' verdicts, and theirs without the context chains."""
    path = tmp_path / "asyncio.jsonl.gz"
    try:
        await _record("asyncio", path, 300, 8, python_contexts=True, interpreter=interpreter, tls_dir=tls_dir)
    except ProbeUnavailable as e:
        bpf_unavailable(str(e))
    from edge.sources.ebpf.events import PyContextEvent
    from edge.sources.ebpf.spans import SpanBuilder, SpanBuilderConfig
    events = load(path)
    served, got = judge(feed_as_agent(SpanBuilder(SpanBuilderConfig()), events))
    _, alone = judge(feed_as_agent(SpanBuilder(SpanBuilderConfig()),
                                   [e for e in events if not isinstance(e, PyContextEvent)]))
    calls = sum(got.values())
    assert served >= 0.95 * 296 and calls >= served, (served, got)  # 8 clients x 37
    # The false-link goal (0.2 %), as for aiohttp above.
    assert sum(n for (_, verdict), n in got.items() if verdict == "wrong") <= 0.002 * calls, got
    assert not any(via == "task" for via, _ in alone), alone
    return served, got, alone


@pytest.mark.parametrize("exe", [_PY312, _PY313], ids=["3.12", "3.13"])
async def test_standard_library_asyncio_calls_follow_their_task_contexts_on_newer_interpreters(
        exe: Path, tmp_path: Path) -> None:
    """The standard-library asyncio service run by CPython 3.12 and 3.13 (pyenv's shared builds, libpython3.X.so):
    its calls are decided by their task contexts, which needs those versions' layouts; the same run's kernel events
    without the context chains decide no call by `task`."""
    if not exe.exists():
        pytest.skip(f"no CPython {exe.name.removeprefix('python')} at {exe} (pyenv's interpreters of this machine)")
    _, got, _ = await _asyncio_run(tmp_path, str(exe))
    assert got[("task", "right")] >= 0.95 * sum(got.values()), got


async def test_asyncio_calls_over_tls_follow_their_task_contexts(tmp_path: Path) -> None:
    """The same service calling `db` over HTTPS (asyncio's TLS: OpenSSL through memory BIOs, the TLS probes attached):
    the contexts are sent at each SSL_write's entry, so its calls are decided by `task` as over plain TCP."""
    from .test_tls_spans import self_signed
    self_signed(tmp_path)
    _, got, _ = await _asyncio_run(tmp_path, sys.executable, tls_dir=tmp_path)
    # A handshake per call makes a handler's next call slow under load (~1 s): its earlier calls wait for its answer
    # while it is unanswered (tasks.LONG_WAIT_NS); one answering later still leaves them to the kernel's rules.
    assert got[("task", "right")] >= 0.95 * sum(got.values()), got
