"""The floor plan holds: uplink/ builds on edge's base layer only, and only the agent, fleet and the CLI use the
uplink's node side; nothing in edge/ imports the gateway. Read from the source, every import (lazy ones too)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What uplink/ may take from edge/: the data model, errors, transports and TLS, configuration, wire codecs.
EDGE_BASE = ("edge.model", "edge.errors", "edge.net", "edge.config", "edge.codec", "edge.runtime")
# The parts of edge/ that run the node's uplink client.
UPLINK_USERS = ("edge/agent/", "edge/fleet/", "edge/cli.py")


def _imports(path: Path) -> list[str]:
    """Absolute module names imported anywhere in `path`, relative imports resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            out += [base] + [f"{base}.{a.name}" for a in node.names]
    return out


def _modules(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("uplink"), ids=lambda p: str(p.relative_to(ROOT)))
def test_uplink_builds_on_the_base_layer_of_edge_only(path: Path) -> None:
    bad = [m for m in _imports(path) if m.startswith("edge.") and not m.startswith(EDGE_BASE)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", _modules("edge"), ids=lambda p: str(p.relative_to(ROOT)))
def test_edge_reaches_the_uplink_only_through_its_client(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    uplink = [m for m in _imports(path) if m == "uplink" or m.startswith("uplink.")]
    assert not [m for m in uplink if m.startswith("uplink.gateway")], f"{rel} imports the gateway"
    if uplink:
        assert rel.startswith(UPLINK_USERS) and all(m.startswith("uplink.client") for m in uplink), \
            f"{rel} imports {uplink}"
