"""TLS for every connection the agent and gateway open (SDK source, uplink over MQTT or HTTPS, gateway, fleet).

One frozen `TlsSettings` per config section, so that all of them connect the same way: `ca_file` pins the CA (else
the system store), and `cert_file`/`key_file` present a per-node client certificate, which a broker configured
with `use_identity_as_username true` turns into the MQTT user name its ACLs key on (docs/security.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..runtime.ssl_deferral import require_ssl

if TYPE_CHECKING:
    import ssl

__all__ = ["TlsSettings"]


@dataclass(slots=True, frozen=True)
class TlsSettings:
    """The TLS files of one config section; `section` names it in errors (e.g. "uplink.ca_file")."""

    ca_file: str = ""  # CA bundle to trust; "" = the system store
    cert_file: str = ""  # client certificate (PEM), for brokers and gateways that authenticate nodes by certificate
    key_file: str = ""
    section: str = ""

    @property
    def configured(self) -> bool:
        """Whether a CA or a client certificate is set."""
        return bool(self.ca_file or self.cert_file)

    def key(self, name: str) -> str:
        """The config key of setting `name`, for error messages."""
        return f"{self.section}.{name}" if self.section else name

    def check_files(self) -> None:
        """Raise ConfigError naming the key when a configured CA, certificate or key file cannot be read."""
        for name, path in (("ca_file", self.ca_file), ("cert_file", self.cert_file), ("key_file", self.key_file)):
            if path and not os.access(path, os.R_OK):
                problem = "does not exist" if not os.path.exists(path) else "is not readable by this user"
                raise ConfigError(self.key(name), f"{path} {problem}")
        if self.key_file and not self.cert_file:
            raise ConfigError(self.key("key_file"), "set without cert_file")

    def context(self) -> ssl.SSLContext:
        """A client SSLContext: the server verified, the client certificate presented if configured."""
        require_ssl(f"[{self.section}]" if self.section else "a TLS connection")
        import ssl  # here: a node without TLS does not need OpenSSL mapped in

        self.check_files()
        ctx = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file or None)
        return ctx
