"""The gateway keeps within its own `gateway.memory_limit` whatever batches arrive: a batch's span count is bounded
before any span is built, and memory for decoding is reserved from what its frame declares before it is inflated.
`helix gateway` runs as its own process here, so its peak RSS (VmHWM) is its own."""
from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import cbor2
import pytest
import zstandard

from bench._workload import realistic_spans
from edge.demo.broker import free_port
from edge.demo.otlp_peer import OtlpPeer
from uplink.wire import MEDIA_TYPE, encode_batch
from uplink.wire.batch_v2 import _F_PACKED, body as batch_body
from uplink.wire.frame import SPANS_HEADER, SPANS_MAGIC

from .._helpers import as_sent, expanding_batch, gateway_process, until, vm_hwm

LIMIT_MIB = 128


def _frame(body: bytes) -> bytes:
    """A batch whose zstd frame declares its size, as every node writes it."""
    return SPANS_HEADER.pack(SPANS_MAGIC, 2, 0) + zstandard.ZstdCompressor(level=19).compress(body)


def _declaring_spans(n: int) -> bytes:
    """A real batch of one span whose kind/status column claims `n` spans (about 1 KB on the wire)."""
    body = cbor2.loads(batch_body(realistic_spans(1, seed=40)[:1], "n-1", 1))
    body[_F_PACKED] = bytes(n)  # the kind/status column: its length is the span count
    return _frame(cbor2.dumps(body))


@pytest.fixture
def gateway(tmp_path: Path, otlp_peer: OtlpPeer) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\nmqtt_enabled = false\nhttp_listen = "127.0.0.1:{port}"\n'
                    f'export_endpoint = "{otlp_peer.grpc_endpoint}"\nstate_dir = ""\nmemory_limit = "{LIMIT_MIB}MiB"\n')
    log_path = tmp_path / "gw.log"
    with gateway_process(conf, log_path) as proc:
        yield proc, f"http://127.0.0.1:{port}/v1/batches", log_path


async def _post(s: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, str]:
    async with s.post(url, data=body, headers={"Content-Type": MEDIA_TYPE}) as resp:
        return resp.status, await resp.text()


async def _up(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    def ready() -> bool:
        assert proc.poll() is None, f"the gateway exited: {log_path.read_text()[-2000:]}"
        return b"gateway accepting batches" in log_path.read_bytes()
    await until(ready, timeout=60, what="the gateway listening")


async def test_hostile_batches_keep_the_gateway_within_its_memory_limit(gateway: tuple[subprocess.Popen[bytes], str, Path],
                                                                       otlp_peer: OtlpPeer) -> None:
    proc, url, log_path = gateway
    await _up(proc, log_path)
    idle = vm_hwm(proc.pid)
    # ~1 KB declaring 100,000 spans: refused by the span count before a span is built. Its frame declares little
    # (~100 KB), so the memory check, which depends on what the gateway holds idle, never answers first.
    claim = _declaring_spans(100_000)
    # Bodies that cost the most memory per inflated byte: 150,000 empty maps (150 KB inflated, 1 KB on the wire).
    dense = [_frame(cbor2.dumps([{}] * 150_000 + [i])) for i in range(24)]
    # A frame declaring 64 MiB: it could never fit the budget, refused without inflating a byte.
    bomb = _frame(bytes(64 << 20))
    # One 60 KB text used by 6,000 spans (format 2: as their name, 3: as an attribute value): under 1 KB on the wire,
    # ~230 KB declared (its 22 MiB reservation fits), 360 MB as an OTLP request. Refused by what the decoders count
    # before the request is built.
    expanding = [expanding_batch(6_000, "x" * 60_000, 2, "n-3", 8), expanding_batch(6_000, "y" * 60_000, 3, "n-3", 9)]
    spans = realistic_spans(4, seed=41)
    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        status, text = await _post(s, url, claim)
        assert status == 400 and "over the limit of 65536" in text
        assert time.monotonic() - started < 5
        status, text = await _post(s, url, bomb)
        assert status == 413 and "gateway.memory_limit" in text
        for body in expanding:
            status, text = await _post(s, url, body)
            assert status == 413 and "expands to more than" in text, (len(body), status, text)
        # 24 at once: each is decoded only with its memory reserved; the rest wait or are told to come back (503).
        answers = await asyncio.gather(*(_post(s, url, body) for body in dense))
        assert {st for st, _ in answers} <= {400, 503} and any(st == 400 for st, _ in answers)
        assert (await _post(s, url, encode_batch(spans, "n-2", 7)))[0] == 200
    peak = vm_hwm(proc.pid)
    assert peak <= LIMIT_MIB << 20, f"gateway peak RSS {peak >> 20} MiB over its limit of {LIMIT_MIB} MiB " \
                                    f"(idle {idle >> 20} MiB)"
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in spans}
