"""Who sent a batch, as the transport proves it: never the node id written inside the batch.

- MQTT: the topic level the broker's ACL binds to the publishing node (`pattern write helix/uplink/%u`, the user
  name being the node's certificate CN). Only as strong as that ACL: on a broker without it, anyone may publish
  anywhere (docs/security.md).
- HTTP: the CN of a verified client certificate (`gateway.http_client_ca_file`), else the node whose own token
  (`gateway.node_tokens`) the request carries. A shared `gateway.token`, or no authentication at all, proves no
  node: such batches are taken at their word, as before, and the gateway says so at start.

A batch whose inner node id is not the proven one is refused, and batches are deduplicated by (proven node, seq),
so no node can speak for another or shadow its sequence numbers.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from edge.config.uplink import GatewayConfig

__all__ = ["Identity", "HttpAuth", "UNPROVEN", "cert_common_name"]

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Identity:
    """The node a transport proves (`node`), or None when it proves none; `how` names the proof for logs."""

    node: str | None
    how: str

    def key(self, claimed: str) -> str:
        """The node a batch is deduplicated under: the proven one, else the one it claims."""
        return self.node if self.node is not None else claimed


UNPROVEN = Identity(None, "no authentication")


def cert_common_name(peercert: Any) -> str | None:
    """The subject CN of a certificate as `ssl.SSLSocket.getpeercert()` returns it (None if absent)."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and isinstance(value, str) and value:
                return value
    return None


class HttpAuth:
    """Decides who an HTTP request comes from, or that it may not send at all."""

    def __init__(self, cfg: GatewayConfig) -> None:
        # Looked up by digest: a dict probe on an attacker-chosen token would otherwise take longer the more of its
        # first bytes match a real one.
        self._by_digest = {_digest(token): node for node, token in cfg.node_tokens.items()}
        self._shared = cfg.token.encode() if cfg.token else None
        self._certs = bool(cfg.http_client_ca_file)
        self.open = not (self._by_digest or self._shared or self._certs)

    def warnings(self) -> list[str]:
        """What an operator should hear at start about nodes this gateway cannot tell apart."""
        out = []
        if self.open:
            out.append("HTTP uplink without authentication: any client that reaches it may send batches under any "
                       "node id (set gateway.node_tokens or gateway.http_client_ca_file)")
        elif self._shared is not None:
            out.append("gateway.token is shared by every node: a holder may send batches under any node id (give "
                       "each node its own token in gateway.node_tokens, then remove gateway.token)")
        return out

    def identify(self, authorization: str, peercert: Any) -> Identity | None:
        """The identity of a request with this Authorization header and peer certificate; None = refuse (401)."""
        cn = cert_common_name(peercert)
        if cn is not None:
            return Identity(cn, "client certificate")
        if self._certs:
            return None  # the TLS layer requires a certificate; a request without one never gets here
        token = authorization[7:] if authorization[:7].lower() == "bearer " else ""
        if token:
            node = self._by_digest.get(_digest(token))
            if node is not None:
                return Identity(node, "node token")
            if self._shared is not None and hmac.compare_digest(token.encode(), self._shared):
                return Identity(None, "shared token")
        return UNPROVEN if self.open else None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
