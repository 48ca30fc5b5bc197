"""The testbed's TLS and gRPC scenarios (bench/accuracy.py): the cleartext chains again over TLS and through gRPC.

- 11-tls-chain: scenario 2 (SDK → nginx → no SDK → SDK → no SDK) with every hop HTTPS: Python `ssl` servers, calls
  by `requests`, nginx with an `ssl` listener proxying to an HTTPS upstream; a self-signed certificate the bench
  makes. The kernel reads the plaintext at OpenSSL (uprobes).
- 11b-tls-mqtt: scenario 3 over mqtts: paho with TLS to a Mosquitto TLS listener, the subscriber calling db over
  HTTPS.
- 12-grpc-chain: SDK service → (grpcio, h2c, traceparent metadata) → uninstrumented grpcio server → HTTP call to db,
  four clients sharing the caller's one channel (concurrent streams on one connection).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from edge.demo.broker import Mosquitto, free_port

__all__ = ["make_cert", "nginx_listen", "tls_broker"]


def make_cert(d: Path) -> Path:
    """cert.pem/key.pem for 127.0.0.1 (self-signed, openssl's command line) in `d`; returns `d`."""
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    return d


def nginx_listen(port: int, tls_dir: Path | None) -> tuple[str, str]:
    """The listen directive(s) and the upstream scheme for nginx (an `ssl` listener and HTTPS upstream with TLS)."""
    if tls_dir is None:
        return f"listen 127.0.0.1:{port};", "http"
    return (f"listen 127.0.0.1:{port} ssl; ssl_certificate {tls_dir / 'cert.pem'}; "
            f"ssl_certificate_key {tls_dir / 'key.pem'};", "https")


def tls_broker(work: Path, tls_dir: Path) -> tuple[Mosquitto, int]:
    """A started Mosquitto with a TLS listener (the certificate of `tls_dir`, no client certificates); its TLS port."""
    port = free_port()
    # `user root`: the broker keeps the rights to read the bench's private directory instead of dropping to mosquitto
    extra = (f"user root\nlistener {port} 127.0.0.1\ncertfile {tls_dir / 'cert.pem'}\n"
             f"keyfile {tls_dir / 'key.pem'}\n")
    work.mkdir(parents=True, exist_ok=True)
    return Mosquitto(extra_conf=extra, workdir=work).start(), port
