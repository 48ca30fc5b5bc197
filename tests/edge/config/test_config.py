from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load_config, parse_config, parse_duration, parse_size
from edge.errors import ConfigError


def test_no_file_gives_working_defaults() -> None:
    cfg = load_config(None)
    assert cfg.otlp.grpc_listen == ("127.0.0.1", 4317)
    assert cfg.otlp.http_listen == ("127.0.0.1", 4318)
    assert cfg.mqtt.topics == ("helix/sdk/+/spans",)
    assert cfg.uplink.transport == "mqtt" and cfg.uplink.qos == 1
    assert cfg.memory.limit == 44 * 1024 * 1024
    assert cfg.node.id


def test_full_file_is_read(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text("""
[node]
id = "gw-17"
group = "plant-3"
[log]
level = "debug"
[sources.mqtt]
broker = "mqtts://broker.local"
topics = ["helix/sdk/+/spans", "legacy/+/traces"]
max_payload = "1MiB"
[sources.otlp]
grpc_listen = ""
http_listen = "0.0.0.0:14318"
[sampler]
ratio = 0.25
[uplink]
transport = "http"
url = "https://central.example/v1/batches"
batch_max_age = "750ms"
batch_max_bytes = "64KiB"
[gateway]
share_group = "gw"
export_protocol = "http"
export_endpoint = "http://collector:4318"
export_headers = { authorization = "Bearer x" }
""")
    cfg = load_config(p)
    assert cfg.node.id == "gw-17" and cfg.node.group == "plant-3"
    assert cfg.mqtt.broker.tls and cfg.mqtt.broker.port == 8883
    assert cfg.mqtt.max_payload == 1024 * 1024
    assert cfg.otlp.grpc_listen is None and cfg.otlp.http_listen == ("0.0.0.0", 14318)
    assert cfg.sampler.ratio == 0.25
    assert cfg.uplink.batch_max_age == pytest.approx(0.75) and cfg.uplink.batch_max_bytes == 65536
    assert cfg.gateway.subscription() == "$share/gw/helix/uplink/+"
    assert cfg.gateway.export_headers == {"authorization": "Bearer x"}
    assert cfg.uplink.topic_for("gw-17") == "helix/uplink/gw-17"


@pytest.mark.parametrize(("doc", "key", "fragment"), [
    ({"uplink": {"batch_max_age": "soon"}}, "uplink.batch_max_age", "duration"),
    ({"uplink": {"transport": "carrier-pigeon"}}, "uplink.transport", "one of"),
    ({"uplink": {"qos": 2}}, "uplink.qos", "between 0 and 1"),
    ({"sampler": {"ratio": 1.5}}, "sampler.ratio", "between"),
    ({"sampler": {"ratio": "half"}}, "sampler.ratio", "number"),
    ({"sources": {"mqtt": {"broker": "tcp://x:1883"}}}, "sources.mqtt.broker", "broker URL"),
    ({"sources": {"mqtt": {"topics": ["a/#/b"]}}}, "sources.mqtt.topics", "topic filter"),
    ({"sources": {"otlp": {"grpc_listen": "localhost"}}}, "sources.otlp.grpc_listen", "host:port"),
    ({"sources": {"otlp": {"grpc_listen": "1.2.3.4:99999"}}}, "sources.otlp.grpc_listen", "port"),
    ({"memory": {"limit": "1KiB"}}, "memory.limit", "between"),
    ({"node": {"id": "has space"}}, "node.id", "letters"),
    ({"uplnk": {}}, "uplnk", "unknown key"),
    ({"uplink": {"batch_max_agee": "1s"}}, "uplink.batch_max_agee", "unknown key"),
    ({"sources": "yes"}, "sources", "expected a table"),
    ({"gateway": {"export_endpoint": "collector:4317"}}, "gateway.export_endpoint", "URL"),
])
def test_errors_name_the_key_and_the_problem(doc: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert e.value.key == key
    assert fragment in e.value.problem


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[uplink\nx=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_sizes_and_durations() -> None:
    assert parse_size("48MiB", "k") == 48 << 20
    assert parse_size("1.5KiB", "k") == 1536
    assert parse_size(100, "k") == 100
    assert parse_duration("250ms", "k") == pytest.approx(0.25)
    assert parse_duration("2m", "k") == 120
    with pytest.raises(ConfigError):
        parse_size(True, "k")
    with pytest.raises(ConfigError):
        parse_duration("-1s", "k")
