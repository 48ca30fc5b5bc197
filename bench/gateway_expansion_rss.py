"""How far one batch takes `helix gateway`'s memory, over the size its frame declares, for batches built to count
just under the expansion bound (declared x 24: a text shared by every span, copied into each span of the OTLP
request) and for a plain batch of real spans (the same-run reference).

Each case runs a fresh `helix gateway` process (HTTP ingress, `--limit` MiB, an OTLP/gRPC peer in this process) and
posts one batch of `--spans` spans; the figure is the growth of the gateway's VmHWM over its idle VmHWM, divided by
the declared size, next to what the gateway reserved for the batch (also over the declared size).

    python bench/gateway_expansion_rss.py [--spans 8000] [--limit 128]

Last line: {"cases": {name: {"declared", "expanded", "status", "rss_growth_x", "reserved_x"}}, "reference_x",
"worst_x", "worst_over_reserved"}
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._workload import realistic_spans  # noqa: E402
from edge.demo.broker import free_port  # noqa: E402
from edge.demo.otlp_peer import OtlpPeer  # noqa: E402
from tests.uplink._helpers import gateway_process, just_under_expansion, vm_hwm  # noqa: E402
from uplink.gateway.budget import expansion_limit, export_cost  # noqa: E402
from uplink.wire import MEDIA_TYPE, declared_size, decode_batch, encode_batch  # noqa: E402


def _expanded(payload: bytes) -> tuple[int, int]:
    """(declared, what the decoders count) of a batch."""
    declared = declared_size(payload)
    return declared, decode_batch(payload, 64 << 20, lambda _id: None, 1 << 20, expansion_limit(declared)).expanded


async def one(payload: bytes, limit_mib: int, peer: OtlpPeer, work: Path) -> dict[str, float]:
    port = free_port()
    conf = work / "gw.toml"
    conf.write_text(f'[gateway]\nmqtt_enabled = false\nhttp_listen = "127.0.0.1:{port}"\n'
                    f'export_endpoint = "{peer.grpc_endpoint}"\nstate_dir = ""\nmemory_limit = "{limit_mib}MiB"\n')
    log_path = work / "gw.log"
    with gateway_process(conf, log_path) as proc:
        deadline = time.monotonic() + 60
        while b"gateway accepting batches" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start: {log_path.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        idle = vm_hwm(proc.pid)
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/v1/batches", data=payload,
                              headers={"Content-Type": MEDIA_TYPE}) as resp:
                status = resp.status
                await resp.read()
        peak = vm_hwm(proc.pid)
    declared, expanded = _expanded(payload)
    reserved = round(export_cost(declared, expanded) / declared, 1)
    return {"declared": declared, "expanded": expanded, "status": status,
            "rss_growth_x": round((peak - idle) / declared, 1), "reserved_x": reserved,
            "peak_mib": round(peak / 2**20, 1), "idle_mib": round(idle / 2**20, 1)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=8000)
    ap.add_argument("--limit", type=int, default=128, help="gateway.memory_limit in MiB (default 128)")
    args = ap.parse_args()
    cases = {
        "real_spans": encode_batch(realistic_spans(args.spans, seed=44)[:args.spans], "bench-node", 1),
        "shared_text_v2_just_under": just_under_expansion(args.spans, 2),
        "shared_text_v3_just_under": just_under_expansion(args.spans, 3),
    }
    out: dict[str, dict[str, float]] = {}
    work = Path(tempfile.mkdtemp(prefix="helix-bench-gw-rss-"))
    peer = OtlpPeer()
    await peer.start()
    try:
        for name, payload in cases.items():
            out[name] = await one(payload, args.limit, peer, work)
            print(f"{name}: {out[name]}", file=sys.stderr)
    finally:
        await peer.stop()
    worst = max(out.values(), key=lambda c: c["rss_growth_x"])
    print(json.dumps({"cases": out, "reference_x": out["real_spans"]["rss_growth_x"],
                      "worst_x": worst["rss_growth_x"],
                      "worst_over_reserved": round(worst["rss_growth_x"] / worst["reserved_x"], 2)
                      if worst["reserved_x"] else None}))


if __name__ == "__main__":
    asyncio.run(main())
