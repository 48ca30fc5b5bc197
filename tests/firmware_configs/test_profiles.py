from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load_config

PROFILES = sorted((Path(__file__).parents[2] / "firmware-configs" / "profiles").glob("*.toml"))


def test_there_are_profiles() -> None:
    assert len(PROFILES) >= 3


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_profile_is_valid_and_fits_its_budget(path: Path) -> None:
    cfg = load_config(path)
    # The uplink queue is one of the buffers that account against the budget; it may not take it all.
    assert cfg.uplink.queue_max_bytes <= cfg.memory.limit // 2
    assert 0 < cfg.sampler.ratio <= 1


def test_the_readme_table_states_each_profiles_budget_and_sampling() -> None:
    readme = (Path(__file__).parents[2] / "firmware-configs" / "README.md").read_text()
    rows = {cells[0].strip("` "): cells for line in readme.splitlines() if line.startswith("| `profiles/")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert {f"profiles/{p.name}" for p in PROFILES} == set(rows)
    for path in PROFILES:
        cfg = load_config(path)
        row = rows[f"profiles/{path.name}"]
        assert row[2] == f"{cfg.memory.limit >> 20} MiB", (path.name, row)
        assert row[3] == f"{cfg.sampler.ratio * 100:g} %", (path.name, row)
