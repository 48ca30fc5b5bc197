"""Learned table sets: training within limits, content-hash ids, publication messages a gateway can trust."""
from __future__ import annotations

import hashlib

import cbor2
import pytest
import zstandard

from bench._workload import realistic_spans
from edge.errors import DecodeError
from uplink.wire import columnar, decode_batch
from uplink.wire.tables import TABLES_MAGIC, TableSet, TrainingLimits, message_id, parse_message

MAX = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def spans() -> list:
    return realistic_spans(400, seed=8)


@pytest.fixture(scope="module")
def tables(spans: list) -> TableSet:
    return columnar.learn(spans[:2000], node_id="node-3", created_ns=42)


def test_training_learns_what_repeats_and_leaves_what_does_not(tables: TableSet) -> None:
    assert "createOrder" in tables.names and "http.request.method" in tables.keys
    values = dict(zip(tables.keys, tables.values))
    assert "POST" in values["http.request.method"]
    # Customer ids repeat only inside one trace; the few that recur are worth less than the methods and tiers.
    assert len(values["customer.id"]) < len({s.attributes["customer.id"] for s in realistic_spans(400, seed=8)[:2000]
                                              if "customer.id" in s.attributes})
    assert tables.resources and tables.scopes and tables.shapes
    assert tables.zdict_kind in (1, 2) and 0 < len(tables.zdict) <= TrainingLimits().zdict_bytes


def test_limits_bound_the_tables(spans: list) -> None:
    small = TrainingLimits(zdict_bytes=2048, value_bytes=64, max_names=3, max_shapes=2, max_resources=1)
    t = columnar.learn(spans[:2000], small, node_id="n", created_ns=1)
    assert len(t.names) == 3 and len(t.shapes) <= 2 and len(t.resources) <= 1
    assert sum(len(v.encode()) + 1 for vals in t.values for v in vals) <= 64
    assert len(t.zdict) <= 2048


def test_the_id_is_the_content_hash_and_training_is_deterministic(spans: list, tables: TableSet) -> None:
    assert tables.id == hashlib.blake2b(tables.content, digest_size=32).digest()[:8] == message_id(tables.content)
    again = columnar.learn(spans[:2000], node_id="node-3", created_ns=42)
    assert again.id == tables.id
    assert columnar.learn(spans[:1999], node_id="node-3", created_ns=42).id != tables.id


def test_a_published_set_decodes_the_nodes_batches_on_another_process(spans: list, tables: TableSet) -> None:
    msg = tables.to_message()
    assert msg[:2] == TABLES_MAGIC
    fetched = parse_message(msg, MAX, expect_id=tables.id)
    assert fetched.id == tables.id and fetched is not tables
    assert (fetched.names, fetched.keys, fetched.values, fetched.shapes, fetched.resources, fetched.scopes,
            fetched.event_names, fetched.zdict) == (tables.names, tables.keys, tables.values, tables.shapes,
                                                    tables.resources, tables.scopes, tables.event_names, tables.zdict)
    later = spans[2000:2032]
    batch = decode_batch(columnar.encode(later, "node-3", 9, tables), MAX, {fetched.id: fetched}.get)
    assert batch.spans == later and repr(batch.spans) == repr(later)


def test_corrupt_truncated_or_foreign_messages_are_refused(tables: TableSet) -> None:
    msg = tables.to_message()
    for cut in (0, 1, 10, 35, len(msg) // 2, len(msg) - 1):
        with pytest.raises(DecodeError):
            parse_message(msg[:cut], MAX)
    for pos in (0, 2, 5, 40, len(msg) // 2, len(msg) - 2):
        bad = bytearray(msg)
        bad[pos] ^= 0x01
        with pytest.raises(DecodeError):
            parse_message(bytes(bad), MAX)
    with pytest.raises(DecodeError, match="not the"):
        parse_message(msg, MAX, expect_id=b"\x00" * 7 + b"\x01")
    with pytest.raises(DecodeError, match="over the limit"):
        parse_message(msg, 1000)


def _message(content: bytes) -> bytes:
    """A message with a correct digest around any content: what a hostile node can publish."""
    digest = hashlib.blake2b(content, digest_size=32).digest()
    return TABLES_MAGIC + b"\x01" + digest + zstandard.ZstdCompressor(write_content_size=True).compress(content)


@pytest.mark.parametrize("doc", [
    [],
    [1, "n", 0, [], [], [], [], [], [], [], 0],  # a field short
    [1, "n", 0, ["a", "a"], [], [], [], [], [], [], 0, b""],  # a name twice
    [1, "n", 0, [], ["k"], [], [], [], [], [], 0, b""],  # no value table for the key
    [1, "n", 0, [], ["k"], [[]], [[9 * 8]], [], [], [], 0, b""],  # a shape naming a missing key
    [1, "n", 0, [], ["k"], [[]], [[7]], [], [], [], 0, b""],  # an unknown value type
    [1, "n", 0, [], ["k"], [[]], [], [], ["only-a-name"], [], 0, b""],  # scopes not in pairs
    [1, "n", 0, [], ["k"], [[]], [], [], [], [[3, "v"]], 0, b""],  # a resource naming a missing key
    [1, "n", 0, [], [], [], [], [], [], [], 1, b"not a zstd dictionary"],
    [1, "n", 0, [], [], [], [], [], [], [], 7, b""],
])
def test_well_hashed_but_malformed_content_is_refused(doc: list) -> None:
    with pytest.raises(DecodeError):
        parse_message(_message(cbor2.dumps(doc)), MAX)


def test_node_memory_is_counted(tables: TableSet) -> None:
    n = tables.node_bytes()
    assert tables.compressor(3).memory_size() < n < 2 * 1024 * 1024
