"""The table sets format-3 batches refer to, on the gateway side: a bounded cache by id, filled from uploads (HTTP
`PUT /v1/tables/<id>`) and fetched from the nodes' retained MQTT topics when a batch names a set not in hand.

Every message is verified before it is cached (its BLAKE2b digest, the id asked for, every table's bounds:
uplink/wire/tables.py), so whichever node or gateway published a set, an id always means one content and a cached
set serves every gateway of the share group alike. The cache is least-recently-used, bounded by count and by bytes;
an evicted set is fetched again when a batch needs it. A set that cannot be found is not looked for again for a
while (`_MISSING_FOR`): the batches naming it stay unconfirmed and their nodes send them again later.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

from edge.config.uplink import GatewayConfig
from edge.errors import DecodeError
from edge.net.mqtt_client import MqttError
from edge.net.retry import Throttle

from ..wire import Batch, TableSet, UnknownTableSet, decode_batch, parse_message

__all__ = ["TableCache", "GatewayTables", "TableStats", "TableSource", "MqttTableSource"]

log = logging.getLogger(__name__)

_CACHE_SHARE = 16  # the cache takes at most this share of gateway.memory_limit
# A set that could not be found is not fetched again for this many times `gateway.table_wait` (its batches fail at
# once meanwhile): a node that sends batches naming made-up sets stalls the MQTT intake a thirtieth of the time at most.
_MISSING_FOR = 30


class TableCache:
    """Table sets by id, least recently used first out beyond `max_sets` or `max_bytes`."""

    def __init__(self, max_sets: int, max_bytes: int) -> None:
        self.max_sets = max_sets
        self.max_bytes = max_bytes
        self._sets: OrderedDict[bytes, tuple[TableSet, int]] = OrderedDict()
        self.bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sets)

    def get(self, table_id: bytes) -> TableSet | None:
        """The set, or None; a hit makes it the most recently used."""
        hit = self._sets.get(table_id)
        if hit is None:
            return None
        self._sets.move_to_end(table_id)
        return hit[0]

    def put(self, tables: TableSet) -> None:
        """Cache a verified set, evicting the least recently used beyond the bounds (never the new one)."""
        if tables.id in self._sets:
            self._sets.move_to_end(tables.id)
            return
        size = tables.gateway_bytes()
        self._sets[tables.id] = (tables, size)
        self.bytes += size
        while len(self._sets) > 1 and (len(self._sets) > self.max_sets or self.bytes > self.max_bytes):
            _, (_, gone) = self._sets.popitem(last=False)
            self.bytes -= gone
            self.evicted += 1


class TableSource(Protocol):
    """Where a gateway fetches a table set's message from."""

    async def fetch(self, table_id: bytes, accept: Callable[[bytes], TableSet | None], timeout: float) -> TableSet | None:
        """Offer every message found for `table_id` to `accept` until it returns a set; None after `timeout`."""
        ...


class MqttTableSource:
    """Fetches a table set from the nodes' retained topics: a short-lived connection of its own subscribes to the
    set's topic filter (any node level) and takes the first message that verifies. Its own connection, so that
    waiting for a set never holds up the batches arriving on the gateway's session."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg

    async def fetch(self, table_id: bytes, accept: Callable[[bytes], TableSet | None], timeout: float) -> TableSet | None:
        """See TableSource.fetch. MqttError if the broker cannot be reached."""
        cfg = self.cfg
        client = cfg.mqtt_client(f"{cfg.mqtt_client_id()}-tables-{random.getrandbits(24):06x}", "gateway",
                                 max_packet_size=cfg.max_table_bytes + 65536, timeout=min(10.0, max(1.0, timeout)))
        async with client:
            await client.subscribe(cfg.tables_filter(table_id), qos=1)

            async def first() -> TableSet | None:
                async for message in client.messages:
                    if message.payload:  # an empty retained message is a withdrawn set
                        found = accept(message.payload)
                        if found is not None:
                            return found
                return None

            try:
                return await asyncio.wait_for(first(), timeout)
            except asyncio.TimeoutError:
                return None


@dataclass(slots=True)
class TableStats:
    """Counters of the gateway's table sets (monotonic, but the gauges `cached_*`)."""

    uploaded: int = 0  # sets received over HTTP and cached
    fetched: int = 0  # sets fetched from MQTT and cached
    refused: int = 0  # messages refused: corrupt, truncated, wrong hash, not the id asked for, over the limits
    missing: int = 0  # batches not decoded because their set could not be found (left with their node)
    fetch_failures: int = 0  # fetches that found no valid message in time, or could not reach the broker
    evicted: int = 0
    cached_sets: int = 0
    cached_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


class GatewayTables:
    """Decodes batches of every version with the table sets they need, fetching a missing one when allowed."""

    def __init__(self, cfg: GatewayConfig, source: TableSource | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        # Within the gateway's memory limit: the decoding budget is what is left beside it (server.py).
        self.cache = TableCache(cfg.table_cache_sets, min(cfg.table_cache_bytes, cfg.memory_limit // _CACHE_SHARE))
        self.source = source
        self.stats = TableStats()
        self._clock = clock
        self._missing: dict[bytes, float] = {}  # id -> until when it is not fetched again
        self._fetching: dict[bytes, asyncio.Future[TableSet | None]] = {}
        self._throttle = Throttle()

    def accept(self, message: bytes, expect_id: bytes | None, origin: str) -> TableSet | None:
        """Verify a table-set message and cache it; None (counted, logged now and then) if it is refused."""
        try:
            tables = parse_message(message, self.cfg.max_table_bytes, expect_id)
        except DecodeError as e:
            self.stats.refused += 1
            if self._throttle.ready("refused"):
                extra = self._throttle.take_suppressed("refused")
                log.warning("table set from %s refused: %s%s", origin, e, f" ({extra} more not shown)" if extra else "")
            return None
        self.cache.put(tables)
        self._missing.pop(tables.id, None)
        self._gauges()
        return tables

    def upload(self, table_id: bytes, message: bytes, origin: str) -> bool:
        """A set a node uploaded; False if refused."""
        if self.accept(message, table_id, origin) is None:
            return False
        self.stats.uploaded += 1
        return True

    async def decode(self, payload: bytes, max_bytes: int, max_spans: int, fetch: bool,
                     max_expanded: int | None = None, otlp: bool = False) -> Batch:
        """Decode a batch of any version; a version-3 batch whose set is not cached is fetched first when `fetch`
        (waiting up to `gateway.table_wait`). UnknownTableSet if the set is still not in hand (counted),
        ExpansionExceeded if its spans would take more than `max_expanded` bytes in their OTLP request, DecodeError
        for anything else wrong. `otlp`: decoded straight into its OTLP request where it can be (decode_batch)."""
        try:
            return decode_batch(payload, max_bytes, self.cache.get, max_spans, max_expanded, otlp)
        except UnknownTableSet as e:
            if not fetch or await self.find(e.table_id) is None:
                self.stats.missing += 1
                raise
        return decode_batch(payload, max_bytes, self.cache.get, max_spans, max_expanded, otlp)

    async def find(self, table_id: bytes) -> TableSet | None:
        """The set, from the cache or fetched (one fetch per id at a time); None if it cannot be found now."""
        found = self.cache.get(table_id)
        if found is not None or self.source is None:
            return found
        if self._missing.get(table_id, 0.0) > self._clock():
            return None
        running = self._fetching.get(table_id)
        if running is not None:
            return await asyncio.shield(running)
        fut: asyncio.Future[TableSet | None] = asyncio.get_running_loop().create_future()
        self._fetching[table_id] = fut
        found = None
        try:
            found = await self.source.fetch(table_id, lambda m: self.accept(m, table_id, "its retained topic"),
                                            self.cfg.table_wait)
        except MqttError as e:
            log.warning("cannot fetch table set %s: %s", table_id.hex(), e)
        finally:
            del self._fetching[table_id]
            fut.set_result(found)
        if found is None:
            self.stats.fetch_failures += 1
            self._missing[table_id] = self._clock() + _MISSING_FOR * self.cfg.table_wait
            while len(self._missing) > 4096:  # ids a hostile node makes up must not grow this without end
                self._missing.pop(next(iter(self._missing)))
        else:
            self.stats.fetched += 1
        return found

    def _gauges(self) -> None:
        st, c = self.stats, self.cache
        st.cached_sets, st.cached_bytes, st.evicted = len(c), c.bytes, c.evicted
