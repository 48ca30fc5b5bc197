"""Entry point of the `helix` command: decides what to load before the CLI imports asyncio."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

__all__ = ["main"]


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _config(argv: list[str]) -> Config | None:
    from .config import load_config
    from .errors import HelixError

    try:
        return load_config(_config_path(argv))
    except HelixError:
        return None  # the CLI reports it


def _prepare_agent(argv: list[str]) -> Config | None:
    from .runtime.libc_malloc import use_libc_malloc

    use_libc_malloc()  # first: it starts this process again, and nothing done before would survive
    from .runtime.ssl_deferral import defer_ssl

    cfg = _config(argv)
    if cfg is not None and not cfg.agent_may_use_tls():
        defer_ssl()
    return cfg


def _drop_root(cfg: Config | None) -> None:
    from .errors import HelixError
    from .runtime.privileges import switch_user_from_env

    # The TLS uprobes are the one probe that needs CAP_SYS_ADMIN; a config that cannot be read is reported by the CLI
    # before anything is attached, so its default (TLS on) stands until then.
    uprobes = cfg is None or (cfg.ebpf.enabled != "off" and cfg.ebpf.tls)
    try:
        switch_user_from_env(uprobes=uprobes)
    except (HelixError, OSError) as e:
        print(f"helix: cannot switch to $HELIX_USER: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> int:
    """Run the `helix` command."""
    argv = sys.argv[1:]
    if argv[:1] == ["run"]:
        _drop_root(_prepare_agent(argv[1:]))  # after the allocator's restart: the process that runs drops root
    elif argv[:1] == ["doctor"]:
        _drop_root(_config(argv[1:]))
    from .cli import main as cli_main

    return cli_main()
