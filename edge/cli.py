"""The `helix` command: a thin layer over the library (agent, gateway, demo, doctor, config check)."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from . import __version__
from .config import Config, load_config
from .config.reader import Section, settings_of
from .errors import HelixError

__all__ = ["main"]

log = logging.getLogger("helix")

_DESCRIPTION = """\
Helix Edge: an edge tracing appliance. The agent (`helix run`) turns kernel events (eBPF) and
spans from devices (CBOR over MQTT) and local apps (OTLP on 4317/4318) into one trace, samples it
and ships it upstream as zstd-compressed CBOR; the gateway (`helix gateway`) turns that back into
standard OTLP for any backend (Collector, Jaeger, Tempo).
"""

_EPILOG = """\
examples:
  helix demo --duration 20            trace a local workload end to end and print the trees
  helix run --config /etc/helix/agent.toml
  helix gateway --config gateway.toml
  helix check-config agent.toml        validate a file before shipping it to a fleet
  helix doctor                         can the kernel probes run here? what to fix if not
  helix doctor --cost                  what the running agent's probes cost in the kernel, per program

Without --config every setting has a default: a node runs with no file at all.
"""


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _run_until_signal(make: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await make(stop)

    try:
        asyncio.run(runner())
    except HelixError as e:
        log.error("%s", e)
        return 1
    return 0


def _load(path: str | None) -> Config:
    return load_config(path)


def cmd_run(args: argparse.Namespace) -> int:
    """`helix run`: the node agent."""
    cfg = _load(args.config)
    _setup_logging(args.log_level or cfg.log_level)
    from .runtime.ssl_deferral import ssl_deferred

    if ssl_deferred():
        log.info("TLS not loaded: the config has no mqtts://, https:// or [fleet] (saves ~4 MiB of memory)")
    from .runtime.privileges import cap_list, switched

    user = switched()
    if user is not None:
        if user.stayed_root_because:
            log.warning("running as root: %s; keeping %s (%s)", user.stayed_root_because, cap_list(user.kept),
                        user.why)
        else:
            log.info("running as user %s (uid %d) with %s (%s)", user.user, user.uid, cap_list(user.kept), user.why)
    allocator = os.environ.get("PYTHONMALLOC")
    if allocator == "malloc":
        log.info("objects on glibc's malloc, heap trimmed every 2 s: memory a burst took goes back")
    elif allocator:
        log.info("PYTHONMALLOC=%s: memory a burst took may stay resident (unset it to let helix run choose)",
                 allocator)
    else:
        log.info("CPython's allocator (the C library is not glibc): memory a burst took may stay resident")
    from .agent import Agent
    from .runtime.allocator import limit_arenas
    limit_arenas()  # before any thread: grpcio, paho and the thread pool each allocate
    return _run_until_signal(lambda stop: Agent(cfg).run(stop))


# The gateway is a process of its own built on the uplink (uplink/gateway/): the CLI reaches it by name, so that
# nothing in edge/ depends on it.
GATEWAY_ENTRY = "uplink.gateway.server:serve_gateway"


def entry_point(spec: str) -> Callable[..., Any]:
    """The callable named by 'module:attribute', imported now."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def cmd_gateway(args: argparse.Namespace) -> int:
    """`helix gateway`: the central gateway."""
    cfg = _load(args.config)
    _setup_logging(args.log_level or cfg.log_level)
    try:
        serve_gateway = entry_point(GATEWAY_ENTRY)
    except ImportError as e:  # a node's install: the gateway's dependencies are an extra
        log.error("helix gateway needs %s, which this installation lacks: pip install 'helix-edge[gateway]'", e.name)
        return 2
    return _run_until_signal(lambda stop: serve_gateway(cfg, stop))


def _describe(cfg: Config) -> list[str]:
    lines: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not isinstance(value, Section):
            lines.append(f"  {f.name} = {value}")
            continue
        for s in settings_of(value):  # what the file can set, not the bounds the agent derives at run time
            v = getattr(value, s.name)
            if s.name in ("password", "token") and v:
                v = "********"
            lines.append(f"  {f.name}.{s.name} = {v}")
    return lines


def cmd_check_config(args: argparse.Namespace) -> int:
    """`helix check-config FILE`: validate and print the effective settings."""
    try:
        cfg = load_config(args.file)
    except HelixError as e:
        print(f"{args.file}: INVALID: {e}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    if args.verbose:
        print("\n".join(_describe(cfg)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`helix demo`: a local workload traced end to end."""
    _setup_logging(args.log_level or "warning")
    from .demo.run import run_demo
    try:
        return asyncio.run(run_demo(duration=args.duration, out=Path(args.out) if args.out else None,
                                    keep_logs=args.keep_logs))
    except HelixError as e:
        print(f"helix demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The trees were piped into `head` or a pager that closed early: not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """`helix doctor`: check what the kernel probes need."""
    _setup_logging(args.log_level or "warning")
    if args.cost:
        from .doctor import main_doctor_cost
        return main_doctor_cost(args.seconds, args.pid)
    from .doctor import main_doctor
    return main_doctor(args.config)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so tests and docs can inspect it)."""
    p = argparse.ArgumentParser(prog="helix", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"helix {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, func: Callable[[argparse.Namespace], int], description: str = "") -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=description or help_,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        sp.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="override log.level from the config")
        return sp

    sp = add("run", "run the node agent (sources -> assembler -> sampler -> uplink)", cmd_run,
             "Run the node agent until SIGINT/SIGTERM. It listens for OTLP on 127.0.0.1:4317 (gRPC) and\n"
             "127.0.0.1:4318 (HTTP), subscribes to SDK span topics (helix/sdk/+/spans), loads the kernel\n"
             "probes where the kernel allows (otherwise it runs on SDK spans alone and says why), and sends\n"
             "batches to the uplink. On stop it flushes everything it accepted.\n\n"
             "Batches are uplink format 4 by default (uplink.format): the node learns table sets from its own\n"
             "recent spans every uplink.learn_interval (10m), adopts one only when it saves more than its\n"
             "message, and publishes it retained on uplink.tables_topic (helix/uplink-tables/<node>/<id>) or,\n"
             "over HTTP, to the gateway before the first batch naming it.")
    sp.add_argument("--config", "-c", metavar="FILE", help="TOML configuration (default: built-in defaults)")

    sp = add("gateway", "run the central gateway (uplink batches -> OTLP)", cmd_gateway,
             "Run the gateway: receive batches from nodes over MQTT (topic helix/uplink/+, or a shared\n"
             "subscription when gateway.share_group is set) and HTTP (POST /v1/batches), decode them and\n"
             "export standard OTLP to gateway.export_endpoint over gRPC or HTTP, retrying while the\n"
             "backend is unavailable.\n\n"
             "A format-3 batch names the table set it was encoded with: the gateway caches sets by id\n"
             "(gateway.table_cache_sets, table_cache_bytes), fetches a missing one from the node's retained\n"
             "topic (gateway.tables_topic) or, over HTTP, answers 409 for the node to PUT /v1/tables/<id>;\n"
             "a batch whose set it cannot get (within gateway.table_wait) is never exported: it stays with\n"
             "its node.")
    sp.add_argument("--config", "-c", metavar="FILE", help="TOML configuration with a [gateway] section")

    sp = add("check-config", "validate a configuration file", cmd_check_config,
             "Validate a TOML configuration. Exit 0 when valid; otherwise print the key and the problem\n"
             "and exit 2. Unknown keys are errors, so typos do not silently fall back to defaults.")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--verbose", "-v", action="store_true", help="print every effective setting")

    sp = add("demo", "trace a local workload end to end and print the trace trees", cmd_demo,
             "Start a private Mosquitto on a free port, the gateway, the agent and an OTLP peer; run an\n"
             "app instrumented with the OpenTelemetry Python SDK and a simulated device publishing SDK\n"
             "spans over MQTT that continue the app's traces; print each received trace as a tree.\n"
             "Runs until Ctrl-C, or for --duration seconds.")
    sp.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                    help="stop after this many seconds (default: run until Ctrl-C)")
    sp.add_argument("--out", metavar="PATH", default=None,
                    help="write the OTLP received by the peer as JSON lines here (default: a temp file)")
    sp.add_argument("--keep-logs", action="store_true", help="print where the component logs are kept")

    sp = add("doctor", "check whether the kernel probes can run here, and how to fix what is missing", cmd_doctor,
             "Check BTF, bpf() permission, tracefs and every tracepoint the probes use, ring-buffer\n"
             "support and locked-memory limits, then load and attach the probes once. Exit 0 when every\n"
             "probe can load here, 1 otherwise.\n\n"
             "With --cost, measure instead what the probes of the running agent cost in the kernel: BPF\n"
             "run-time statistics are turned on for --seconds (then off again, whatever the sysctl says)\n"
             "and each program's runs per second, ns per run and CPU time are printed. Exit 1 when no\n"
             "running agent holds the probes.")
    sp.add_argument("--config", "-c", metavar="FILE", help="TOML configuration (probe settings)")
    sp.add_argument("--cost", action="store_true", help="measure the running agent's probes in the kernel (root)")
    sp.add_argument("--seconds", type=float, default=5.0, metavar="S",
                    help="with --cost: how long to measure (default 5)")
    sp.add_argument("--pid", type=int, default=None, help="with --cost: the agent's pid (default: every process "
                    "holding the probes)")

    from .fleet.cli import add_fleet_commands  # helix fleet keygen|push|status|acl
    add_fleet_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `helix` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except HelixError as e:
        print(f"helix: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
