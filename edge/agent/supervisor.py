"""The agent's long-running parts, restarted with backoff when one fails, so that no input can stop the agent.

A part that raises is restarted after a backoff (0.5 s doubling to 30 s, with jitter; back to 0.5 s once a run lasted
a minute), counted by name, and logged with its traceback at most once a minute per part (the others counted in the
line). Only two things stop the agent from here: cancellation (SIGTERM/SIGINT stop it cleanly, flushing what was
accepted) and a `FatalError`, which a part raises on purpose when restarting it could not help. Everything else —
a decoder bug, MemoryError, OSError, RecursionError — is a failure of one part, and a node is better off running on
without it for a few seconds than not running at all.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..errors import FatalError
from ..net.retry import Backoff, Throttle

__all__ = ["Supervisor", "SupervisorStats"]

log = logging.getLogger(__name__)

HEALTHY_AFTER = 60.0  # s a part must run before its backoff starts again from the shortest delay
LOG_EVERY = 60.0  # s between two logged failures of the same part


@dataclass(slots=True)
class SupervisorStats:
    """Restarts by part, and the last failure of each."""

    restarts: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)


class Supervisor:
    """Runs parts as tasks; `fatal` completes (with the error) when one raises FatalError."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, healthy_after: float = HEALTHY_AFTER,
                 log_every: float = LOG_EVERY) -> None:
        self.initial = initial
        self.maximum = maximum
        self.healthy_after = healthy_after
        self.stats = SupervisorStats()
        self.tasks: list[asyncio.Task[None]] = []
        self._throttle = Throttle(log_every)
        self.fatal: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self, name: str, part: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `part()` as a task named `name`, restarting it whenever it raises; a part that returns is done."""
        self.stats.restarts.setdefault(name, 0)
        task = asyncio.create_task(self._supervise(name, part), name=name)
        self.tasks.append(task)
        return task

    async def _supervise(self, name: str, part: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.initial, self.maximum)
        while True:
            started = loop.time()
            try:
                await part()
                return
            except FatalError as e:
                log.error("%s failed and the agent cannot go on without it: %s", name, e)
                if not self.fatal.done():
                    self.fatal.set_exception(e)
                return
            except Exception as e:  # noqa: BLE001 - see the module docstring: a failing part is restarted
                if loop.time() - started >= self.healthy_after:
                    backoff.reset()
                delay = backoff.next()
                self.stats.restarts[name] = self.stats.restarts.get(name, 0) + 1
                self.stats.last_error[name] = f"{type(e).__name__}: {e}"[:300]
                self._log(name, e, delay)
                await asyncio.sleep(delay)

    def _log(self, name: str, e: Exception, delay: float) -> None:
        if not self._throttle.ready(name):
            return
        more = self._throttle.take_suppressed(name)
        log.error("%s failed (%d restart(s) so far%s); restarting it in %.1f s", name, self.stats.restarts[name],
                  f", {more} not logged" if more else "", delay, exc_info=e)

    async def stop(self) -> None:
        """Cancel every part and wait for them."""
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
