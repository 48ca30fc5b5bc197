"""The kernel's run-time statistics of the probe programs, read through the binding (bpf_prog_info)."""
from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from edge.sources.ebpf.cost import NAME_LEN, agent_programs, cost_between, run_stats, stats_sysctl
from edge.sources.ebpf.loader import ProbeSet, program_names

pytestmark = pytest.mark.bpf


def test_program_info_and_run_statistics(load_probes: Callable[..., ProbeSet]) -> None:
    probes = load_probes()
    info = probes.program_info()
    # the attached programs, and the TLS uprobe programs (loaded, attached per library file by tls_attach.py)
    assert sorted(info) == sorted([*probes.attached_programs, *probes.uprobe_programs()])
    for name, i in info.items():
        assert i.name == name[:NAME_LEN] and i.id > 0, i
        assert i.xlated_insns > 0 and i.jited_bytes > 0 and i.verified_insns > 0, i
    sysctl = stats_sysctl()
    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        with run_stats():
            before = {i.id: i for i in probes.program_info().values()}
            for _ in range(300):
                os.write(fd, b"x")
            after = {i.id: i for i in probes.program_info().values()}
    finally:
        os.close(fd)
    assert stats_sysctl() == sysctl  # the statistics came from an fd, not the sysctl
    costs = {c.name: c for c in cost_between(before, after)}
    # every program runs for every process's syscalls; these 300 writes are among them
    for name in ("enter_write", "exit_rw"):
        assert costs[name].runs >= 300 and costs[name].ns_per_run > 0, costs[name]


def test_agent_programs_finds_the_process_holding_the_probes(load_probes: Callable[..., ProbeSet]) -> None:
    probes = load_probes()
    found = agent_programs(program_names(), os.getpid())
    assert set(found) == {os.getpid()}
    ids = {i.id for i in probes.program_info().values()}
    assert set(found[os.getpid()]) == ids
    assert agent_programs(program_names(), 1) == {}  # init holds none of them
