"""The sections beside their components: defaults written once, the broker/TLS block read alike everywhere, checks
across settings in each section's validate(), and reading a config loads no component."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from edge.config import SECTIONS, Config, parse_config
from edge.config.reader import settings_of
from edge.errors import ConfigError

_MQTT_SECTIONS = {"sources.mqtt": "mqtt", "uplink": "uplink", "gateway": "gateway", "fleet": "fleet"}


def _doc(path: str, table: dict) -> dict:
    outer, _, name = path.rpartition(".")
    return {outer: {name: table}} if outer else {name: table}


def test_the_defaults_of_the_file_are_the_defaults_of_the_dataclasses() -> None:
    assert parse_config({}) == Config()
    attrs = [attr for _, attr, _ in SECTIONS]
    assert sorted(attrs) == sorted(f.name for f in dataclasses.fields(Config) if f.name not in ("node", "log_level"))


@pytest.mark.parametrize("path", sorted(_MQTT_SECTIONS))
def test_every_broker_section_reads_the_same_connection_keys(path: str) -> None:
    table = {"broker": "mqtts://broker.plant:8884", "username": "u", "password": "p", "ca_file": "/ca.pem",
             "cert_file": "/n.pem", "key_file": "/n.key"}
    if path == "fleet":
        table["trusted_keys"] = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
    section = getattr(parse_config(_doc(path, table)), _MQTT_SECTIONS[path])
    assert (str(section.broker), section.username, section.password) == ("mqtts://broker.plant:8884", "u", "p")
    tls = section.tls(path)
    assert (tls.ca_file, tls.cert_file, tls.key_file, tls.key("ca_file")) == ("/ca.pem", "/n.pem", "/n.key",
                                                                              f"{path}.ca_file")
    with pytest.raises(ConfigError) as e:
        parse_config(_doc(path, {"broker": "tcp://x"}))
    assert e.value.key == f"{path}.broker"
    with pytest.raises(ConfigError, match=f"{path}.ca_file"):
        tls.check_files()  # the files do not exist here


@pytest.mark.parametrize(("doc", "key", "fragment"), [
    ({"assembler": {"window": "5s", "memory": "2s"}}, "assembler.memory", "at least assembler.window"),
    ({"memory": {"limit": "16MiB", "baseline": "20MiB"}}, "memory.baseline", "below memory.limit"),
    ({"fleet": {"enabled": True}}, "fleet.trusted_keys", "operator public key"),
    ({"memory": {"limit": "1KiB"}}, "memory.limit", "between 8388608 bytes and"),
    ({"assembler": {"window": "2m"}}, "assembler.window", "between 0.0s and 60.0s, got 120.0s"),
    ({"uplink": {"zstd_level": 30}}, "uplink.zstd_level", "between 1 and 19, got 30"),
    ({"sampler": {"latency": {"/x": "2h"}}}, "sampler.latency.'/x'", "between 0.0s and 3600.0s"),
    ({"sources": {"ebpf": {"pids": [0]}}}, "sources.ebpf.pids", "between 1 and"),
    ({"sources": {"bogus": {}}}, "sources.bogus", "unknown key"),
    ({"metrics": {"buckets": [1, 0.5]}}, "metrics.buckets", "strictly increasing"),
])
def test_checks_name_the_key(doc: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert e.value.key == key and fragment in e.value.problem


def test_settings_the_agent_derives_are_not_read_from_the_file() -> None:
    assert "max_bytes" not in {f.name for f in settings_of(Config().assembler)}
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"assembler": {"max_bytes": "1MiB"}})


@pytest.mark.parametrize("first", ["edge.config", "edge.sources.config", "edge.agent.config", "edge.fleet.config"])
def test_reading_a_config_loads_no_component_and_no_asyncio(first: str) -> None:
    code = (f"import sys, importlib; importlib.import_module({first!r}); from edge.config import load_config; "
            "cfg = load_config(None); "
            "print(sorted(m for m in ('asyncio', 'ssl', 'edge.agent.runner', 'edge.sources.mqtt_sdk', 'uplink') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
