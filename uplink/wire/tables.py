"""Table sets: learned tables a node shares with its gateways, what its spans usually say, so that its batches need
not say it again.

A `TableSet` holds, learned from the node's own recent spans: span names, attribute keys, the usual string values
of each key, attribute shapes (which keys, in which order, with which value types), event names, scopes, resources,
and a zstd dictionary for what is left. It is identified by its content hash (`id`, 8 bytes), published once as a
message (`to_message`), and referenced by id in every batch (uplink/wire/columnar.py), so each batch stays
self-contained given the table set it names. Format: docs/uplink-format.md, version 3.

Sans-I/O: training, serialising and parsing are pure functions; fetching, caching and publishing are the caller's.
"""
from __future__ import annotations

import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# BLAKE2 from its own module: `hashlib` maps OpenSSL's libcrypto (3.4 MiB) into a node that never needs it.
from _blake2 import blake2b

import cbor2
import zstandard

from edge.errors import DecodeError
from edge.model import Resource, Scope, Span, frozen

from .frame import NO_TABLES, TABLE_ID_SIZE, compression_params, read_prefix
from .values import check_native

__all__ = [
    "TableSet",
    "EMPTY",
    "NO_TABLES",
    "ID_SIZE",
    "TABLES_MAGIC",
    "TABLES_MEDIA_TYPE",
    "NEEDS_TABLES_HEADER",
    "TrainingLimits",
    "train",
    "parse_message",
    "message_id",
    "freeze_value",
    "thaw_value",
    "value_type",
    "TYPE_CODES",
    "T_STR",
    "T_INT",
    "T_FLOAT",
    "T_BOOL",
    "T_BYTES",
    "T_ANY",
]

TABLES_MAGIC = b"HT"
TABLES_MEDIA_TYPE = "application/vnd.helix.tables"  # of a table-set message uploaded over HTTP
# The HTTP header with which a gateway, answering 409, names the table set a node must upload before its batch.
NEEDS_TABLES_HEADER = "Helix-Needs-Table-Set"
_TABLES_VERSION = 1
# magic, table format version, the full 32-byte BLAKE2b digest of the CBOR content; then a zstd frame of it.
_MSG_HEADER = struct.Struct(">2sB32s")
ID_SIZE = TABLE_ID_SIZE

# Value type codes, the low 3 bits of a shape entry (key reference * 8 + type).
T_STR, T_INT, T_FLOAT, T_BOOL, T_BYTES, T_ANY = range(6)
TYPE_CODES: dict[type, int] = {str: T_STR, int: T_INT, float: T_FLOAT, bool: T_BOOL, bytes: T_BYTES}
_MAX_DEPTH = 32  # CBOR nesting of the content (plain-CBOR resource values, checked by check_native)

# Every table is bounded by count so a hostile message cannot make a gateway hold millions of entries; the byte
# bound of the whole message (`parse_message(max_bytes)`) bounds the rest.
MAX_ENTRIES = 1 << 16
MAX_SIGNATURES = 4096  # attribute signatures a table set remembers for the encoder
_DICT_SLOT = 3 * 8 * 3 // 2  # a dict entry (hash, key, value), with the spare room a dict keeps (about a third)
_ZDICT_NONE, _ZDICT_TRAINED, _ZDICT_RAW = 0, 1, 2


def value_type(v: Any) -> int:
    """The type code of an attribute value; nested and unusual values are T_ANY (plain CBOR)."""
    return TYPE_CODES.get(type(v), T_ANY)


def thaw_value(v: Any) -> Any:
    """A resource's frozen value as plain lists and maps (what CBOR carries)."""
    if type(v) is tuple:
        return [thaw_value(x) for x in v]
    if isinstance(v, tuple):  # the model's frozen map: a tuple subclass of sorted (key, value) pairs
        return {k: thaw_value(x) for k, x in v}
    return v


def freeze_value(v: Any) -> Any:
    """A decoded value frozen the way Resource.of freezes it (not interned: a copy frozen from [1.0] would come back for
    [True])."""
    if type(v) in (list, dict):
        return frozen(v)
    return v


@dataclass(slots=True, eq=False)
class TableSet:
    """A node's learned tables and zstd dictionary; `id` is the first 8 bytes of the content's BLAKE2b-256."""

    names: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    values: tuple[tuple[str, ...], ...] = ()  # per key (same index as keys): the key's usual string values
    shapes: tuple[tuple[int, ...], ...] = ()  # each entry key index * 8 + value type
    event_names: tuple[str, ...] = ()
    scopes: tuple[Scope, ...] = ()
    resources: tuple[Resource, ...] = ()
    zdict: bytes = b""
    zdict_kind: int = _ZDICT_NONE
    node_id: str = ""
    created_ns: int = 0
    id: bytes = field(default=NO_TABLES)
    content: bytes = field(default=b"", repr=False)
    _enc: Any = field(default=None, repr=False)
    _dec: Any = field(default=None, repr=False)
    _zc: dict[int, zstandard.ZstdCompressor] = field(default_factory=dict, repr=False)
    _zd: zstandard.ZstdDecompressor | None = field(default=None, repr=False)

    @property
    def is_empty(self) -> bool:
        """True for the cold-start set: no tables, no dictionary."""
        return self.id == NO_TABLES

    # ---- what the encoder and decoder of uplink/wire/columnar.py use; built on first use and kept

    def encoder_index(self) -> _EncoderIndex:
        """Lookups from value to table position, for encoding."""
        if self._enc is None:
            self._enc = _EncoderIndex(self)
        return self._enc

    def decoder_tables(self) -> _DecoderTables:
        """Tables in the form the decoder reads them."""
        if self._dec is None:
            self._dec = _DecoderTables(self)
        return self._dec

    def compressor(self, level: int, shared: bool = True) -> zstandard.ZstdCompressor:
        """The zstd compressor for batches referencing this set (its dictionary loaded once); `shared=False` makes
        one for another thread (a compressor is not safe to use from two threads at once)."""
        if not shared:
            return _compressor(level, self._zstd_dict())
        zc = self._zc.get(level)
        if zc is None:
            zc = self._zc[level] = _compressor(level, self._zstd_dict())
        return zc

    def decompressor(self) -> zstandard.ZstdDecompressor:
        """The zstd decompressor for batches referencing this set."""
        if self._zd is None:
            d = self._zstd_dict()
            self._zd = zstandard.ZstdDecompressor(dict_data=d) if d is not None else zstandard.ZstdDecompressor()
        return self._zd

    def _zstd_dict(self) -> zstandard.ZstdCompressionDict | None:
        if self.zdict_kind == _ZDICT_NONE:
            return None
        kind = zstandard.DICT_TYPE_FULLDICT if self.zdict_kind == _ZDICT_TRAINED else zstandard.DICT_TYPE_RAWCONTENT
        return zstandard.ZstdCompressionDict(self.zdict, dict_type=kind)

    def node_bytes(self, level: int = 3) -> int:
        """Bytes the node holds to encode with this set now: its tables (table_bytes) and the encoder's memo."""
        return self.table_bytes(level) + self.memo_bytes()

    def table_bytes(self, level: int = 3) -> int:
        """Bytes of what does not grow while the node encodes: tables, lookups and the zstd compressor at `level`."""
        idx = self.encoder_index()
        seen: set[int] = set()
        fields = (self.names, self.keys, self.values, self.shapes, self.event_names, self.scopes, self.resources,
                  self.zdict, self.content, idx.names, idx.keys, idx.values, idx.shapes, idx.event_names, idx.scopes,
                  idx.resources)
        return sum(_deep_size(f, seen) for f in fields) + self.compressor(level).memory_size()

    def clear_memo(self) -> None:
        """Forget the encoder's memo of attribute signatures (it is filled again as batches are encoded)."""
        if self._enc is not None:
            self._enc.signatures = {}
            self._enc.memo_bytes = 0

    def memo_bytes(self) -> int:
        """Bytes of the encoder's memo of attribute signatures, which grows as batches are encoded (bounded)."""
        return 0 if self._enc is None else self._enc.memo_bytes

    def gateway_bytes(self) -> int:
        """Bytes a gateway holds to decode with this set: the decoder's tables, the content, the zstd decompressor."""
        dt = self.decoder_tables()
        seen: set[int] = set()
        fields = (dt.names, dt.keys, dt.values, dt.shapes, dt.event_names, dt.scopes, dt.resources, self.content,
                  self.zdict)
        return sum(_deep_size(f, seen) for f in fields) + self.decompressor().memory_size()

    # ---- publication

    def to_message(self) -> bytes:
        """The message that publishes this set (magic, version, digest, zstd frame of the CBOR content)."""
        digest = blake2b(self.content, digest_size=32).digest()
        # Level 9: within 5 % of level 19's size at a twentieth of the time and half the memory (docs/benchmarks.md).
        frame = zstandard.ZstdCompressor(level=9, write_content_size=True, write_checksum=True).compress(self.content)
        return _MSG_HEADER.pack(TABLES_MAGIC, _TABLES_VERSION, digest) + frame


EMPTY = TableSet()


def _deep_size(x: Any, seen: set[int]) -> int:
    """Bytes of x and everything it holds, each object counted once (table entries are shared between lists and
    lookups). Small ints, types and True/False are interpreter-wide and not counted."""
    if id(x) in seen or type(x) in (bool, type) or x is None or (type(x) is int and -5 <= x <= 256):
        return 0
    seen.add(id(x))
    n = sys.getsizeof(x)
    if isinstance(x, (tuple, list)):
        n += sum(_deep_size(v, seen) for v in x)
    elif isinstance(x, dict):
        n += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in x.items())
    elif isinstance(x, Resource):
        n += _deep_size(x.attributes, seen)
    elif isinstance(x, Scope):
        n += _deep_size(x.name, seen) + _deep_size(x.version, seen)
    return n


def _signature_bytes(sig: Any, known: Any) -> int:
    """Bytes of one entry of the encoder's signature memo, counted as it grows for the memory governor: its tuples
    (sizes by formula: sys.getsizeof of a tuple of n items is 40 + 8 n), its keys (which other entries may share: an
    upper bound) and its slot in the dict. No deep walk: that costs more than encoding the list it was met in."""
    ks = sig[0]
    n = _SIGNATURE_FIXED + _SIGNATURE_PER_KEY * len(ks)
    for k in ks:
        n += sys.getsizeof(k)
    return n


# The entry's tuples: (keys, types), keys, types, (shape, codes, columns), codes, columns; one (key, code) per key.
_SIGNATURE_FIXED = 56 + 40 + 40 + 64 + 40 + 40 + _DICT_SLOT
_SIGNATURE_PER_KEY = 4 * 8 + 56


class _EncoderIndex:
    """Positions of every table entry, by value. Text tables give the reference a text column writes (index + 1,
    0 being "the batch's next new text"); the others give the index."""

    __slots__ = ("names", "keys", "values", "shapes", "event_names", "scopes", "resources", "signatures",
                 "memo_bytes")

    def __init__(self, t: TableSet) -> None:
        # The encoder's memo: (keys, Python value types) -> (learned shape or None, type codes, columns); bounded.
        self.signatures: dict[Any, Any] = {}
        self.memo_bytes = 0
        self.names = {s: i + 1 for i, s in enumerate(t.names)}
        self.keys = {s: i for i, s in enumerate(t.keys)}
        self.values = {t.keys[i]: {s: j + 1 for j, s in enumerate(vals)} for i, vals in enumerate(t.values) if vals}
        # Shapes by (keys, value types), the form the encoder computes from an attribute list.
        self.shapes = {(tuple(t.keys[e >> 3] for e in sh), tuple(e & 7 for e in sh)): i
                       for i, sh in enumerate(t.shapes)}
        self.event_names = {s: i + 1 for i, s in enumerate(t.event_names)}
        self.scopes = {(s.name, s.version): i for i, s in enumerate(t.scopes)}
        self.resources = {r.exact_key(): i for i, r in enumerate(t.resources)}

    def remember(self, sig: Any, known: Any) -> None:
        """Keep what the encoder found for an attribute signature, while the memo holds fewer than its bound."""
        if len(self.signatures) < MAX_SIGNATURES:
            self.signatures[sig] = known
            self.memo_bytes += _signature_bytes(sig, known)


class _DecoderTables:
    """The tables as lists the decoder extends with a batch's new entries."""

    __slots__ = ("names", "keys", "values", "shapes", "event_names", "scopes", "resources")

    def __init__(self, t: TableSet) -> None:
        self.names = list(t.names)
        self.keys = list(t.keys)
        self.values = {t.keys[i]: list(vals) for i, vals in enumerate(t.values) if vals}
        self.shapes = [tuple((t.keys[e >> 3], e & 7) for e in sh) for sh in t.shapes]
        self.event_names = list(t.event_names)
        self.scopes = list(t.scopes)
        self.resources = list(t.resources)


# -------------------------------------------------------------------------------------------------------- zstd

def _compressor(level: int, d: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdCompressor:
    params = compression_params(level)
    if d is not None:
        d.precompute_compress(compression_params=params)  # digested once, not at every batch
    return zstandard.ZstdCompressor(dict_data=d, compression_params=params)


# -------------------------------------------------------------------------------------------- content (CBOR)

def _content(t: TableSet) -> list[Any]:
    key_index = {k: i for i, k in enumerate(t.keys)}
    return [
        _TABLES_VERSION,
        t.node_id,
        t.created_ns,
        list(t.names),
        list(t.keys),
        [list(v) for v in t.values],
        [list(sh) for sh in t.shapes],
        list(t.event_names),
        [x for s in t.scopes for x in (s.name, s.version)],
        [_resource_entry(r, key_index) for r in t.resources],
        t.zdict_kind,
        t.zdict,
    ]


def _resource_entry(r: Resource, key_index: dict[str, int]) -> list[Any]:
    out: list[Any] = []
    for k, v in r.attributes:
        out.append(key_index[k])
        out.append(thaw_value(v))
    return out


def _sealed(t: TableSet) -> TableSet:
    t.content = cbor2.dumps(_content(t))
    t.id = message_id(t.content)
    return t


def message_id(content: bytes) -> bytes:
    """The id of a table set: the first 8 bytes of BLAKE2b-256 of its CBOR content."""
    return blake2b(content, digest_size=32).digest()[:ID_SIZE]


def _bad(what: str) -> DecodeError:
    return DecodeError(f"uplink table set: {what}")


def _texts(x: Any, what: str) -> tuple[str, ...]:
    if type(x) is not list or len(x) > MAX_ENTRIES or not all(type(s) is str for s in x):
        raise _bad(f"{what} must be an array of at most {MAX_ENTRIES} texts")
    if len(set(x)) != len(x):
        raise _bad(f"{what} repeats an entry")
    return tuple(x)


def parse_message(data: bytes, max_bytes: int, expect_id: bytes | None = None) -> TableSet:
    """Parse and verify a published table set; at most `max_bytes` are decompressed. DecodeError on any problem."""
    _, _, digest = read_prefix(data, _MSG_HEADER, TABLES_MAGIC, (_TABLES_VERSION,), "Helix uplink table set")
    if expect_id is not None and digest[:ID_SIZE] != expect_id:
        raise _bad(f"message is table set {digest[:ID_SIZE].hex()}, not the {expect_id.hex()} asked for")
    frame = bytes(data[_MSG_HEADER.size:])
    try:
        size = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as e:
        raise _bad(f"not a zstd frame: {e}") from None
    if size == zstandard.CONTENTSIZE_UNKNOWN or size > max_bytes:
        raise _bad(f"content size {size} is undeclared or over the limit of {max_bytes} bytes")
    try:
        content = zstandard.ZstdDecompressor().decompress(frame, max_output_size=max_bytes)
    except zstandard.ZstdError as e:
        raise _bad(f"zstd frame is corrupt or truncated: {e}") from None
    if blake2b(content, digest_size=32).digest() != digest:
        raise _bad("content does not match its hash (corrupt or tampered)")
    try:
        doc = cbor2.loads(content, max_depth=_MAX_DEPTH + 4)
    except Exception as e:  # noqa: BLE001 - the CBOR library raises several types on hostile input
        raise _bad(f"content is not valid CBOR: {e}") from None
    try:
        t = _from_content(doc)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - a shape not foreseen is still bad input
        raise _bad(f"content has the wrong shape: {type(e).__name__}: {e}") from None
    t.content = content
    t.id = digest[:ID_SIZE]
    return t


def _from_content(doc: Any) -> TableSet:
    if type(doc) is not list or len(doc) != 12:
        raise _bad("content must be an array of 12 fields")
    version, node_id, created, names, keys, values, shapes, event_names, scopes, resources, kind, zdict = doc
    if version != _TABLES_VERSION or type(node_id) is not str or type(created) is not int:
        raise _bad("bad version, node id or creation time")
    names_t, keys_t, events_t = _texts(names, "names"), _texts(keys, "keys"), _texts(event_names, "event names")
    if type(values) is not list or len(values) != len(keys_t):
        raise _bad("value tables must be one array per key")
    values_t = tuple(_texts(v, f"values of {keys_t[i]!r}") for i, v in enumerate(values))
    if type(shapes) is not list or len(shapes) > MAX_ENTRIES:
        raise _bad("shapes must be an array")
    shapes_t = tuple(_shape(sh, len(keys_t)) for sh in shapes)
    if len(set(shapes_t)) != len(shapes_t):
        raise _bad("shapes repeat an entry")
    if (type(scopes) is not list or len(scopes) % 2 or len(scopes) > 2 * MAX_ENTRIES
            or not all(type(s) is str for s in scopes)):
        raise _bad("scopes must be name/version text pairs")
    scopes_t = tuple(Scope(scopes[i], scopes[i + 1]) for i in range(0, len(scopes), 2))
    if type(resources) is not list or len(resources) > MAX_ENTRIES:
        raise _bad("resources must be an array")
    resources_t = tuple(resource_from_entry(r, keys_t, "table-set resource") for r in resources)
    if kind not in (_ZDICT_NONE, _ZDICT_TRAINED, _ZDICT_RAW) or type(zdict) is not bytes:
        raise _bad("bad zstd dictionary")
    if kind == _ZDICT_TRAINED:
        try:
            zstandard.ZstdCompressionDict(zdict, dict_type=zstandard.DICT_TYPE_FULLDICT).precompute_compress(level=1)
        except zstandard.ZstdError as e:
            raise _bad(f"zstd dictionary does not load: {e}") from None
    return TableSet(names=names_t, keys=keys_t, values=values_t, shapes=shapes_t, event_names=events_t,
                    scopes=scopes_t, resources=resources_t, zdict=zdict, zdict_kind=kind, node_id=node_id,
                    created_ns=created)


def _shape(sh: Any, n_keys: int) -> tuple[int, ...]:
    if type(sh) is not list:
        raise _bad("a shape must be an array")
    for e in sh:
        if type(e) is not int or e < 0 or (e >> 3) >= n_keys or (e & 7) > T_ANY:
            raise _bad(f"shape entry {e!r} is invalid")
    return tuple(sh)


def resource_from_entry(entry: Any, keys: Sequence[str], what: str) -> Resource:
    """A resource from its flat [key index, value, ...] form."""
    if type(entry) is not list or len(entry) % 2:
        raise DecodeError(f"uplink batch: {what} must be key/value pairs")
    out = []
    for j in range(0, len(entry), 2):
        k = entry[j]
        if type(k) is not int or not 0 <= k < len(keys):
            raise DecodeError(f"uplink batch: {what} has an invalid key reference {k!r}")
        out.append((keys[k], freeze_value(check_native(entry[j + 1], what))))
    return Resource(tuple(out))


# ------------------------------------------------------------------------------------------------------ training

@dataclass(frozen=True, slots=True)
class TrainingLimits:
    """How much a table set may hold. The defaults keep the node's share (tables + compressor) near 1 MiB."""

    zdict_bytes: int = 16384
    value_bytes: int = 32768  # text of the learned string values, all keys together
    min_value_count: int = 2  # traces a value must appear in: one seen in a single trace is an id, not a table entry
    max_names: int = 2048
    max_keys: int = 2048
    max_shapes: int = 2048
    max_resources: int = 256
    max_scopes: int = 256
    zdict: bool = True
    tables: bool = True


def train(spans: Sequence[Span], limits: TrainingLimits = TrainingLimits(), node_id: str = "",
          created_ns: int | None = None,
          sample_bodies: Callable[[Sequence[Span], TableSet], Iterable[bytes]] | None = None) -> TableSet:
    """Learn a table set from a node's recent spans (oldest first).

    `sample_bodies(spans, tables)` returns uncompressed batch bodies of these spans encoded with `tables`: the zstd
    dictionary is trained on them, so it learns what the tables leave. uplink/wire/columnar.py passes its own.
    """
    created = time.time_ns() if created_ns is None else created_ns
    t = _tables(spans, limits) if limits.tables else TableSet()
    t.node_id, t.created_ns = node_id, created
    if limits.zdict and sample_bodies is not None and spans:
        samples = [b for b in sample_bodies(spans, _sealed(t)) if b]
        t.zdict, t.zdict_kind = _train_zdict(samples, limits.zdict_bytes)
        t._zc.clear()
        t._zd = None
    return _sealed(t)


def _ranked(counter: Counter[Any], limit: int, min_count: int = 1) -> list[Any]:
    # Most used first (small references are shorter); ties keep first-seen order (Counter keeps insertion order).
    ranked = [x for x, c in counter.most_common() if c >= min_count]
    return ranked[:limit]


def _tables(spans: Sequence[Span], limits: TrainingLimits) -> TableSet:
    names: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    values: dict[str, Counter[str]] = {}
    shapes: Counter[tuple[tuple[str, ...], tuple[int, ...]]] = Counter()
    event_names: Counter[str] = Counter()
    scopes: Counter[Scope] = Counter()
    resources: Counter[tuple[Resource, object]] = Counter()  # by exact key: True, 1 and 1.0 are learned apart

    # In how many traces a value was seen: an order id repeated by every span of its trace is still a one-off.
    spread: Counter[tuple[str, str]] = Counter()
    last_trace: dict[tuple[str, str], Any] = {}

    def learn_attrs(ks: tuple[str, ...], vals: Sequence[Any], trace: Any) -> None:
        shapes[(ks, tuple(value_type(v) for v in vals))] += 1
        keys.update(ks)
        for k, v in zip(ks, vals):
            if type(v) is str:
                c = values.get(k)
                if c is None:
                    c = values[k] = Counter()
                c[v] += 1
                kv = (k, v)
                if last_trace.get(kv, last_trace) != trace:
                    last_trace[kv] = trace
                    spread[kv] += 1

    for s in spans:
        names[s.name] += 1
        scopes[s.scope] += 1
        rk = s.resource.exact_key()
        if rk not in resources:  # a resource's values count once, not once per span
            learn_attrs(tuple(k for k, _ in s.resource.attributes), [thaw_value(v) for _, v in s.resource.attributes],
                        s.resource)
        resources[rk] += 1
        learn_attrs(tuple(s.attributes), tuple(s.attributes.values()), s.trace_id)
        for e in s.events:
            event_names[e.name] += 1
            learn_attrs(tuple(e.attributes), tuple(e.attributes.values()), s.trace_id)

    key_list = _ranked(keys, limits.max_keys)
    key_pos = {k: i for i, k in enumerate(key_list)}
    # String values: the ones that save the most (uses x length) until the byte budget is spent.
    candidates = [(c * (len(v) + 1), k, v) for k, cnt in values.items() if k in key_pos
                  for v, c in cnt.items() if spread[(k, v)] >= limits.min_value_count]
    candidates.sort(key=lambda x: -x[0])
    chosen: dict[str, Counter[str]] = {}
    budget = limits.value_bytes
    for _, k, v in candidates:
        size = len(v.encode()) + 1
        if size > budget:
            continue
        budget -= size
        chosen.setdefault(k, Counter())[v] = values[k][v]
    value_lists = tuple(tuple(_ranked(chosen[k], MAX_ENTRIES)) if k in chosen else () for k in key_list)
    shape_list = [sh for sh in _ranked(shapes, limits.max_shapes) if all(k in key_pos for k in sh[0])]
    # Resources whose keys all made the key table (always, below the key limit).
    res_list = [r for r, _ in _ranked(resources, limits.max_resources) if all(k in key_pos for k, _ in r.attributes)]
    return TableSet(
        names=tuple(_ranked(names, limits.max_names)),
        keys=tuple(key_list),
        values=value_lists,
        shapes=tuple(tuple(key_pos[k] * 8 + ty for k, ty in zip(ks, tys)) for ks, tys in shape_list),
        event_names=tuple(_ranked(event_names, limits.max_names)),
        scopes=tuple(_ranked(scopes, limits.max_scopes)),
        resources=tuple(res_list),
    )


def _train_zdict(samples: list[bytes], size: int) -> tuple[bytes, int]:
    """A trained zstd dictionary, or, when there are too few samples to train one, the newest samples as raw
    content (zstd then matches against them directly)."""
    total = sum(map(len, samples))
    if total == 0:
        return b"", _ZDICT_NONE
    if len(samples) >= 8 and total >= 4 * size:
        try:
            d = zstandard.train_dictionary(size, [*samples], level=3)
            return d.as_bytes(), _ZDICT_TRAINED
        except zstandard.ZstdError:
            pass
    raw = b"".join(samples)[-size:]
    return raw, _ZDICT_RAW
