"""A spool whose disk fills during an outage refuses at the door: the cut batch waits, the queue fills, `put` waits
and `can_accept` says no (the agent's receivers answer busy on it), no partial file is left, and once the link is
back every span accepted is delivered. The disk is a real 256 KiB tmpfs."""
from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bench._workload import realistic_spans
from edge.demo.broker import free_port
from edge.demo.otlp_peer import OtlpPeer

from ._helpers import as_sent, gateway_config, running_client, running_gateway, until, uplink_config


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "spool"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


async def test_a_full_disk_holds_spans_at_the_door_and_loses_none(small_disk: Path, otlp_peer: OtlpPeer) -> None:
    port = free_port()
    # Each batch is a file taking at least one 4 KiB page: the disk holds some sixty of them.
    cfg = uplink_config(transport="http", url=f"http://127.0.0.1:{port}/v1/batches", spool_dir=str(small_disk),
                        batch_max_spans=11, queue_max_bytes=32 * 1024, retry_max_backoff=0.2)
    spans = realistic_spans(150, seed=51)
    async with running_client(cfg, "n-1") as client:
        feeding = asyncio.create_task(client.put(spans))
        await until(lambda: client.stats.spool_blocked == 1 and not client.can_accept(4096), timeout=30,
                    what="the disk full and the queue full")
        assert not feeding.done()  # the pipeline waits: nothing more is taken than can be kept
        spool = next(small_disk.iterdir())
        assert not [p.name for p in spool.iterdir() if p.name.endswith(".tmp")]
        st = client.stats
        assert st.spans_accepted < len(spans)
        assert st.dropped_spool_error == st.dropped_queue_full == st.spool_evicted_spans == 0
        gcfg = replace(gateway_config(None, otlp_peer.grpc_endpoint), http_listen=("127.0.0.1", port))
        async with running_gateway(gcfg):
            assert await asyncio.wait_for(feeding, 60) == len(spans)
            await until(lambda: client.stats.spans_confirmed == len(spans) and client.stats.spooled_batches == 0,
                        timeout=60, what="every span delivered once the link is back")
        assert client.can_accept(4096) and client.stats.spool_blocked == 0
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}
    assert client.stats.dropped_spool_error == client.stats.dropped_on_close == 0
