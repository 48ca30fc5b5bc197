"""`helix fleet ...`: operator commands over the library (keygen, push, status, acl)."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from ..config import BrokerAddress, load_config
from .config import FleetConfig
from ..errors import ConfigError, HelixError

__all__ = ["add_fleet_commands", "push", "collect_status", "format_status"]


def _conn(args: argparse.Namespace) -> FleetConfig:
    """Broker settings: [fleet] of --config, then the flags."""
    cfg = load_config(args.config).fleet if args.config else FleetConfig()
    changes: dict[str, Any] = {}
    if args.broker:
        changes["broker"] = BrokerAddress.parse(args.broker, "--broker")
    for flag, name in (("username", "username"), ("password", "password"), ("ca_file", "ca_file"),
                       ("cert_file", "cert_file"), ("tls_key_file", "key_file")):
        if getattr(args, flag):
            changes[name] = getattr(args, flag)
    if not args.password and os.environ.get("HELIX_FLEET_PASSWORD"):
        changes["password"] = os.environ["HELIX_FLEET_PASSWORD"]
    return dataclasses.replace(cfg, **changes)


def _client_id(what: str) -> str:
    return f"helix-{what}-{os.getpid()}-{int(time.time() * 1000) % 100000}"


async def _retained(client: Any, topic: str, wait: float) -> bytes | None:
    await client.subscribe(topic, qos=1)
    try:
        async with asyncio.timeout(wait):
            async for message in client.messages:
                if str(message.topic) == topic:
                    return message.payload if isinstance(message.payload, bytes) else None
    except TimeoutError:
        return None
    return None


async def push(conn: FleetConfig, file: str | Path, key_path: str | Path, target: str,
               version: int | None = None, wait: float = 1.5) -> dict[str, Any]:
    """Validate FILE, sign it for `target` ("group/G" or "node/N") and publish it retained; returns the document."""
    from ..config import parse_config
    from ._mqtt import group_topic, make_client, node_topic, publish_checked
    from .document import load_private_key, sign_document

    path = Path(file)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise HelixError(f"cannot read {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("(file)", f"{path} is not valid TOML: {e}") from None
    parse_config(data)  # a document must be a valid config on its own; nodes check it again merged
    key = load_private_key(key_path)
    kind, _, name = target.partition("/")
    topic = group_topic(name) if kind == "group" else node_topic(name)
    async with make_client(conn, _client_id("fleet-push")) as client:
        current = await _retained(client, topic, wait)
        old = 0
        if current:
            try:
                old = int(json.loads(current).get("version", 0))
            except Exception:  # noqa: BLE001 - whatever is retained there (nested past recursion...), it is replaced
                old = 0
        if version is None:
            version = old + 1
        elif version <= old:
            raise HelixError(f"{target} already has version {old} published; nodes refuse {version} "
                             f"(use --version {old + 1} or more)")
        doc = sign_document(data, target, version, key)
        await publish_checked(client, topic, json.dumps(doc, separators=(",", ":")).encode(), retain=True)
    return doc


async def collect_status(conn: FleetConfig, wait: float = 1.5, watch: bool = False,
                         on_update: Any = None) -> dict[str, dict[str, Any]]:
    """Read the retained status of every node (for `wait` seconds, or forever with `watch`)."""
    from ._mqtt import STATUS_FILTER, make_client

    nodes: dict[str, dict[str, Any]] = {}
    async with make_client(conn, _client_id("fleet-status")) as client:
        await client.subscribe(STATUS_FILTER, qos=1)
        try:
            async with asyncio.timeout(None if watch else wait):
                async for message in client.messages:
                    try:
                        st = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    except Exception:  # noqa: BLE001 - a node's status (nested past recursion...) is skipped
                        continue
                    if isinstance(st, dict) and isinstance(st.get("node"), str):
                        nodes[st["node"]] = st
                        if on_update is not None:
                            on_update(st)
        except TimeoutError:
            pass
    return nodes


def _age(ts: Any, now: float) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    s = max(0, int(now - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def format_status(nodes: dict[str, dict[str, Any]], now: float | None = None) -> str:
    """A table: node, group, state, config versions, config state, health, last seen, last error."""
    now = time.time() if now is None else now
    rows = [("NODE", "GROUP", "STATE", "CONFIG", "APPLY", "SPANS", "DROPPED", "KERNEL", "LAST SEEN", "LAST ERROR")]
    for node in sorted(nodes):
        st = nodes[node]
        ver = st.get("config_version") or {}
        h = st.get("health") or {}
        rows.append((node, str(st.get("group", "")), str(st.get("state", "")),
                     f"g{ver.get('group', 0)} n{ver.get('node', 0)}" if ver else "-",
                     str(st.get("config_state", "-")), str(h.get("spans_accepted", "-")),
                     str(h.get("spans_dropped", "-")), str(h.get("kernel", "-")), _age(st.get("ts"), now),
                     str(st.get("last_error", ""))[:80]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# ------------------------------------------------------------------------------------------------ commands


def cmd_keygen(args: argparse.Namespace) -> int:
    """`helix fleet keygen OUT`."""
    from .document import generate_keypair, key_id, load_private_key

    priv, pub = generate_keypair(args.out)
    print(f"private key {priv} (keep it off the devices), public key {pub} "
          f"(key_id {key_id(load_private_key(priv).public_key())}): add it to fleet.trusted_keys")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """`helix fleet push`."""
    target = f"group/{args.group}" if args.group else f"node/{args.node}"
    doc = asyncio.run(push(_conn(args), args.file, args.key, target, args.version))
    print(f"published {target} version {doc['version']} (key_id {doc['key_id']}), retained")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """`helix fleet status`."""
    conn = _conn(args)
    if args.watch:
        def line(st: dict[str, Any]) -> None:
            print(format_status({st["node"]: st}).splitlines()[1], flush=True)
        print(format_status({}), flush=True)
        try:
            asyncio.run(collect_status(conn, watch=True, on_update=line))
        except KeyboardInterrupt:
            pass
        return 0
    nodes = asyncio.run(collect_status(conn, wait=args.wait))
    if args.json:
        print(json.dumps(nodes, indent=2, sort_keys=True))
    else:
        print(format_status(nodes))
    return 0


def cmd_acl(args: argparse.Namespace) -> int:
    """`helix fleet acl INVENTORY`: lines of 'node-id group'."""
    from .acl import render_acl

    nodes: dict[str, str] = {}
    for n, raw in enumerate(Path(args.inventory).read_text().splitlines(), 1):
        parts = raw.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) != 2:
            raise HelixError(f"{args.inventory}:{n}: expected 'node-id group', got {raw!r}")
        nodes[parts[0]] = parts[1]
    try:
        sys.stdout.write(render_acl(nodes, args.operator or ["operator"], args.gateway or ["gateway"]) + "\n")
    except ValueError as e:
        raise HelixError(str(e)) from None
    return 0


def _conn_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("broker connection (defaults: [fleet] of --config)")
    g.add_argument("--config", "-c", metavar="FILE", help="TOML file whose [fleet] section has the broker settings")
    g.add_argument("--broker", metavar="URL", help="mqtt://host:1883 or mqtts://host:8883")
    g.add_argument("--username")
    g.add_argument("--password", help="(or HELIX_FLEET_PASSWORD in the environment)")
    g.add_argument("--ca-file", metavar="PEM", help="CA bundle that signed the broker's certificate")
    g.add_argument("--cert-file", metavar="PEM", help="client certificate (its CN is the MQTT user name)")
    g.add_argument("--tls-key-file", metavar="PEM", help="private key of --cert-file")


def add_fleet_commands(sub: Any) -> None:
    """Add `helix fleet {keygen,push,status,acl}` to the top-level subparsers."""
    fp = sub.add_parser("fleet", help="operate a fleet: signed remote config, node status",
                        description="Signed configuration over MQTT and fleet status (docs/fleet.md).",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = fp.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    fp.set_defaults(func=lambda a: (fp.print_help(), 2)[1])

    sp = fsub.add_parser("keygen", help="make an Ed25519 signing keypair (OUT and OUT.pub)")
    sp.add_argument("out", metavar="OUT")
    sp.set_defaults(func=cmd_keygen)

    sp = fsub.add_parser("push", help="validate, sign and publish a config document (retained, QoS 1)",
                         description="Validate FILE like check-config, sign it with --key and publish it on\n"
                                     "helix/config/group/G or helix/config/node/N. Nodes apply it live, or refuse\n"
                                     "it and say why on their status topic. The version defaults to the\n"
                                     "published one + 1.", formatter_class=argparse.RawDescriptionHelpFormatter)
    who = sp.add_mutually_exclusive_group(required=True)
    who.add_argument("--group", metavar="G")
    who.add_argument("--node", metavar="N")
    sp.add_argument("file", metavar="FILE", help="TOML config document (no [node] or [fleet] sections)")
    sp.add_argument("--key", required=True, metavar="KEY", help="operator private key (helix fleet keygen)")
    sp.add_argument("--version", type=int, default=None, metavar="V", help="document version (must grow)")
    _conn_flags(sp)
    sp.set_defaults(func=cmd_push)

    sp = fsub.add_parser("status", help="list nodes: state, config version, health, last seen")
    sp.add_argument("--watch", action="store_true", help="keep printing updates until Ctrl-C")
    sp.add_argument("--wait", type=float, default=1.5, metavar="S", help="how long to collect retained status")
    sp.add_argument("--json", action="store_true", help="print the status documents as JSON")
    _conn_flags(sp)
    sp.set_defaults(func=cmd_status)

    sp = fsub.add_parser("acl", help="print a Mosquitto ACL file for an inventory of 'node-id group' lines")
    sp.add_argument("inventory", metavar="INVENTORY")
    sp.add_argument("--operator", action="append", metavar="USER", help="operator user (repeatable)")
    sp.add_argument("--gateway", action="append", metavar="USER", help="gateway user (repeatable)")
    sp.set_defaults(func=cmd_acl)
