"""Signed configuration documents (sans-I/O): build, sign, verify, and the Ed25519 keys that do it.

A document is a JSON object; the signature covers the canonical JSON of every other member, so the node
checks exactly what the operator signed, target included (a node's document cannot be replayed on another
node's topic). Format and rules: docs/fleet.md.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import HelixError, describe

__all__ = [
    "FORMAT",
    "DocumentError",
    "ConfigDocument",
    "canonical_bytes",
    "sign_document",
    "verify_document",
    "key_id",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "public_key_b64",
]

FORMAT = "helix-config/1"
_DOMAIN = b"helix-config/1\n"  # signatures over these bytes cannot be mistaken for any other Ed25519 use
MAX_DEPTH = 32  # JSON nesting a document may have; configs are a few tables deep
_FORBIDDEN = ("node", "fleet")  # identity and trust anchors stay local: a document cannot move or re-key a node


class DocumentError(HelixError):
    """A configuration document was refused: unsigned, badly signed, stale, malformed or for someone else."""


@dataclass(slots=True, frozen=True)
class ConfigDocument:
    """A verified document."""

    target: str  # "group/<group>" or "node/<node-id>"
    version: int
    issued_at: int  # Unix seconds
    key_id: str
    config: dict[str, Any]


def canonical_bytes(doc: dict[str, Any]) -> bytes:
    """The bytes the signature covers: sorted-key compact JSON of every member but `signature`."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                allow_nan=False).encode("utf-8")


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key (first 16 hex digits of SHA-256 of its raw bytes)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_document(config: dict[str, Any], target: str, version: int, key: Ed25519PrivateKey,
                  issued_at: int | None = None) -> dict[str, Any]:
    """A signed document (as a JSON-ready dict) carrying `config` (the TOML tables) for `target`."""
    _check_target(target)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DocumentError(f"version must be a whole number >= 1, got {version!r}")
    _check_config(config)
    doc: dict[str, Any] = {"format": FORMAT, "target": target, "version": version,
                           "issued_at": int(time.time() if issued_at is None else issued_at),
                           "key_id": key_id(key.public_key()), "config": config}
    doc["signature"] = base64.b64encode(key.sign(canonical_bytes(doc))).decode("ascii")
    return doc


def verify_document(payload: bytes, trusted: list[Ed25519PublicKey], expect_target: str,
                    max_bytes: int = 256 * 1024) -> ConfigDocument:
    """Parse and verify a published document; DocumentError says why one is refused (and nothing else is raised)."""
    try:
        return _verify(payload, trusted, expect_target, max_bytes)
    except DocumentError:
        raise
    except Exception as e:  # noqa: BLE001 - a document from the broker is refused, never the node stopped
        raise DocumentError(f"malformed document ({type(e).__name__})") from None


def _verify(payload: bytes, trusted: list[Ed25519PublicKey], expect_target: str, max_bytes: int) -> ConfigDocument:
    if len(payload) > max_bytes:
        raise DocumentError(f"document is {len(payload)} bytes, over fleet.max_document ({max_bytes})")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except RecursionError:
        raise DocumentError(f"not a JSON document: nested deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise DocumentError(f"not a JSON document: {describe(str(e), 120)}") from None
    if not isinstance(doc, dict):
        raise DocumentError("not a JSON object")
    # Before anything walks it: encoding the signed bytes and checking the values recurse once per level.
    _check_depth(doc)
    if doc.get("format") != FORMAT:
        raise DocumentError(f"unknown format {describe(doc.get('format'))} (expected {FORMAT!r})")
    sig_b64 = doc.get("signature")
    if not isinstance(sig_b64, str) or not sig_b64:
        raise DocumentError("unsigned document")
    try:
        sig = base64.b64decode(sig_b64, validate=True)
        body = canonical_bytes(doc)
    except (binascii.Error, ValueError, TypeError) as e:
        raise DocumentError(f"malformed document: {e}") from None
    kid = doc.get("key_id")
    # Try the named key first, but any trusted key that verifies is accepted (key_id is advisory, not signed trust).
    ordered = sorted(trusted, key=lambda k: key_id(k) != kid)
    for public in ordered:
        try:
            public.verify(sig, body)
            break
        except InvalidSignature:
            continue
    else:
        raise DocumentError(f"bad signature (key_id {describe(kid)} is not a trusted key, or the document was altered)")
    target, version, issued, config = doc.get("target"), doc.get("version"), doc.get("issued_at"), doc.get("config")
    if target != expect_target:
        raise DocumentError(f"document is for {describe(target)}, published on the topic of {expect_target!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DocumentError(f"version must be a whole number >= 1, got {describe(version)}")
    if isinstance(issued, bool) or not isinstance(issued, int):
        raise DocumentError(f"issued_at must be Unix seconds, got {describe(issued)}")
    _check_config(config)
    return ConfigDocument(target, version, issued, str(kid), config)


def _check_depth(doc: Any) -> None:
    """Refuse a document nested deeper than MAX_DEPTH (a config is a few tables deep), without recursing."""
    level: list[Any] = [doc]
    for _ in range(MAX_DEPTH):
        level = [v for x in level for v in (x.values() if isinstance(x, dict) else x) if isinstance(v, (dict, list))]
        if not level:
            return
    raise DocumentError(f"document nested deeper than {MAX_DEPTH} levels")


def _check_target(target: str) -> None:
    kind, _, name = target.partition("/")
    if kind not in ("group", "node") or not name or "/" in name or "+" in name or "#" in name:
        raise DocumentError(f"target must be 'group/<group>' or 'node/<node-id>', got {target!r}")


def _check_config(config: Any) -> None:
    if not isinstance(config, dict):
        raise DocumentError("config must be a table")
    for name in _FORBIDDEN:
        if name in config:
            raise DocumentError(f"[{name}] cannot be set remotely (node identity and trusted keys stay in the local file)")
    _check_json_values(config, "config")


def _check_json_values(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise DocumentError(f"{where}: keys must be strings")
            _check_json_values(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_values(v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise DocumentError(f"{where}: {value} cannot be carried")
    elif not isinstance(value, (str, int, float, bool)):
        raise DocumentError(f"{where}: {type(value).__name__} values cannot be carried (use strings, numbers, booleans)")


# ------------------------------------------------------------------------------------------------ keys


def generate_keypair(out: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to OUT (PEM, mode 0600) and its public key to OUT.pub (base64 raw)."""
    out = Path(out)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if out.exists():
        raise HelixError(f"{out} exists; refusing to overwrite a key")
    out.touch(mode=0o600)
    out.write_bytes(pem)
    pub = out.with_name(out.name + ".pub")
    pub.write_text(public_key_b64(key.public_key()) + "\n")
    return out, pub


def public_key_b64(public: Ed25519PublicKey) -> str:
    """The 32 raw public-key bytes in base64 (the form `fleet.trusted_keys` takes inline)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read an operator's Ed25519 private key (PEM, as written by `helix fleet keygen`)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise HelixError(f"cannot read the signing key {path}: {e.strerror or e}") from None
    except (ValueError, TypeError) as e:
        raise HelixError(f"{path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise HelixError(f"{path} is not an Ed25519 key (make one with `helix fleet keygen`)")
    return key


def load_public_key(spec: str) -> Ed25519PublicKey:
    """A trusted key from `fleet.trusted_keys`: base64 of the 32 raw bytes, or a file holding that or a PEM key."""
    text = spec.strip()
    p = Path(text)
    if _raw_key(text) is None:
        try:
            text = p.read_text().strip()
        except OSError as e:
            raise HelixError(f"trusted key {spec!r} is neither base64 of a 32-byte Ed25519 public key nor a readable "
                             f"key file ({e.strerror or e})") from None
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as e:
            raise HelixError(f"trusted key {spec} is not a PEM public key: {e}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise HelixError(f"trusted key {spec} is not an Ed25519 key")
        return key
    raw = _raw_key(text)
    if raw is None:
        raise HelixError(f"trusted key {spec!r} is neither base64 of a 32-byte Ed25519 public key nor a readable key file")
    return Ed25519PublicKey.from_public_bytes(raw)


def _raw_key(text: str) -> bytes | None:
    # Base64 of 32 bytes is exactly 44 characters ending in '='; it may contain '/', so it is tried before paths.
    if len(text) != 44:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None
