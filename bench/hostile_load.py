"""Hostile load against the agent as shipped: memory against its limit, and a normal client's success beside it.

`python bench/hostile_load.py [--seconds 20] [--loads a,b,...]` starts a private Mosquitto, the OTLP peer, `helix
gateway` and `helix run` with the default configuration (memory.limit 44 MiB; only the listen ports are chosen
free, and the kernel probes are off unless --ebpf: the attack traffic is loopback traffic the probes would trace
too). Then, one load after the other, each for --seconds:

- `grpc_gzip_bombs`: 200 concurrent OTLP/gRPC calls (20 connections x 10), each a 3.9 KB gzip message that
  inflates to 4 MB, sent again as soon as answered;
- `grpc_streams`: 32 connections x 100 calls, each sending what its windows allow (64 KiB) and never ending;
- `continuation_flood`: 32 connections each sending a HEADERS frame and 63 unfinished CONTINUATION frames of
  16 KiB, again when closed;
- `http_big_bodies`: 16 connections each posting a 4 MiB OTLP/HTTP body (valid protobuf, ~12,000 spans), again
  when answered;
- `slowloris`: 200 OTLP/HTTP connections sending their head at 1 byte/s, reopened when closed;
- `idle_exporters`: 40 OTLP/HTTP keep-alive connections and 40 OTLP/gRPC connections that each export once and
  then sit idle, reopened when closed;

and `none` first, the same-run reference: no attack. Beside every load two normal clients export 50-span batches
every 0.2 s with the OpenTelemetry Python SDK's exporters at their defaults (OTLP/HTTP and OTLP/gRPC, retries and
10 s timeout as shipped; gRPC with insecure=True, the setting for a plaintext local collector). A call counts as
served when the exporter returns SUCCESS (after its own retries). Agent RSS (VmRSS) is read every 0.25 s. Each
attack runs in a process of its own, apart from the normal clients.

Printed per load: RSS peak and steady (median of the second half) against the limit and the goal (limit + 10 %),
the normal clients' success rates, the agent's CPU (share of one core), what the agent counted; then whether the agent survived. Last line: JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402

from bench._workload import realistic_spans  # noqa: E402
from bench.memory_budget import rss_mib  # noqa: E402
from edge.codec.otlp import request_from_spans  # noqa: E402
from edge.demo.broker import free_port  # noqa: E402
from edge.demo.stack import Stack  # noqa: E402

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LIMIT_MIB = 44.0
GOAL_MIB = LIMIT_MIB * 1.1
LOADS = ("none", "grpc_gzip_bombs", "grpc_streams", "continuation_flood", "http_big_bodies", "slowloris",
         "idle_exporters")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# ---------------------------------------------------------------------------------------------------- attackers


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


class H2Attacker:
    """One raw HTTP/2 connection driven by hand (the h2 state machine for what is legal, raw frames for what is not)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.ended: set[int] = set()

    @classmethod
    async def open(cls, port: int) -> H2Attacker:
        a = cls(*await asyncio.open_connection("127.0.0.1", port))
        a.h2.initiate_connection()
        await a.flush()
        return a

    def headers(self, encoding: str = "identity") -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", EXPORT), (":authority", "a"),
                                   ("content-type", "application/grpc"), ("grpc-encoding", encoding),
                                   ("te", "trailers")])
        return sid

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        for i in range(0, len(data), 16384):
            last = i + 16384 >= len(data)
            self.h2.send_data(sid, data[i:i + 16384], end_stream=end and last)

    async def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()

    async def pump(self, timeout: float) -> bool:
        """Read for up to `timeout`; False once the server closed the connection."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except asyncio.TimeoutError:
            return True
        except (ConnectionError, OSError):
            return False
        if not data:
            return False
        try:
            for ev in self.h2.receive_data(data):
                if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.ended.add(ev.stream_id)
            await self.flush()
        except Exception:  # noqa: BLE001 - the server ended the connection one way or another
            return False
        return True

    def close(self) -> None:
        self.writer.close()


async def _forever(stop: asyncio.Event, one: Callable[[], Awaitable[None]]) -> None:
    """Run `one` again and again until `stop`; a connection the server closed is simply opened again."""
    while not stop.is_set():
        try:
            await one()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)
        except Exception:  # noqa: BLE001 - h2 raising on what the server did: reconnect
            await asyncio.sleep(0.05)


async def grpc_gzip_bombs(ports: dict[str, int], stop: asyncio.Event) -> None:
    bomb = gzip.compress(b"\0" * 4_000_000, 9)  # ~3.9 KB
    message = b"\x01" + len(bomb).to_bytes(4, "big") + bomb

    async def conn() -> None:
        a = await H2Attacker.open(ports["grpc"])
        try:
            await a.pump(0.2)
            while not stop.is_set():
                sids = [a.headers("gzip") for _ in range(10)]
                for sid in sids:
                    a.send(sid, message, end=True)
                await a.flush()
                deadline = time.monotonic() + 30
                while not all(s in a.ended for s in sids) and time.monotonic() < deadline and not stop.is_set():
                    if not await a.pump(0.5):
                        return
        finally:
            a.close()

    await asyncio.gather(*(_forever(stop, conn) for _ in range(20)))


async def grpc_streams(ports: dict[str, int], stop: asyncio.Event) -> None:
    async def conn() -> None:
        a = await H2Attacker.open(ports["grpc"])
        try:
            await a.pump(0.2)
            opened = 0
            while not stop.is_set():
                while opened < 100:
                    try:
                        sid = a.headers()
                    except Exception:  # noqa: BLE001 - over the server's concurrent-stream limit
                        break
                    opened += 1
                    window = a.h2.local_flow_control_window(sid)
                    if window > 5:
                        a.send(sid, b"\x00" + (4 << 20).to_bytes(4, "big") + b"s" * min(65530, window - 5))
                await a.flush()
                if not await a.pump(1.0):
                    return
                opened -= len(a.ended)
                a.ended.clear()
        finally:
            a.close()

    await asyncio.gather(*(_forever(stop, conn) for _ in range(32)))


async def continuation_flood(ports: dict[str, int], stop: asyncio.Event) -> None:
    async def conn() -> None:
        a = await H2Attacker.open(ports["grpc"])
        try:
            await a.pump(0.2)
            sid = 1
            a.writer.write(_frame(0x1, 0x0, sid, b"\x83\x86"))  # HEADERS: POST, http; END_HEADERS never comes
            for _ in range(63):
                a.writer.write(_frame(0x9, 0x0, sid, b"\x00" * 16384))
                await a.writer.drain()
            while not stop.is_set() and await a.pump(1.0):
                pass
        finally:
            a.close()

    await asyncio.gather(*(_forever(stop, conn) for _ in range(32)))


async def http_big_bodies(ports: dict[str, int], stop: asyncio.Event, body: bytes) -> None:
    head = (b"POST /v1/traces HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))

    async def conn() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["http"])
        try:
            while not stop.is_set():
                writer.write(head + body)
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 60)
                if not line:
                    return
                headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                n = int(next((h.split(b":")[1] for h in headers.split(b"\r\n") if h.lower().startswith(b"content-length")), b"0"))
                await reader.readexactly(n)
                if b"close" in headers.lower():
                    return
        finally:
            writer.close()

    await asyncio.gather(*(_forever(stop, conn) for _ in range(16)))


async def slowloris(ports: dict[str, int], stop: asyncio.Event) -> None:
    head = b"POST /v1/traces HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-protobuf\r\nContent-Length: 10\r\n"

    async def conn() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["http"])
        try:
            for i in range(len(head)):
                if stop.is_set():
                    return
                writer.write(head[i:i + 1])
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                        return  # closed by the server (timeout, or its slot reclaimed)
                    return
                except asyncio.TimeoutError:
                    pass
        finally:
            writer.close()

    await asyncio.gather(*(_forever(stop, conn) for _ in range(200)))


async def idle_exporters(ports: dict[str, int], stop: asyncio.Event, body: bytes) -> None:
    request = (b"POST /v1/traces HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-protobuf\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body

    async def http() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["http"])
        try:
            writer.write(request)
            await writer.drain()
            await asyncio.wait_for(reader.read(65536), 10)
            while not stop.is_set():  # keep-alive, idle, until the server closes it
                if await asyncio.wait_for(reader.read(1), 3600) == b"":
                    return
        finally:
            writer.close()

    async def grpc() -> None:
        a = await H2Attacker.open(ports["grpc"])
        try:
            await a.pump(0.2)
            sid = a.headers()
            a.send(sid, b"\x00" + len(body).to_bytes(4, "big") + body, end=True)
            await a.flush()
            while not stop.is_set() and await a.pump(1.0):
                pass
        finally:
            a.close()

    await asyncio.gather(*(_forever(stop, http) for _ in range(40)), *(_forever(stop, grpc) for _ in range(40)))


async def _attack(name: str, ports: dict[str, int], seconds: float, big: bytes, small: bytes) -> None:
    stop = asyncio.Event()
    loads: dict[str, Callable[[], Awaitable[Any]]] = {
        "none": stop.wait,
        "grpc_gzip_bombs": lambda: grpc_gzip_bombs(ports, stop),
        "grpc_streams": lambda: grpc_streams(ports, stop),
        "continuation_flood": lambda: continuation_flood(ports, stop),
        "http_big_bodies": lambda: http_big_bodies(ports, stop, big),
        "slowloris": lambda: slowloris(ports, stop),
        "idle_exporters": lambda: idle_exporters(ports, stop, small),
    }
    task = asyncio.create_task(loads[name]())
    parent, end = os.getppid(), time.monotonic() + seconds
    while time.monotonic() < end and os.getppid() == parent:  # the bench interrupted: stop with it
        await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
    stop.set()
    try:
        await asyncio.wait_for(task, 15)
    except asyncio.TimeoutError:
        task.cancel()


def run_attack(name: str, ports: dict[str, int], seconds: float, big: bytes, small: bytes) -> None:
    """One load for `seconds`, in the process this is called in."""
    asyncio.run(_attack(name, ports, seconds, big, small))


# ---------------------------------------------------------------------------------------------------- normal clients


class NormalClient(threading.Thread):
    """An application's OTLP exporter (OpenTelemetry Python SDK, defaults), exporting a 50-span batch every 0.2 s."""

    def __init__(self, kind: str, port: int) -> None:
        super().__init__(daemon=True, name=f"normal-{kind}")
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        if kind == "http":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
            self.exporter: Any = HttpExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
            self.exporter = GrpcExporter(endpoint=f"127.0.0.1:{port}", insecure=True)
        tracer = TracerProvider(resource=Resource.create({"service.name": f"normal-{kind}"})).get_tracer("bench")
        self.batch = []
        for i in range(50):
            with tracer.start_as_current_span(f"op-{i}", attributes={"http.route": "/api/orders", "i": i}) as s:
                pass
            self.batch.append(s)
        self.kind = kind
        self.results: list[tuple[float, bool, float]] = []  # (when, served, seconds)
        self.halt = threading.Event()

    def run(self) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        while not self.halt.is_set():
            t0 = time.monotonic()
            try:
                ok = self.exporter.export(self.batch) == SpanExportResult.SUCCESS
            except Exception:  # noqa: BLE001 - an exporter that raises did not serve the call
                ok = False
            self.results.append((t0, ok, time.monotonic() - t0))
            self.halt.wait(max(0.0, 0.2 - (time.monotonic() - t0)))

    def rate(self, start: float, end: float) -> tuple[float, int, float]:
        """Share of calls started in [start, end) that were served, how many there were, their median seconds."""
        calls = [(ok, s) for t, ok, s in self.results if start <= t < end]
        served = sum(ok for ok, _ in calls) / len(calls) if calls else 0.0
        return served, len(calls), statistics.median(s for _, s in calls) if calls else 0.0


# ---------------------------------------------------------------------------------------------------- main


async def scrape(port: int) -> dict[str, float]:
    """The agent's /metrics as {series: value} (the events the receivers counted)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        text = (await asyncio.wait_for(reader.read(-1), 10)).decode(errors="replace")
        writer.close()
    except (OSError, asyncio.TimeoutError):
        return {}
    out: dict[str, float] = {}
    for line in text.split("\r\n\r\n", 1)[-1].splitlines():
        if line and not line.startswith("#") and ("otlp" in line or "restarts" in line):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each load (default 20)")
    ap.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated, from: {', '.join(LOADS)}")
    ap.add_argument("--ebpf", action="store_true", help="leave the kernel probes at their default (auto)")
    args = ap.parse_args()
    loads = [x for x in args.loads.split(",") if x]
    for x in loads:
        if x not in LOADS:
            ap.error(f"unknown load {x!r}")
    if "none" not in loads:
        loads.insert(0, "none")

    spans = realistic_spans(1500, seed=9)
    small = request_from_spans(spans[:50]).SerializeToString()
    per_span = len(request_from_spans(spans[:1000]).SerializeToString()) / 1000
    big = request_from_spans(spans[:int(4.1e6 / per_span)]).SerializeToString()  # just under max_request (4 MiB)
    work = Path(tempfile.mkdtemp(prefix="helix-bench-hostile-"))
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    results: dict[str, Any] = {}
    async with Stack(work) as stack:
        await stack.start_gateway()
        more = f"[metrics]\nlisten = \"127.0.0.1:{ports['metrics']}\"\n"
        if not args.ebpf:
            more += "[sources.ebpf]\nenabled = false\n"
        agent = await stack.start_agent(stack.agent_config("bench-hostile", grpc_listen=f"127.0.0.1:{ports['grpc']}",
                                                           http_listen=f"127.0.0.1:{ports['http']}",
                                                           batch_max_age="2s", more=more))
        pid = agent.proc.pid
        await asyncio.sleep(2.0)
        idle = rss_mib(pid)
        print(f"agent pid {pid}, RSS idle {idle:.1f} MiB, limit {LIMIT_MIB:.0f} MiB, goal <= {GOAL_MIB:.1f}",
              file=sys.stderr)
        clients = [NormalClient("http", ports["http"]), NormalClient("grpc", ports["grpc"])]
        for c in clients:
            c.start()
        await asyncio.sleep(2.0)
        for name in loads:
            before = await scrape(ports["metrics"])
            # The attack runs in a process of its own: in this one its event loop would take the interpreter lock
            # from the normal clients' threads, and their calls would be slow for the bench's sake, not the agent's.
            attack = mp.get_context("spawn").Process(target=run_attack, args=(name, ports, args.seconds, big, small),
                                                     name=f"attack-{name}", daemon=True)
            attack.start()
            t0, cpu0 = time.monotonic(), cpu_seconds(pid)
            samples: list[float] = []
            while time.monotonic() - t0 < args.seconds and agent.proc.returncode is None:
                samples.append(rss_mib(pid))
                await asyncio.sleep(0.25)
            t1, cpu1 = time.monotonic(), cpu_seconds(pid)
            await asyncio.to_thread(attack.join, 20)
            if attack.is_alive():
                attack.kill()
                await asyncio.to_thread(attack.join, 5)
            after = await scrape(ports["metrics"])
            rates = {c.kind: c.rate(t0, t1) for c in clients}
            alive = agent.proc.returncode is None
            half = samples[len(samples) // 2:] or [0.0]
            counted = {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0) > 0}
            results[name] = {
                "rss_peak_mib": round(max(samples or [0.0]), 1), "rss_steady_mib": round(statistics.median(half), 1),
                "normal_http_served": round(rates["http"][0], 4), "normal_http_calls": rates["http"][1],
                "normal_http_median_s": round(rates["http"][2], 3),
                "normal_grpc_served": round(rates["grpc"][0], 4), "normal_grpc_calls": rates["grpc"][1],
                "normal_grpc_median_s": round(rates["grpc"][2], 3),
                "agent_cpu_share": round((cpu1 - cpu0) / (t1 - t0), 2), "agent_alive": alive, "counted": counted,
            }
            r = results[name]
            print(f"{name:20s} RSS peak {r['rss_peak_mib']:5.1f} steady {r['rss_steady_mib']:5.1f} MiB "
                  f"({'within' if r['rss_peak_mib'] <= GOAL_MIB else 'OVER'} {GOAL_MIB:.1f}); normal client served: "
                  f"http {r['normal_http_served']:.1%} of {r['normal_http_calls']} ({r['normal_http_median_s']:.2f} s), "
                  f"grpc {r['normal_grpc_served']:.1%} of {r['normal_grpc_calls']} ({r['normal_grpc_median_s']:.2f} s); agent CPU {r['agent_cpu_share']:.0%}, {'alive' if alive else 'DEAD'}", file=sys.stderr)
            if not alive:
                break
            await asyncio.sleep(3.0)  # let the agent settle between loads
        for c in clients:
            c.halt.set()
        for c in clients:
            await asyncio.to_thread(c.join, 15)
        alive = agent.proc.returncode is None
    out = {
        "limit_mib": LIMIT_MIB, "goal_mib": round(GOAL_MIB, 1), "rss_idle_mib": round(idle, 1),
        "seconds_per_load": args.seconds, "ebpf": "auto" if args.ebpf else "off",
        "agent_alive_at_end": alive,
        "worst_peak_mib": max(r["rss_peak_mib"] for r in results.values()),
        "peak_over_limit": round(max(r["rss_peak_mib"] for r in results.values()) / LIMIT_MIB, 3),
        "worst_normal_served": min(min(r["normal_http_served"], r["normal_grpc_served"]) for r in results.values()),
        "loads": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
