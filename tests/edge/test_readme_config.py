"""The configuration reference in README.md is a valid configuration."""
from __future__ import annotations

import tomllib
from pathlib import Path

from edge.config import parse_config


def test_readme_config_block_parses() -> None:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = text.split("```toml", 1)[1].split("```", 1)[0]
    cfg = parse_config(tomllib.loads(block))
    assert cfg.node.id == "gw-17" and cfg.assembler.window == 2.0
