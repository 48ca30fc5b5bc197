"""Loopback workloads for the tracing-cost benches: HTTP/1 keep-alive and new-connection requests, MQTT publishes,
file I/O and I/O on character devices.

Each workload runs in long-lived processes started before any measurement: a client (or a lone process) that does
rounds of n operations on demand, and the server, broker and subscriber it talks to. Their pids are known from the
start, so a bench can trace exactly them (the probes' allow-list), count their syscalls and read their CPU time.
The servers are third-party or standard-library code at their defaults: Python's http.server, Mosquitto, paho-mqtt as
the publisher and as the subscriber.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from edge.demo.broker import Mosquitto

__all__ = ["HttpServer", "RoundsProc", "Workload", "HttpKeepAlive", "HttpNewConnections", "MqttPublishes", "FileIo",
           "DeviceIo", "oncpu_ns", "start_broker", "make_workloads", "WORKLOADS"]

SERVER = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""

# Every client: set up, print "ready", then for each stdin line "n [interval_s]" do n operations (`op()`, timed;
# started interval_s apart when given) and print their times and the process's CPU time over them (ns,
# CLOCK_PROCESS_CPUTIME_ID) as one JSON line; for a line "reset",
# open its connection anew (`reset()`: the probes know a connection's role only from its connect or accept) and print
# "ok". A traceparent per request: trace ids vary as real traffic's do, so that sampling keeps a share of them.
_ROUNDS = r"""
import json, random, sys, time
rng = random.Random(7)
def traceparent():
    return "00-%032x-%016x-01" % (rng.getrandbits(128) or 1, rng.getrandbits(64) or 1)
def rounds(prepare, op, finish=lambda: None, reset=lambda: None):
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "reset":
            reset()
            print("ok", flush=True)
            continue
        n, _, interval = line.partition(" ")
        items = [prepare() for _ in range(int(n))]
        step = int(float(interval or 0) * 1e9)
        out = []
        cpu0 = time.process_time_ns()
        start = time.perf_counter_ns()
        for i, item in enumerate(items):
            if step:
                wait = start + i * step - time.perf_counter_ns()
                if wait > 0:
                    time.sleep(wait / 1e9)
            t = time.perf_counter_ns()
            op(item)
            out.append(time.perf_counter_ns() - t)
        finish()
        print(json.dumps({"lat": out, "cpu_ns": time.process_time_ns() - cpu0}), flush=True)
"""

KEEPALIVE_CLIENT = _ROUNDS + r"""
import socket
conn = []
def reset():
    if conn:
        conn.pop().close()
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.append(c)
def op(req):
    c = conn[0]
    c.sendall(req)
    buf = b""
    while not buf.endswith(b"\r\n\r\nok"):
        buf += c.recv(4096)
reset()
rounds(lambda: ("GET /api/orders HTTP/1.1\r\nHost: shop.local\r\ntraceparent: %s\r\n\r\n" % traceparent()).encode(), op,
       reset=reset)
"""

NEWCONN_CLIENT = _ROUNDS + r"""
import socket
port = int(sys.argv[1])
def op(req):
    c = socket.create_connection(("127.0.0.1", port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(req)
    while c.recv(4096):
        pass
    c.close()
rounds(lambda: ("GET /api/orders HTTP/1.1\r\nHost: shop.local\r\nConnection: close\r\ntraceparent: %s\r\n\r\n"
                % traceparent()).encode(), op)
"""

# paho-mqtt at its defaults (MQTT v5 for the user property; QoS 0), one traceparent per message.
PUBLISHER = _ROUNDS + r"""
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
connected = []
c.on_connect = lambda *a: connected.append(1)
def reset():
    if connected:
        c.disconnect(); c.loop_stop(); connected.clear()
    c.connect("127.0.0.1", int(sys.argv[1]))
    c.loop_start()
    while not connected:
        time.sleep(0.01)
last = []
def prepare():
    p = Properties(PacketTypes.PUBLISH); p.UserProperty = ("traceparent", traceparent()); return p
def op(p):
    last[:] = [c.publish("bench/orders", b'{"order": 1, "total": 12.5}', qos=0, properties=p)]
reset()
rounds(prepare, op, lambda: last and last[0].wait_for_publish(10), reset)
"""

# paho-mqtt at its defaults subscribed to the publisher's topic: a line "m" per message; on a stdin line "reset" it
# connects and subscribes anew (as the clients' reset: the probes know an MQTT connection from its CONNECT), then "ok".
SUBSCRIBER = r"""
import sys, threading
import paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
subscribed = threading.Event()
c.on_connect = lambda c, *a: c.subscribe("bench/#")
c.on_subscribe = lambda *a: subscribed.set()
c.on_message = lambda *a: print("m", flush=True)
def connect():
    subscribed.clear()
    c.connect("127.0.0.1", int(sys.argv[1]))
    c.loop_start()
    subscribed.wait(10)
connect()
print("ok", flush=True)
for line in sys.stdin:
    c.disconnect(); c.loop_stop()
    connect()
    print("ok", flush=True)
"""

FILE_IO = _ROUNDS + r"""
import os, tempfile
fd, path = tempfile.mkstemp(prefix="helix-bench-")
rfd = os.open(path, os.O_RDONLY)
os.unlink(path)
block = b"x" * 4096
ops = [0]
def op(_):
    # writes and reads of 4 KiB in turn (the reader follows the writer), an fsync every 64 writes
    i = ops[0] = ops[0] + 1
    if i % 2:
        os.write(fd, block)
        if i % 128 == 127:
            os.fsync(fd)
    else:
        os.read(rfd, 4096)
rounds(lambda: None, op)
"""

DEVICE_IO = _ROUNDS + r"""
import os
z, d = os.open("/dev/zero", os.O_RDONLY), os.open("/dev/null", os.O_WRONLY)
ops = [0]
def op(_):
    ops[0] += 1
    if ops[0] % 2:
        os.read(z, 64)
    else:
        os.write(d, b"x" * 64)
rounds(lambda: None, op)
"""


def oncpu_ns(pid: int) -> int:
    """Time a process's threads have run (user + system), in ns from the scheduler's own clock (schedstat): the same
    time as utime + stime in /proc/<pid>/stat without their clock-tick resolution."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total


class RoundsProc:
    """A client script (one of the *_CLIENT scripts) in a subprocess, running rounds on demand."""

    def __init__(self, script: str, *args: str) -> None:
        self.script, self.args = script, args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> RoundsProc:
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", self.script, *self.args,
                                                         stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                         limit=1 << 24)  # a round's times are one long line
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"workload client did not start: {line!r}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def reset(self) -> None:
        """Open the client's connection anew (clients without one ignore it)."""
        p = self.proc
        assert p is not None and p.stdin is not None and p.stdout is not None
        p.stdin.write(b"reset\n")
        await p.stdin.drain()
        await p.stdout.readline()

    async def round(self, n: int, interval: float = 0.0) -> tuple[list[int], int]:
        """n operations (started `interval` seconds apart, if given): their times (ns) and the process's CPU time over
        them (ns)."""
        p = self.proc
        assert p is not None and p.stdin is not None and p.stdout is not None
        p.stdin.write(f"{n} {interval}\n".encode())
        await p.stdin.drain()
        out = json.loads(await p.stdout.readline())
        return out["lat"], out["cpu_ns"]

    async def stop(self) -> None:
        p = self.proc
        if p is not None and p.returncode is None:
            if p.stdin is not None:
                p.stdin.close()
            try:
                await asyncio.wait_for(p.wait(), 10)
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()


class HttpServer:
    """Python's http.server on a free loopback port."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> HttpServer:
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVER, stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(await self.proc.stdout.readline())
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


class Workload:
    """A client process running rounds against long-lived peers; `pids` are every process the workload runs in."""

    name = ""
    unit = "request"
    script = ""

    def __init__(self, peer_pids: list[int], port: int) -> None:
        self.peer_pids = peer_pids
        self.client = RoundsProc(self.script, str(port))

    async def start(self) -> Workload:
        await self.client.start()
        return self

    @property
    def pids(self) -> list[int]:
        return [*self.peer_pids, self.client.pid]

    #: the least time between two operations' starts (0: back to back)
    interval = 0.0

    async def round(self, n: int, interval: float | None = None) -> tuple[list[int], int]:
        """n operations (`interval` apart, the workload's own by default): their times (ns) and the client's CPU time
        over them (ns)."""
        return await self.client.round(n, self.interval if interval is None else interval)

    async def reset(self) -> None:
        """Open the client's connection anew: call once the probes are attached, so that they know its role."""
        await self.client.reset()

    async def stop(self) -> None:
        await self.client.stop()


class _HttpWorkload(Workload):
    """Requests against an http.server of the workload's own (it serves one connection at a time)."""

    def __init__(self) -> None:
        self.server = HttpServer()
        self.client = RoundsProc(self.script)
        self.peer_pids: list[int] = []

    async def start(self) -> Workload:
        await self.server.start()
        self.peer_pids = [self.server.pid]
        self.client.args = (str(self.server.port),)
        return await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.server.stop()


class HttpKeepAlive(_HttpWorkload):
    """HTTP/1.1 GETs, one after another on one keep-alive connection."""

    name = "http_keepalive"
    script = KEEPALIVE_CLIENT


class HttpNewConnections(_HttpWorkload):
    """HTTP/1.1 GETs with `Connection: close`: connect, request, response, close, for each."""

    name = "http_new_connection"
    script = NEWCONN_CLIENT


class MqttPublishes(Workload):
    """QoS 0 MQTT v5 publishes with a traceparent user property, through Mosquitto to a paho subscriber, 6 ms apart:
    the probes see writes closer together than their idle gap (5 ms) as one message, so a tight loop of publishes
    would be mostly invisible to them (docs/known-gaps.md)."""

    name = "mqtt_publish"
    unit = "publish"
    script = PUBLISHER
    interval = 0.006

    def __init__(self, broker: Mosquitto) -> None:
        assert broker.proc is not None
        super().__init__([broker.proc.pid], broker.port)
        self.port = broker.port
        self.sub: asyncio.subprocess.Process | None = None
        self.received = 0
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> MqttPublishes:
        self.sub = await asyncio.create_subprocess_exec(sys.executable, "-c", SUBSCRIBER, str(self.port),
                                                        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._count())
        await asyncio.wait_for(self._subscribed.wait(), 15)  # subscribed before the first publish
        await super().start()
        return self

    async def _count(self) -> None:
        assert self.sub is not None and self.sub.stdout is not None
        while line := await self.sub.stdout.readline():
            if line == b"m\n":
                self.received += 1
            else:
                self._subscribed.set()

    async def reset(self) -> None:
        """The subscriber's connection anew too: the probes learn a connection speaks MQTT from its CONNECT."""
        assert self.sub is not None and self.sub.stdin is not None
        self._subscribed.clear()
        self.sub.stdin.write(b"reset\n")
        await self.sub.stdin.drain()
        await asyncio.wait_for(self._subscribed.wait(), 15)
        await super().reset()

    @property
    def pids(self) -> list[int]:
        assert self.sub is not None
        return [*super().pids, self.sub.pid]

    async def round(self, n: int, interval: float | None = None) -> tuple[list[int], int]:
        """n publishes, and (up to 5 s) until the subscriber has them: the broker's work is part of the round."""
        target = self.received + n
        out = await super().round(n, interval)
        for _ in range(100):
            if self.received >= target:
                break
            await asyncio.sleep(0.05)  # QoS 0: a broker under load may drop some; the round counts publishes
        return out

    async def stop(self) -> None:
        await super().stop()
        if self.sub is not None and self.sub.returncode is None:
            self.sub.terminate()
            await self.sub.wait()
        if self._reader is not None:
            await self._reader


class _LoneWorkload(Workload):
    """A process working alone; a unit is one syscall."""

    unit = "syscall"

    def __init__(self) -> None:
        super().__init__([], 0)


class FileIo(_LoneWorkload):
    """4 KiB writes to and reads from a regular file in turn (an fsync every 64 writes)."""

    name = "file_io"
    script = FILE_IO


class DeviceIo(_LoneWorkload):
    """64-byte reads of /dev/zero and writes to /dev/null in turn: I/O the probes look at and ignore."""

    name = "device_io"
    script = DEVICE_IO


WORKLOADS = ("http_keepalive", "http_new_connection", "mqtt_publish", "file_io", "device_io")


async def start_broker(workdir: Path | None = None) -> Mosquitto:
    """A Mosquitto broker for the MQTT workload."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(workdir=workdir or Path(tempfile.mkdtemp(prefix="helix-bench-mqtt-")))
    return await broker.astart()


async def make_workloads(broker: Mosquitto | None, names: tuple[str, ...] = WORKLOADS) -> dict[str, Workload]:
    """The named workloads, their processes started (the MQTT one needs the broker)."""
    make = {
        "http_keepalive": HttpKeepAlive,
        "http_new_connection": HttpNewConnections,
        "mqtt_publish": lambda: MqttPublishes(broker),
        "file_io": FileIo,
        "device_io": DeviceIo,
    }
    return {name: await make[name]().start() for name in names}
