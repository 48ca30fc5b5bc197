"""Apply a new validated Config to a running Agent: live where the stage allows, else say a restart is needed.

Atomic in the sense that matters on a device: everything that can fail (certificate files, the probe update)
is tried before anything is changed, so a refused config leaves the agent exactly as it was. The uplink keeps
its queue and spool across a change of target: only the transport under it is replaced, so nothing accepted
is lost. Whether the new target can be reached is checked by `wait_uplink`, which the fleet node uses to
decide a rollback.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..config import Config
from ..config.uplink import UplinkConfig
from ..errors import HelixError
from ..sampler import TailRules

if TYPE_CHECKING:
    from ..agent.runner import Agent

__all__ = ["ApplyResult", "ConfigApplier", "probe_uplink"]

log = logging.getLogger(__name__)

# Uplink keys fixed by the open spool: they need a restart.
_UPLINK_RESTART = ("spool_dir", "spool_max_bytes")


@dataclass(slots=True)
class ApplyResult:
    """What an apply changed live, and which keys only take effect at the next start."""

    applied: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)
    uplink_changed: bool = False  # the uplink target or its credentials changed: check reachability


async def probe_uplink(cfg: UplinkConfig, node_id: str, timeout: float = 5.0) -> str:
    """Try to reach the uplink once; returns "" when reachable, else what went wrong."""
    if cfg.transport == "http":
        import aiohttp

        ssl: Any = None
        if cfg.url.startswith("https://"):
            ssl = cfg.tls("uplink").context()
        headers = {"Authorization": f"Bearer {cfg.token}"} if cfg.token else {}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
                # The gateway only takes POSTs there; any answer but an auth refusal or a server error proves it is up.
                async with s.get(cfg.url, headers=headers, ssl=ssl) as resp:
                    if resp.status in (401, 403) or resp.status >= 500:
                        return f"{cfg.url} answered {resp.status}"
                    return ""
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            return f"{cfg.url} unreachable: {e or type(e).__name__}"
    from ..net.mqtt_client import MqttError

    try:
        async with cfg.mqtt_client(f"helix-probe-{node_id}", "uplink", timeout=timeout):
            return ""
    except MqttError as e:
        return f"broker {cfg.broker} unreachable: {e}"


def _changed(old: Any, new: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]


class ConfigApplier:
    """Applies Configs to one Agent; `apply(new)` then, if `uplink_changed`, `wait_uplink(grace)`."""

    def __init__(self, agent: Agent, probe: Callable[[UplinkConfig, str], Awaitable[str]] = probe_uplink) -> None:
        self.agent = agent
        self.probe = probe
        self.last_probe_error = ""

    async def apply(self, new: Config) -> ApplyResult:
        """Change the agent to `new`; raises HelixError (and changes nothing) when it cannot."""
        agent, old = self.agent, self.agent.cfg
        res = ApplyResult()
        if new == old:
            return res
        if new.node != old.node:
            raise HelixError("a remote config cannot change [node]: identity stays in the local file")

        # Everything that can fail first.
        uplink_keys = _changed(old.uplink, new.uplink)
        if uplink_keys:
            new.uplink.tls("uplink").check_files()
        if new.ebpf != old.ebpf:
            if agent.ebpf is not None:
                try:
                    agent.ebpf.update_config(new.ebpf)
                except HelixError:
                    raise
                except Exception as e:  # noqa: BLE001 - a probe that cannot take the change refuses the whole config
                    raise HelixError(f"the kernel probes refused the new [sources.ebpf]: {e}") from None
                res.applied.append("sources.ebpf")
            else:
                res.restart_needed += [f"sources.ebpf.{k}" for k in _changed(old.ebpf, new.ebpf)]

        # From here on nothing fails.
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
            res.applied.append("log.level")
        if new.sampler != old.sampler:
            agent.sampler.set_rules(new.sampler.ratio, TailRules.from_config(new.sampler))
            res.applied.append("sampler")
        if new.memory != old.memory:
            self._apply_memory(new)
            res.applied.append("memory")
        if uplink_keys:
            restart = [k for k in uplink_keys if k in _UPLINK_RESTART]
            res.restart_needed += [f"uplink.{k}" for k in restart]
            live = dataclasses.replace(new.uplink, **{k: getattr(old.uplink, k) for k in restart})
            res.uplink_changed = agent.uplink.reconfigure(live)
            res.applied.append("uplink")
        for section, name in (("mqtt", "sources.mqtt"), ("otlp", "sources.otlp"), ("assembler", "assembler"),
                              ("metrics", "metrics")):
            if getattr(new, section) != getattr(old, section):
                res.restart_needed += [f"{name}.{k}" for k in _changed(getattr(old, section), getattr(new, section))]
        agent.cfg = new
        log.info("config applied: live=%s restart_needed=%s", ",".join(res.applied) or "-",
                 ",".join(res.restart_needed) or "-")
        return res

    def _apply_memory(self, new: Config) -> None:
        mem = new.memory
        # Every part is planned again.
        self.agent.governor.set_budget(mem.limit, mem.baseline, mem.check_interval, mem.keep_floor)

    async def wait_uplink(self, grace: float) -> bool:
        """True once the uplink is reached (a probe connects, or a batch is acknowledged) within `grace` seconds."""
        up = self.agent.uplink
        sent0 = up.stats.batches_sent
        deadline = time.monotonic() + grace
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if up.stats.batches_sent > sent0:
                return True
            try:
                err = await asyncio.wait_for(self.probe(up.cfg, up.node_id), timeout=max(0.1, min(5.0, left)))
            except asyncio.TimeoutError:
                err = f"no answer within {min(5.0, left):.1f}s"
            if not err:
                return True
            self.last_probe_error = err
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
