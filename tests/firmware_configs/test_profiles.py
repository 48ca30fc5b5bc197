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
