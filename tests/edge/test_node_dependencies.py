"""A node's install (`pip install helix-edge`, the node image) holds what `helix run` loads; the gateway's is an extra."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

from edge.demo.broker import Mosquitto

GATEWAY_ONLY = {"grpcio", "aiomqtt", "paho-mqtt", "googleapis-common-protos"}


def _name(requirement: Requirement) -> str:
    return requirement.name.lower().replace("_", "-")


def _closure(dist: str) -> set[str]:
    """`dist` and everything its requirements without extras pull in here, transitively."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in map(Requirement, distribution(name).requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_name(req))
    return seen


def test_the_node_install_leaves_the_gateway_dependencies_to_the_extra() -> None:
    node = _closure("helix-edge")
    assert not node & GATEWAY_ONLY, node & GATEWAY_ONLY
    gateway_extra = {_name(r) for r in map(Requirement, distribution("helix-edge").requires or [])
                     if r.marker is not None and r.marker.evaluate({"extra": "gateway"})}
    assert gateway_extra == GATEWAY_ONLY


_RUN_AND_LIST = """
import json, os, sys, threading, time
def dump(path=sys.argv[1], after=float(sys.argv[2])):
    time.sleep(after)
    with open(path, "w") as fh:
        json.dump({k: getattr(m, "__file__", None) for k, m in list(sys.modules.items()) if m is not None}, fh)
    os._exit(0)
threading.Thread(target=dump, daemon=True).start()
sys.argv = ["helix", "run", "--config", sys.argv[3]]
from edge.launch import main
main()
"""


def test_a_running_agent_loads_only_what_a_node_install_has(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[sources.mqtt]\nbroker = "{mosquitto.url}"\n[sources.ebpf]\nenabled = false\n'
                   '[sources.otlp]\ngrpc_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\n'
                   f'[metrics]\nlisten = "127.0.0.1:0"\n[uplink]\nbroker = "{mosquitto.url}"\n'
                   f'spool_dir = "{tmp_path / "spool"}"\n')
    listing = tmp_path / "modules.json"
    subprocess.run([sys.executable, "-c", _RUN_AND_LIST, str(listing), "8", str(cfg)], timeout=60, check=True,
                   capture_output=True)
    modules = json.loads(listing.read_text())
    top_dists = packages_distributions()
    loaded = {d.lower().replace("_", "-") for m in modules for d in top_dists.get(m.split(".")[0], [])}
    loaded -= {"helix-edge", "setuptools"}  # setuptools: the venv's distutils hook (a .pth file), not the agent
    assert {"cbor2", "zstandard", "h2"} <= loaded, loaded
    assert loaded <= _closure("helix-edge"), loaded - _closure("helix-edge")
