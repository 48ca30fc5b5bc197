"""A node's uplink in its own process, for fault tests: feeds known spans to a real UplinkClient.

Usage: python -m tests.uplink._node UPLINK_JSON NODE_ID TRACES SEED STATUS_FILE [INTERVAL]
UPLINK_JSON is the [uplink] table as JSON (parsed by the real config parser). The spans are
`realistic_spans(TRACES, SEED)`, submitted one trace (11 spans) every INTERVAL seconds. The client's stats are
written to STATUS_FILE (atomically, as JSON) every 50 ms. SIGTERM closes the client and exits; SIGKILL is the point.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from bench._workload import realistic_spans
from edge.config import parse_config
from uplink.client import UplinkClient

_SPANS_PER_TRACE = 11


def _write_status(path: Path, stats: dict[str, int], fed: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**stats, "fed": fed}))
    os.replace(tmp, path)


async def main(table: dict[str, object], node_id: str, traces: int, seed: int, status: Path, interval: float) -> None:
    """Run the client, feed the spans, report stats until SIGTERM."""
    cfg = parse_config({"uplink": table}).uplink
    client = UplinkClient(cfg, node_id)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(client.run())
    spans = realistic_spans(traces, seed)
    fed = 0

    async def report() -> None:
        while True:
            _write_status(status, client.stats.as_dict(), fed)
            await asyncio.sleep(0.05)

    reporter = asyncio.create_task(report())
    for i in range(0, len(spans), _SPANS_PER_TRACE):
        if stop.is_set():
            break
        fed += client.submit(spans[i:i + _SPANS_PER_TRACE])
        await asyncio.sleep(interval)
    await stop.wait()
    await client.close(5.0)
    await asyncio.gather(task, return_exceptions=True)
    reporter.cancel()
    _write_status(status, client.stats.as_dict(), fed)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(json.loads(a[0]), a[1], int(a[2]), int(a[3]), Path(a[4]), float(a[5]) if len(a) > 5 else 0.01))
