"""How much acknowledged data a `kill -9` of the agent loses at its defaults: the window between the moment a
receiver answered 200 and the moment those spans were on disk in the uplink spool.

Runs a private Mosquitto, an OTLP peer, `helix gateway` and `helix run` as real processes (edge/demo/stack.py). An
OTLP/HTTP client sends one trace per request every `--interval` seconds and notes when each was acknowledged; after
`--seconds` the agent gets SIGKILL, and is started again on the same spool (which sends what was on disk). After the
last round, every acknowledged span that never reached the peer is lost: the window of a round is the kill time less
the acknowledgement time of its oldest lost span.

    python bench/agent_kill_window.py [--rounds 3] [--seconds 8] [--interval 0.05] [--durable]

Same-run reference: what the configuration says the window is (assembler.window + uplink.batch_max_age, 4 s at the
defaults), and the ratio of the measured window to it.
Last line: {"window_s_max", "window_s_rounds", "lost_spans", "acked_spans", "configured_window_s", "ratio"}
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from edge.assembler.config import AssemblerConfig  # noqa: E402
from edge.codec.otlp import request_from_spans  # noqa: E402
from edge.config.uplink import UplinkConfig  # noqa: E402
from edge.demo.broker import free_port  # noqa: E402
from edge.demo.stack import Stack  # noqa: E402


async def offer(url: str, traces: list[list[bytes]], bodies: list[bytes], interval: float, seconds: float,
                acked: dict[bytes, float]) -> int:
    """Post one trace per `interval` for `seconds`; note when each span was acknowledged. Returns traces used."""
    used = 0
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < end and used < len(bodies):
            body, ids = bodies[used], traces[used]
            used += 1
            try:
                async with s.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}) as resp:
                    if resp.status == 200:
                        now = time.monotonic()
                        for i in ids:
                            acked[i] = now
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(interval)
    return used


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="load before each kill (default 8)")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between two requests (default 0.05)")
    ap.add_argument("--durable", action="store_true", help="with sources.otlp.durable on (expected window: 0)")
    args = ap.parse_args()

    per_round = int(args.seconds / args.interval) + 10
    spans = realistic_spans(per_round * args.rounds, seed=61)
    by_trace: dict[bytes, list] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    groups = list(by_trace.values())
    bodies = [request_from_spans(g, source_attribute=False).SerializeToString() for g in groups]
    ids = [[s.span_id for s in g] for g in groups]
    configured = AssemblerConfig().window + UplinkConfig().batch_max_age

    work = Path(tempfile.mkdtemp(prefix="helix-bench-kill-"))
    http_port = free_port()
    rounds: list[tuple[float, dict[bytes, float]]] = []
    async with Stack(work) as stack:
        await stack.start_gateway()
        # The agent at its defaults (batch_max_age 2 s), but for its listeners and the kernel probes.
        conf = stack.agent_config("bench-node", grpc_listen="", http_listen=f"127.0.0.1:{http_port}",
                                  batch_max_age="2s", more="[sources.ebpf]\nenabled = false\n")
        if args.durable:
            conf = conf.replace("[sources.otlp]\n", f"[sources.otlp]\ndurable = true\ndurable_dir = \"{work / 'accepted'}\"\n")
        at = 0
        for r in range(args.rounds):
            agent = await stack.start_agent(conf)
            acked: dict[bytes, float] = {}
            used = await offer(f"http://127.0.0.1:{http_port}/v1/traces", ids[at:], bodies[at:], args.interval,
                               args.seconds, acked)
            at += used
            agent.proc.kill()
            killed = time.monotonic()
            await agent.proc.wait()
            rounds.append((killed, acked))
            print(f"round {r + 1}: {len(acked)} spans acknowledged, agent killed", file=sys.stderr)
        await stack.start_agent(conf)  # sends what the last kill left on disk
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 8.0:
            n = len(stack.peer.spans())
            if n != last:
                last, stable_since = n, time.monotonic()
            await asyncio.sleep(0.5)
        arrived = {s.span_id for s in stack.peer.spans()}

    windows: list[float] = []
    lost_total = acked_total = 0
    for killed, acked in rounds:
        lost = [t for i, t in acked.items() if i not in arrived]
        lost_total += len(lost)
        acked_total += len(acked)
        windows.append(round(killed - min(lost), 2) if lost else 0.0)
    worst = max(windows)
    print(f"acknowledged {acked_total} spans over {args.rounds} kills; lost {lost_total}; window per kill "
          f"{windows} s (configured assembler.window + batch_max_age = {configured:g} s)", file=sys.stderr)
    print(json.dumps({"durable": args.durable, "window_s_max": worst, "window_s_rounds": windows, "lost_spans": lost_total,
                      "acked_spans": acked_total, "configured_window_s": configured,
                      "ratio": round(worst / configured, 2)}))


if __name__ == "__main__":
    asyncio.run(main())
