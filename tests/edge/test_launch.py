"""`helix run` leaves OpenSSL out when its config can need no TLS, and says so when TLS is asked for anyway."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.demo.broker import Mosquitto


@pytest.mark.parametrize(("doc", "tls"), [
    ({}, False),
    ({"uplink": {"transport": "http", "url": "http://gw:4380/v1/batches"}}, False),
    ({"uplink": {"transport": "http", "url": "https://gw/v1/batches"}}, True),
    ({"uplink": {"broker": "mqtts://gw:8883"}}, True),
    ({"sources": {"mqtt": {"broker": "mqtts://127.0.0.1:8883"}}}, True),
    ({"fleet": {"enabled": True, "trusted_keys": ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]}}, True),
])
def test_which_configs_may_need_tls(doc: dict, tls: bool) -> None:
    assert parse_config(doc).agent_may_use_tls() is tls


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_launcher_defers_ssl_only_for_configs_without_tls(tmp_path: Path) -> None:
    plain, fleet = tmp_path / "plain.toml", tmp_path / "fleet.toml"
    plain.write_text('[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n')
    fleet.write_text('[fleet]\nenabled = true\ntrusted_keys = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]\n')
    probe = ("import sys; from edge.launch import _prepare_agent; _prepare_agent(['--config', {!r}]); "
             "import asyncio, aiohttp; print(sys.modules.get('ssl') is None)")
    assert _python(probe.format(str(plain))) == "True"
    assert _python(probe.format(str(fleet))) == "False"


def test_tls_asked_for_without_ssl_is_a_clear_error() -> None:
    out = _python(
        "from edge.runtime.ssl_deferral import defer_ssl; defer_ssl()\n"
        "from edge.config import parse_config\n"
        "from edge.errors import HelixError\n"
        "cfg = parse_config({'uplink': {'broker': 'mqtts://gw:8883'}}).uplink\n"
        "try:\n    cfg.mqtt_ssl('uplink')\nexcept HelixError as e:\n    print(e)\n")
    assert out.startswith("[uplink] needs TLS, which this agent did not load") and "restart" in out


def test_plain_http_still_works_without_ssl() -> None:
    out = _python(
        "from edge.runtime.ssl_deferral import defer_ssl; defer_ssl()\n"
        "import asyncio, aiohttp\n"
        "async def main():\n"
        "    async def handle(r, w):\n"
        "        await r.readuntil(b'\\r\\n\\r\\n')\n"
        "        w.write(b'HTTP/1.1 204 No Content\\r\\nContent-Length: 0\\r\\n\\r\\n'); await w.drain(); w.close()\n"
        "    server = await asyncio.start_server(handle, '127.0.0.1', 0)\n"
        "    port = server.sockets[0].getsockname()[1]\n"
        "    async with aiohttp.ClientSession() as s, s.post(f'http://127.0.0.1:{port}/v1/batches', data=b'x') as r:\n"
        "        print(r.status)\n"
        "asyncio.run(main())\n")
    assert out == "204"


def test_an_agent_without_tls_runs_with_openssl_unmapped_on_glibc_malloc(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[node]\nid = "plain"\n[sources.mqtt]\nbroker = "{mosquitto.url}"\n[sources.ebpf]\nenabled = false\n'
                   f'[sources.otlp]\ngrpc_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\n[metrics]\nlisten = ""\n'
                   f'[uplink]\nbroker = "{mosquitto.url}"\nspool_dir = "{tmp_path / "spool"}"\n')
    log = tmp_path / "agent.log"
    with open(log, "wb") as fh:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)], stdout=fh, stderr=fh,
                                env=env)
    try:
        # The MQTT source subscribes in the background, so "subscribed" may follow "agent running".
        wanted = ("agent running", "TLS not loaded", "sdk span source subscribed")
        deadline = time.monotonic() + 30
        while not all(w in log.read_text() for w in wanted) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert all(w in text for w in wanted), text
        assert "objects on glibc's malloc" in text
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libssl" not in maps and "libcrypto" not in maps
        # The same process (pid) started again on glibc's malloc (edge/runtime/libc_malloc.py).
        assert b"PYTHONMALLOC=malloc" in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    finally:
        proc.terminate()
        proc.wait(10)
