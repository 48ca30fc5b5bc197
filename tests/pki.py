"""A throwaway certificate authority made with `openssl` for tests: a CA, a server certificate for 127.0.0.1, and
one client certificate per name (CN = the name, as a node's certificate carries its node id)."""
from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

from edge.demo.broker import Mosquitto

__all__ = ["make_pki", "tls_mosquitto"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _cert(d: Path, name: str, cn: str, san: str = "") -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", str(ext), cwd=d)


def make_pki(d: Path, names: Iterable[str]) -> Path:
    """ca.pem, server.pem/.key (127.0.0.1, localhost) and <name>.pem/.key for each name, in `d`; returns `d`."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", "/CN=helix-test-ca", cwd=d)
    _cert(d, "server", "localhost", "IP:127.0.0.1,DNS:localhost")
    for cn in names:
        _cert(d, cn, cn)
    return d


def tls_mosquitto(workdir: Path, pki: Path, acl: Path, port: int) -> Mosquitto:
    """A Mosquitto on `port` that requires client certificates from `pki`, takes their CN as the user name and
    applies the ACL file `acl` (start it with `with`)."""
    # Run as root mosquitto drops to user "mosquitto", which cannot read pytest's private temp dirs.
    extra = (f"user root\nper_listener_settings false\nacl_file {acl}\n"
             f"listener {port} 127.0.0.1\ncafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\n"
             f"keyfile {pki / 'server.key'}\nrequire_certificate true\nuse_identity_as_username true\n")
    workdir.mkdir(exist_ok=True)
    return Mosquitto(extra_conf=extra, workdir=workdir)
