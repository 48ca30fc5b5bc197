"""systemd notifications (sd_notify protocol): READY=1 once serving, WATCHDOG=1 while the event loop is alive.

No libsystemd: the protocol is one datagram per message to the unix socket in $NOTIFY_SOCKET ('@' = abstract
namespace). Outside systemd (no $NOTIFY_SOCKET) every call is a no-op.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

__all__ = ["notify", "watchdog_interval", "watchdog_loop"]

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", "STATUS=...", "STOPPING=1") to systemd; False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode("utf-8"), addr)
        return True
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", path, e.strerror or e)
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when systemd does not watch this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2


async def watchdog_loop() -> None:
    """Ping the watchdog forever; idles when not watched. A blocked event loop stops the pings, and systemd restarts."""
    interval = watchdog_interval()
    if interval is None or not os.environ.get("NOTIFY_SOCKET"):
        await asyncio.Event().wait()
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)  # type: ignore[arg-type]
