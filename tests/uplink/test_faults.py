"""Faults with real processes: the node's uplink runs in its own process (tests/uplink/_node.py), with a real
Mosquitto, a real gateway and the OTLP peer. In every case each span the node was given arrives exactly once, and
the node's spool empties only once a gateway confirmed every batch.

Every wait is on a condition, with timeouts far above what an idle machine needs (they cost nothing when the
condition comes true): on a loaded machine a process takes seconds to start.

The OTLP outage lasts HELIX_TEST_OUTAGE_S seconds (default 20; a minute does not take another code path: the
gateway holds the batch unacknowledged and retries in rounds of retry_max_elapsed, so only the number of rounds
changes).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bench._workload import realistic_spans
from edge.demo.broker import Mosquitto, free_port
from edge.demo.otlp_peer import OtlpPeer, Refusal

from ._helpers import gateway_config, running_gateway, until

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_S = float(os.environ.get("HELIX_TEST_OUTAGE_S", "20"))


class Node:
    """The node process and its status file."""

    def __init__(self, tmp: Path, name: str, table: dict[str, object], node_id: str, traces: int, seed: int,
                 interval: float = 0.01) -> None:
        self.status_path = tmp / f"{name}.status.json"
        self.log = open(tmp / f"{name}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.uplink._node", json.dumps(table), node_id, str(traces), str(seed),
             str(self.status_path), str(interval)],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def status(self) -> dict[str, int]:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class GatewayProcess:
    """`helix gateway` as a process, with a TOML config; its state (what it exported) under `tmp`."""

    def __init__(self, tmp: Path, broker: Mosquitto, peer: OtlpPeer, client_id: str, more: str = "") -> None:
        conf = tmp / f"{client_id}.toml"
        conf.write_text(
            f'[gateway]\nbroker = "{broker.url}"\nhttp_listen = ""\nexport_endpoint = "{peer.grpc_endpoint}"\n'
            f'client_id = "{client_id}"\nretry_max_elapsed = "3s"\nexport_timeout = "2s"\n'
            f'state_dir = "{tmp / "gateway-state"}"\n{more}')
        self.log_path = tmp / f"{client_id}.log"
        self._start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge", "gateway", "--config", str(conf), "--log-level",
                                      "info"], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})

    async def subscribed(self) -> None:
        """Wait until this process subscribed to the uplink topic."""
        def done() -> bool:
            assert self.proc.poll() is None, f"the gateway exited: {self.log_path.read_text()[-2000:]}"
            with open(self.log_path, "rb") as f:
                f.seek(self._start)
                return b"gateway subscribed" in f.read()
        await until(done, timeout=60, what="the gateway subscribed")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _table(broker_port: int, spool: Path, **kw: object) -> dict[str, object]:
    return {"broker": f"mqtt://127.0.0.1:{broker_port}", "spool_dir": str(spool), "batch_max_spans": 55,
            "batch_max_age": "50ms", "send_timeout": "1s", "retry_max_backoff": "500ms", **kw}


async def _exactly_once(peer: OtlpPeer, traces: int, seed: int, timeout: float = 60, node: Node | None = None) -> None:
    """Every span of the workload at the peer once; with `node`, also every batch confirmed and the spool empty."""
    want = {s.span_id for s in realistic_spans(traces, seed)}
    await until(lambda: want <= {s.span_id for s in peer.spans()}, timeout=timeout, what="every span at the peer")
    if node is not None:
        await until(lambda: node.status().get("spooled_batches") == 0 and node.status().get("spans_confirmed")
                    == len(want), timeout=timeout, what="every batch confirmed and gone from the spool")
    await asyncio.sleep(1.0)  # a duplicate still on its way would arrive now
    counts = Counter(s.span_id for s in peer.spans())
    assert set(counts) == want, f"{len(set(counts) - want)} unexpected spans"
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not dupes, f"{len(dupes)} spans arrived more than once"


def _all_taken_none_confirmed(node: Node, spans: int) -> bool:
    st = node.status()
    return st.get("spans_sent") == spans and st.get("awaiting_batches") == st.get("spooled_batches") > 0


@pytest.fixture
def procs() -> Iterator[list[Node | GatewayProcess]]:
    started: list[Node | GatewayProcess] = []
    yield started
    for p in started:
        p.stop(signal.SIGKILL)


async def test_gateway_killed_mid_export_gets_the_batch_again(tmp_path: Path, mosquitto: Mosquitto,
                                                              otlp_peer: OtlpPeer, procs: list) -> None:
    otlp_peer.refuse(10**6, Refusal("UNAVAILABLE"))  # the gateway is stuck exporting its first batch
    gw = GatewayProcess(tmp_path, mosquitto, otlp_peer, "gw-a")
    procs.append(gw)
    await gw.subscribed()
    node = Node(tmp_path, "node", _table(mosquitto.port, tmp_path / "spool"), "node-k", 60, 21)
    procs.append(node)
    await until(lambda: otlp_peer.attempts >= 2, timeout=60, what="the gateway retrying its export")
    # 660 spans in batches of at most 55: 12 batches, more when a busy machine lets batch_max_age cut one short.
    # The broker took them all; no gateway confirmed any, so all stay in the node's spool.
    await until(lambda: _all_taken_none_confirmed(node, 660), timeout=60, what="every batch taken, none confirmed")
    gw.stop(signal.SIGKILL)
    assert otlp_peer.spans() == []
    otlp_peer.refusals.clear()
    gw = GatewayProcess(tmp_path, mosquitto, otlp_peer, "gw-a")  # same client id: same session
    procs.append(gw)
    await _exactly_once(otlp_peer, 60, 21, node=node)


async def test_broker_killed_with_the_gateway_behind_loses_nothing(tmp_path: Path, otlp_peer: OtlpPeer,
                                                                   procs: list) -> None:
    # A broker as production runs it: persistence on, saved every autosave_interval (Mosquitto's default, 1800 s).
    # SIGKILL loses what it took since the last save: the batches queued for the gateway, which is behind.
    work = tmp_path / "mq"
    work.mkdir()
    broker = Mosquitto(workdir=work, extra_conf=f"persistence true\npersistence_location {work}/\n")
    with broker:
        otlp_peer.refuse(10**6, Refusal("UNAVAILABLE"))
        gw = GatewayProcess(tmp_path, broker, otlp_peer, "gw-k")
        procs.append(gw)
        await gw.subscribed()
        node = Node(tmp_path, "node", _table(broker.port, tmp_path / "spool"), "node-x", 60, 26)
        procs.append(node)
        await until(lambda: _all_taken_none_confirmed(node, 660), timeout=60, what="every batch taken by the broker")
        assert broker.proc is not None
        broker.proc.kill()
        broker.proc.wait()
        await asyncio.to_thread(broker.restart)
        otlp_peer.refusals.clear()
        # The node's connection broke: it sends again every batch no gateway confirmed; the gateway exports the one
        # it held, and recognises its copy.
        await _exactly_once(otlp_peer, 60, 26, node=node)
        assert node.status()["batches_resent"] >= 1 and node.status()["dropped_queue_full"] == 0


async def test_broker_restart_loses_nothing(tmp_path: Path, otlp_peer: OtlpPeer, procs: list) -> None:
    # A broker that persists sessions, as a production broker must for at-least-once across its restarts.
    work = tmp_path / "mq"
    work.mkdir()
    broker = Mosquitto(workdir=work, extra_conf=f"persistence true\npersistence_location {work}/\n")
    with broker:
        cfg = replace(gateway_config(broker, otlp_peer.grpc_endpoint), client_id="gw-b", http_listen=None)
        async with running_gateway(cfg) as gw:
            node = Node(tmp_path, "node", _table(broker.port, tmp_path / "spool"), "node-b", 60, 22, interval=0.05)
            procs.append(node)
            await until(lambda: gw.stats.spans_exported > 0, timeout=60, what="first spans")
            await asyncio.to_thread(broker.restart)
            await _exactly_once(otlp_peer, 60, 22, node=node)
            # The gateway subscribed again; the node may have had nothing in flight when the broker went away.
            assert gw.stats.mqtt_subscriptions >= 2


@pytest.mark.slow
async def test_otlp_backend_unavailable_for_a_while(tmp_path: Path, mosquitto: Mosquitto, otlp_peer: OtlpPeer,
                                                    procs: list) -> None:
    otlp_peer.refuse(10**6, Refusal("UNAVAILABLE"))
    cfg = replace(gateway_config(mosquitto, otlp_peer.grpc_endpoint), client_id="gw-c", retry_max_elapsed=3.0,
                  http_listen=None)
    async with running_gateway(cfg) as gw:
        node = Node(tmp_path, "node", _table(mosquitto.port, tmp_path / "spool"), "node-u", 40, 23, interval=0.05)
        procs.append(node)
        await asyncio.sleep(OUTAGE_S)
        assert otlp_peer.spans() == [] and gw.stats.export_stalls >= 1
        otlp_peer.refusals.clear()
        await _exactly_once(otlp_peer, 40, 23, node=node)
        assert gw.stats.spans_dropped == 0


async def test_link_cut_by_pausing_the_broker(tmp_path: Path, mosquitto: Mosquitto, otlp_peer: OtlpPeer,
                                              procs: list) -> None:
    cfg = replace(gateway_config(mosquitto, otlp_peer.grpc_endpoint), client_id="gw-d", http_listen=None)
    async with running_gateway(cfg) as gw:
        node = Node(tmp_path, "node", _table(mosquitto.port, tmp_path / "spool"), "node-p", 80, 24, interval=0.03)
        procs.append(node)
        await until(lambda: gw.stats.spans_exported > 0, timeout=60, what="first spans")
        assert mosquitto.proc is not None
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)
        try:
            await until(lambda: node.status().get("send_failures", 0) >= 1, timeout=60, what="sends failing")
            assert node.status().get("spooled_batches", 0) >= 1
        finally:
            os.kill(mosquitto.proc.pid, signal.SIGCONT)
        await _exactly_once(otlp_peer, 80, 24, node=node)


async def test_node_killed_with_a_full_spool_delivers_after_restart(tmp_path: Path, mosquitto: Mosquitto,
                                                                     otlp_peer: OtlpPeer, procs: list) -> None:
    spool = tmp_path / "spool"
    dead = free_port()  # nothing listens here: the link is down, everything waits on disk
    first = Node(tmp_path, "first", _table(dead, spool), "node-9", 40, 25)
    procs.append(first)
    await until(lambda: first.status().get("spans_spooled") == 440, timeout=60, what="all spans on disk")
    first.stop(signal.SIGKILL)
    # 8 batches of 55 on an idle machine; more when a loaded one lets batch_max_age cut some short.
    batches = first.status()["spooled_batches"]
    assert len(list((spool / "node-9").glob("*.hxb"))) == batches >= 8
    cfg = replace(gateway_config(mosquitto, otlp_peer.grpc_endpoint), client_id="gw-e", http_listen=None)
    async with running_gateway(cfg):
        second = Node(tmp_path, "second", _table(mosquitto.port, spool), "node-9", 0, 25)
        procs.append(second)
        await until(lambda: second.status().get("spool_recovered_spans") == 440, timeout=60, what="spool read back")
        await _exactly_once(otlp_peer, 40, 25, node=second)
        assert second.status()["spans_sent"] == 440
    assert list((spool / "node-9").glob("*.hxb")) == []
