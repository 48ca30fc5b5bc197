"""Entry point of the `helix` command: decides what to load before the CLI imports asyncio."""
from __future__ import annotations

import sys

__all__ = ["main"]


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _prepare_agent(argv: list[str]) -> None:
    from .libc_malloc import use_libc_malloc

    use_libc_malloc()  # first: it starts this process again, and nothing done before would survive
    from .config import load_config
    from .errors import HelixError
    from .ssl_deferral import defer_ssl

    try:
        cfg = load_config(_config_path(argv))
    except HelixError:
        return  # the CLI reports it
    if not cfg.agent_may_use_tls():
        defer_ssl()


def _drop_root() -> None:
    from .errors import HelixError
    from .privileges import switch_user_from_env

    try:
        switch_user_from_env()
    except (HelixError, OSError) as e:
        print(f"helix: cannot switch to $HELIX_USER: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> int:
    """Run the `helix` command."""
    argv = sys.argv[1:]
    if argv[:1] == ["run"]:
        _prepare_agent(argv[1:])
    if argv[:1] in (["run"], ["doctor"]):
        _drop_root()  # after the allocator's restart: the process that runs is the one that drops root
    from .cli import main as cli_main

    return cli_main()
