"""Runs a private Mosquitto broker (the distribution's binary) on a free loopback port."""
from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path

from ..errors import HelixError

__all__ = ["Mosquitto", "free_port"]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_recently_given: deque[int] = deque(maxlen=256)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody is listening on, below the ephemeral range when there is room.

    A port the kernel hands out for bind(0) comes from the ephemeral range, which outgoing connections draw from
    too: between this call and the real bind, a client's connection could take it. Below the range it cannot.
    """
    low, _high = _ephemeral_range()
    if low > 11000:
        for _ in range(50):
            port = random.randrange(10000, low)
            if port in _recently_given:  # handed out but perhaps not bound yet: two callers would share it
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                _recently_given.append(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# CONNECT, MQTT 3.1.1, clean session, empty client id: mosquitto answers CONNACK (0x20); another program holding the
# port (which is how a taken port looks before mosquitto gives up) does not.
_PROBE_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 0])


def _answers_mqtt(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(_PROBE_CONNECT)
            reply = s.recv(4)
            if reply[:1] == b"\x20":
                s.sendall(b"\xe0\x00")  # DISCONNECT
                return True
    except OSError:
        pass
    return False


class _PortTaken(HelixError):
    """Mosquitto could not bind its port: another process holds it."""


class Mosquitto:
    """A mosquitto process with a config written to a private directory; `extra_conf` lines are appended."""

    def __init__(self, port: int | None = None, extra_conf: str = "", workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self._port_chosen = not port  # a port chosen here may be re-chosen if something takes it before mosquitto
        self.extra_conf = extra_conf
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="helix-mosquitto-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Broker URL for configs."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start the broker and wait until it accepts connections."""
        for attempt in range(5):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if not self._port_chosen or attempt == 4:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> Mosquitto:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise HelixError("the 'mosquitto' broker is not installed (Debian: apt-get install mosquitto)")
        conf = self.workdir / "mosquitto.conf"
        log = self.workdir / "mosquitto.log"
        log_start = log.stat().st_size if log.exists() else 0
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_packet_size 268435455\n"
            + self.extra_conf
        )
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                if log.exists():
                    with open(log, "rb") as fh:
                        fh.seek(log_start)
                        err += fh.read().decode(errors="replace")
                code = self.proc.returncode
                self.stop()
                kind = _PortTaken if "in use" in err else HelixError
                raise kind(f"mosquitto exited at start (code {code}): {err.strip()[-1000:]}")
            if _answers_mqtt(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise HelixError(f"mosquitto did not accept connections on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port (sessions are not persisted)."""
        self.stop()
        self._start_once(10.0)

    async def astart(self) -> Mosquitto:
        """`start` without blocking the event loop."""
        return await asyncio.to_thread(self.start)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()
