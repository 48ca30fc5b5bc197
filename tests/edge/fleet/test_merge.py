from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load_config, parse_config
from edge.errors import ConfigError
from edge.fleet.merge import config_to_dict, deep_merge, effective_config

PROFILES = sorted((Path(__file__).parents[2] / "firmware-configs" / "profiles").glob("*.toml"))


@pytest.mark.parametrize("path", [None, *PROFILES], ids=lambda p: p.name if p else "defaults")
def test_config_round_trips_through_its_tables(path: Path | None) -> None:
    cfg = load_config(path)
    assert parse_config(config_to_dict(cfg)) == cfg


def test_node_keys_win_over_group_keys_and_local_file_is_the_base() -> None:
    local = parse_config({"node": {"id": "gw-1", "group": "plant"}, "uplink": {"spool_dir": "/data/spool"},
                          "sampler": {"ratio": 0.5}})
    group = {"sampler": {"ratio": 0.1, "keep_errors": False}, "uplink": {"batch_max_spans": 64}}
    node = {"sampler": {"ratio": 0.9}}
    cfg = effective_config(local, group, node)
    assert cfg.sampler.ratio == 0.9  # node wins
    assert cfg.sampler.keep_errors is False  # group key kept where the node says nothing
    assert cfg.uplink.batch_max_spans == 64
    assert cfg.uplink.spool_dir == "/data/spool"  # local setting not mentioned by any document
    assert cfg.node.id == "gw-1"


def test_invalid_merge_names_the_key() -> None:
    with pytest.raises(ConfigError, match="sampler.ratio"):
        effective_config(parse_config({}), {"sampler": {"ratio": 3}})
    with pytest.raises(ConfigError, match="uplink.nope"):
        effective_config(parse_config({}), None, {"uplink": {"nope": 1}})


def test_deep_merge_replaces_lists_and_merges_tables() -> None:
    out = deep_merge({"a": {"x": 1, "l": [1, 2]}, "b": 1}, {"a": {"l": [3]}, "c": 2})
    assert out == {"a": {"x": 1, "l": [3]}, "b": 1, "c": 2}
