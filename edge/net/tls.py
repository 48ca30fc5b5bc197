"""TLS settings for every MQTT connection the agent and gateway make (SDK source, uplink, gateway, fleet).

One helper so that all four connect the same way: `mqtts://` turns TLS on, `ca_file` pins the CA (else the
system store), and `cert_file`/`key_file` present a per-node client certificate, which a broker configured
with `use_identity_as_username true` turns into the MQTT user name its ACLs key on (docs/security.md).
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..runtime.ssl_deferral import require_ssl

if TYPE_CHECKING:
    import ssl

__all__ = ["mqtt_ssl_context", "ssl_context", "check_tls_files"]

log = logging.getLogger(__name__)
_warned: set[str] = set()


def check_tls_files(cfg: Any, section: str = "") -> None:
    """Raise ConfigError naming the key when a configured CA, certificate or key file cannot be read."""
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(cfg, name, "") or ""
        if path and not os.access(path, os.R_OK):
            key = f"{section}.{name}" if section else name
            problem = "does not exist" if not os.path.exists(path) else "is not readable by this user"
            raise ConfigError(key, f"{path} {problem}")
    if getattr(cfg, "key_file", "") and not getattr(cfg, "cert_file", ""):
        raise ConfigError(f"{section}.key_file" if section else "key_file", "set without cert_file")


def _wants_tls(cfg: Any, section: str) -> bool:
    if not cfg.broker.tls:
        if (getattr(cfg, "cert_file", "") or getattr(cfg, "ca_file", "")) and section not in _warned:
            _warned.add(section)
            log.warning("%s: ca_file/cert_file are set but broker %s is not mqtts://; connecting without TLS",
                        section or "mqtt", cfg.broker)
        return False
    return True


def mqtt_ssl_context(cfg: Any, section: str = "") -> ssl.SSLContext | None:
    """The SSLContext for the agent's MQTT client (edge.net.mqtt_client) for a config section; None for mqtt://."""
    return ssl_context(cfg, section) if _wants_tls(cfg, section) else None


def ssl_context(cfg: Any, section: str = "") -> ssl.SSLContext:
    """A client SSLContext (server verified, client certificate if configured), e.g. for HTTPS uplink with mTLS."""
    require_ssl(f"[{section}]" if section else "a TLS connection")
    import ssl  # here: a node without TLS does not need OpenSSL mapped in

    check_tls_files(cfg, section)
    ctx = ssl.create_default_context(cafile=getattr(cfg, "ca_file", "") or None)
    if getattr(cfg, "cert_file", ""):
        ctx.load_cert_chain(cfg.cert_file, getattr(cfg, "key_file", "") or None)
    return ctx
