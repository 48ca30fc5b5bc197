from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import HelixError
from edge.fleet.document import (DocumentError, generate_keypair, load_private_key, load_public_key,
                                 public_key_b64, sign_document, verify_document)

CONFIG = {"sampler": {"ratio": 0.25}, "uplink": {"batch_max_spans": 128}}


def _bytes(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def test_signed_document_verifies_with_the_trusted_key() -> None:
    key = Ed25519PrivateKey.generate()
    doc = sign_document(CONFIG, "group/plant-3", 7, key, issued_at=1700000000)
    got = verify_document(_bytes(doc), [key.public_key()], "group/plant-3")
    assert (got.version, got.target, got.issued_at, got.config) == (7, "group/plant-3", 1700000000, CONFIG)


def test_any_trusted_key_may_sign() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    doc = sign_document(CONFIG, "node/gw-1", 1, b)
    assert verify_document(_bytes(doc), [a.public_key(), b.public_key()], "node/gw-1").version == 1


@pytest.mark.parametrize("change", [
    lambda d: d["config"]["sampler"].__setitem__("ratio", 1.0),
    lambda d: d.__setitem__("version", 8),
    lambda d: d.__setitem__("issued_at", 1),
])
def test_altered_document_is_refused(change) -> None:
    key = Ed25519PrivateKey.generate()
    doc = sign_document(CONFIG, "group/plant-3", 7, key)
    change(doc)
    with pytest.raises(DocumentError, match="bad signature"):
        verify_document(_bytes(doc), [key.public_key()], "group/plant-3")


def test_untrusted_key_unsigned_and_wrong_target_are_refused() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    doc = sign_document(CONFIG, "node/gw-1", 3, other)
    with pytest.raises(DocumentError, match="bad signature"):
        verify_document(_bytes(doc), [key.public_key()], "node/gw-1")
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    with pytest.raises(DocumentError, match="unsigned"):
        verify_document(_bytes(unsigned), [other.public_key()], "node/gw-1")
    # A node's document replayed on another node's topic: the target is signed.
    with pytest.raises(DocumentError, match="is for 'node/gw-1'"):
        verify_document(_bytes(doc), [other.public_key()], "node/gw-2")


def test_identity_and_trust_cannot_be_set_remotely() -> None:
    key = Ed25519PrivateKey.generate()
    for section in ("node", "fleet"):
        with pytest.raises(DocumentError, match=f"\\[{section}\\] cannot be set remotely"):
            sign_document({section: {}}, "group/g", 1, key)


def test_oversized_and_garbage_payloads_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(DocumentError, match="over fleet.max_document"):
        verify_document(b"{" + b" " * 5000 + b"}", [key.public_key()], "group/g", max_bytes=4096)
    for junk in (b"\xff\xfe", b"[1,2]", b"not json", json.dumps({"format": "other"}).encode()):
        with pytest.raises(DocumentError):
            verify_document(junk, [key.public_key()], "group/g")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_the_verifier(data: bytes) -> None:
    key = Ed25519PrivateKey.generate()
    try:
        verify_document(data, [key.public_key()], "group/g")
    except DocumentError:
        pass


def test_keygen_writes_keys_every_loader_reads(tmp_path: Path) -> None:
    priv, pub = generate_keypair(tmp_path / "op.key")
    assert priv.stat().st_mode & 0o077 == 0
    key = load_private_key(priv)
    raw_b64 = pub.read_text().strip()
    assert public_key_b64(key.public_key()) == raw_b64
    for spec in (str(pub), raw_b64):
        doc = sign_document(CONFIG, "group/g", 1, key)
        verify_document(_bytes(doc), [load_public_key(spec)], "group/g")
    with pytest.raises(HelixError, match="exists"):
        generate_keypair(priv)
    with pytest.raises(HelixError, match="neither base64"):
        load_public_key(base64.b64encode(b"short").decode())


from tests.edge._hostile import deep_json, depths, values  # noqa: E402


def _text(value: object) -> str:
    # json.dumps refuses integers past 4,300 digits: write those as the digits a hostile publisher would send.
    if isinstance(value, bool) or value is None or isinstance(value, (float, str)):
        return json.dumps(value)
    if isinstance(value, int):
        return "9" * min(5000, max(1, value.bit_length() // 3))
    if isinstance(value, bytes):
        return json.dumps(value.hex())
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return "{" + ",".join(f"{json.dumps(str(k))}:{_text(v)}" for k, v in value.items()) + "}"  # type: ignore[union-attr]


@settings(max_examples=150, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["format", "target", "version", "issued_at", "key_id", "config",
                                               "signature"]), values, max_size=7),
       depth=depths)
def test_hostile_documents_are_refused_with_a_document_error(fields: dict, depth: int) -> None:
    key = Ed25519PrivateKey.generate()
    good = sign_document(CONFIG, "group/g", 1, key)
    for doc in ({**good, **fields}, {**good, "config": {"sampler": json.loads(deep_json(min(depth, 300)))}}):
        try:
            verify_document(_text(doc).encode(), [key.public_key()], "group/g")
        except DocumentError as e:
            assert len(str(e)) < 500
    with pytest.raises(DocumentError):
        verify_document(deep_json(200_000), [key.public_key()], "group/g")
