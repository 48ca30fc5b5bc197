"""Finding a CPython interpreter's probe points and runtime state in its file (py_attach.py, elf.py)."""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest

from edge.sources.ebpf.elf import read_elf
from edge.sources.ebpf.proc_maps import read_maps
from edge.sources.ebpf.py_attach import LAYOUTS, _interpreter_mapping, abi_flags, interpreter_version


def test_versions_come_from_the_interpreter_file_names():
    assert interpreter_version("/usr/bin/python3.11") == (3, 11)
    assert interpreter_version("/opt/py/lib/libpython3.12.so.1.0") == (3, 12)
    assert interpreter_version("/usr/bin/python3.11d") == (3, 11)
    assert interpreter_version("/usr/bin/python") is None and interpreter_version("/usr/lib/libssl.so.3") is None


def test_only_verified_layouts_are_read():
    assert set(LAYOUTS) == {(3, 11), (3, 12), (3, 13)}  # docs/accuracy.md: how each was verified


def test_builds_with_abi_flags_are_told_apart():
    """Debug and free-threaded builds lay their state out otherwise: their names' flags keep them unread."""
    assert abi_flags("/usr/bin/python3.11") == "" and abi_flags("/opt/py/lib/libpython3.13.so.1.0") == ""
    assert abi_flags("/usr/bin/python3.11d") == "d" and abi_flags("/opt/py/lib/libpython3.13t.so.1.0") == "t"


def test_this_interpreters_runtime_address_is_found_from_its_file_and_mapping():
    """Where this very process keeps _PyRuntime, as its own mapping and file say, is where ctypes finds it."""
    pid = __import__("os").getpid()
    found = _interpreter_mapping(pid, read_maps(pid))
    assert found is not None
    path, _open_path, mapped_at = found
    if interpreter_version(path) != sys.version_info[:2]:
        pytest.skip(f"this interpreter's file is {path}")
    elf, reader = read_elf(path)
    try:
        runtime = elf.data_symbols(["_PyRuntime"])["_PyRuntime"] + elf.load_bias(mapped_at)
        assert "PyContext_CopyCurrent" in elf.functions(["PyContext_CopyCurrent"])
    finally:
        reader.close()
    assert runtime == ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))


@pytest.mark.skipif(not Path("/usr/bin/python3.11").exists(), reason="no Debian python3.11 here")
def test_a_fixed_address_executable_needs_no_bias():
    elf, reader = read_elf("/usr/bin/python3.11")
    try:
        assert elf.load_bias(0x5555_0000_0000) == 0 or elf.type != 2
        assert elf.data_symbols(["_PyRuntime", "no_such_symbol"]).keys() == {"_PyRuntime"}
    finally:
        reader.close()
