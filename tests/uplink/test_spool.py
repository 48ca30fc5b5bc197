"""The disk spool: durable files, recovery after a crash, sequence numbers across restarts, eviction, locking."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench._workload import realistic_spans
from edge.errors import UplinkError
from uplink.client import UplinkClient
from uplink.spool import SEQ_LEASE, DiskSpool, spool_subdir
from uplink.wire import decode_batch, encode_batch

from ._helpers import uplink_config


async def _put(spool: DiskSpool, n_spans: int = 11, seed: int = 1) -> int:
    seq = await spool.next_seq()
    assert await spool.put(seq, n_spans, encode_batch(realistic_spans(1, seed)[:n_spans], "n", seq))
    return seq


async def test_batches_survive_a_reopen_in_order_and_seq_keeps_growing(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, "node-1", 1 << 20)
    await spool.open()
    seqs = [await _put(spool, seed=i) for i in range(3)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    await spool.close()  # as after kill -9: nothing was acknowledged

    again = DiskSpool(tmp_path, "node-1", 1 << 20)
    await again.open()
    assert [e.seq for e in again.entries] == seqs and again.recovered_spans == 33
    first = again.oldest()
    assert first is not None
    payload = await again.read(first)
    assert payload is not None and decode_batch(payload, 1 << 24).seq == seqs[0]
    await again.remove(first)
    assert [e.seq for e in again.entries] == seqs[1:]
    assert await again.next_seq() > seqs[-1]
    await again.close()


async def test_seq_lease_outlives_a_clock_that_steps_back(tmp_path: Path) -> None:
    # A node without RTC may boot with its clock in the past; the persisted lease keeps seq increasing.
    d = spool_subdir(tmp_path, "node-2")
    d.mkdir(parents=True)
    future = time.time_ns() // 1000 + 10**12
    (d / "seq.lease").write_text(str(future))
    spool = DiskSpool(tmp_path, "node-2", 1 << 20)
    await spool.open()
    assert await spool.next_seq() == future
    assert int((d / "seq.lease").read_text()) == future + SEQ_LEASE
    await spool.close()


async def test_leftovers_of_a_crash_are_cleaned_and_counted(tmp_path: Path) -> None:
    d = spool_subdir(tmp_path, "node-3")
    d.mkdir(parents=True)
    (d / ".00000000000000000005-11.hxb.tmp").write_bytes(b"half a batch")  # write cut by the crash
    (d / "00000000000000000006-11.hxb").write_bytes(b"not a batch at all")
    (d / "README").write_text("not ours")
    good = encode_batch(realistic_spans(1, 4), "node-3", 7)
    (d / "00000000000000000007-11.hxb").write_bytes(good)
    spool = DiskSpool(tmp_path, "node-3", 1 << 20)
    await spool.open()
    assert [e.seq for e in spool.entries] == [7] and spool.discarded_files == 1
    assert sorted(p.name for p in d.iterdir()) == ["00000000000000000007-11.hxb", "README", "lock", "seq.lease"]
    await spool.close()


async def test_one_agent_per_spool(tmp_path: Path) -> None:
    first = DiskSpool(tmp_path, "node-4", 1 << 20)
    await first.open()
    with pytest.raises(UplinkError, match="in use by another agent"):
        await DiskSpool(tmp_path, "node-4", 1 << 20).open()
    await first.close()
    second = DiskSpool(tmp_path, "node-4", 1 << 20)
    await second.open()  # the lock went with the first owner
    await second.close()


async def test_eviction_spares_the_batch_on_the_wire(tmp_path: Path) -> None:
    payload_size = len(encode_batch(realistic_spans(1, 1), "n", 1))
    spool = DiskSpool(tmp_path, "node-5", int(payload_size * 2.5), evict=True)
    await spool.open()
    a = await _put(spool)
    await _put(spool)
    oldest = spool.oldest()
    assert oldest is not None and oldest.seq == a
    oldest.sending = True
    c = await _put(spool)
    assert [e.seq for e in spool.entries] == [a, c] and spool.evicted_batches == 1 and spool.evicted_spans == 11
    assert len(list(spool.dir.glob("*.hxb"))) == 2
    await spool.close()


async def test_unusable_spool_dir_falls_back_to_memory_and_says_so(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the spool directory should be")
    client = UplinkClient(uplink_config(spool_dir=str(blocker)), "node-6")
    await client._open_spool()
    assert client.stats.spool_durable == 0 and not client.spool.durable
    assert "cannot use the uplink spool directory" in caplog.text


async def test_spooled_metrics_batches_survive_a_reopen(tmp_path: Path) -> None:
    from uplink.wire.metrics import decode_metrics, encode_metrics
    from edge.model import MetricBatch

    spool = DiskSpool(tmp_path, "node-1", 1 << 20)
    await spool.open()
    span_seq = await _put(spool)
    metrics_seq = await spool.next_seq()
    assert await spool.put(metrics_seq, 0, encode_metrics(MetricBatch("node-1", metrics_seq, 1, 2), 3))
    await spool.close()

    again = DiskSpool(tmp_path, "node-1", 1 << 20)
    await again.open()
    assert [e.seq for e in again.entries] == [span_seq, metrics_seq] and again.discarded_files == 0
    payload = await again.read(again.entries[1])
    assert payload is not None and decode_metrics(payload).seq == metrics_seq
    await again.close()


async def test_the_newest_small_batch_is_sent_from_memory_once_then_read_from_disk(tmp_path: Path) -> None:
    # The sender takes the batch just stored right after: its first read needs no trip to the disk. The files are
    # removed behind the spool's back so that where each read comes from shows.
    from uplink.spool import HOT_MAX_BYTES

    spool = DiskSpool(tmp_path, "node-6", 1 << 30)
    await spool.open()
    try:
        first, second = await _put(spool, seed=1), await _put(spool, seed=2)
        payload = (spool.dir / f"{second:020d}-11.hxb").read_bytes()
        for f in spool.dir.glob("*.hxb"):
            f.unlink()
        old, new = spool.entries
        assert await spool.read(new) == payload  # from memory
        assert await spool.read(new) is None  # a resend reads the disk
        assert await spool.read(old) is None and spool.discarded_files == 2 and first < second
        seq = await spool.next_seq()
        big = await spool.put(seq, 1, b"\0" * (HOT_MAX_BYTES + 1))
        assert big is not None
        (spool.dir / f"{seq:020d}-1.hxb").unlink()
        assert await spool.read(big) is None  # too large to keep: read from disk
    finally:
        await spool.close()
