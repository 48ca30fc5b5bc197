"""The node side of the uplink: queue spans, cut batches, spool them, send them over MQTT or HTTP until a gateway
confirms them.

Memory holds only the spans of the batch being cut. Each cut batch is encoded, written to the spool (on disk by
default: it survives kill -9 and power cuts) and only then counted as accepted for delivery. A full spool (or disk)
stops the cutting, the queue fills, and the agent's pipeline waits on `put` — so its door answers busy rather than
accept what it could not keep. A sender drains the spool oldest-first at no more than `uplink.drain_rate` batches
per second. A batch leaves the spool once it is settled end to end: over HTTP the gateway's 2xx (sent after its
export); over MQTT the broker's PUBACK only says the broker holds it, so the batch waits for a gateway's
confirmation on the node's ack topic, and is sent again when the connection it went over breaks (the broker may
have lost it) or when none comes within `uplink.confirm_timeout`. When no gateway confirms anything for that long
(one older than confirmations, or none running), the node falls back to the broker's PUBACK and says so.
What cannot be kept is counted, never silently lost (docs/reliability.md).

In format version 3 batches refer to a table set the node learns from its own spans (uplink/learner.py, in a worker
thread) and keeps published while any spooled batch names it (uplink/table_publisher.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TypeVar

from edge.config.uplink import UplinkConfig
from edge.errors import UplinkError
from edge.model import MetricBatch, Span
from edge.net.retry import Backoff, Throttle

from .confirm import Settled
from .learner import Candidate, LearningPolicy, TableLearner
from .spool import DiskSpool, MemorySpool, SpoolEntry, SpoolFull
from .table_publisher import TablePublisher
from .transports import SendError, Transport, make_transport
from .wire import EMPTY, NO_TABLES, TABLE_VERSIONS, encode_batch, encode_metrics

__all__ = ["UplinkClient", "UplinkStats"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Resends of one batch for want of a confirmation while other batches are confirmed: a batch no gateway can take
# (one it cannot decode) is let go after this many, counted.
_MAX_RESENDS = 5
_CHECK_EVERY = 1.0  # s between two looks at the confirmations due


def _target(cfg: UplinkConfig) -> tuple[object, ...]:
    """The settings that say where batches go and as whom: changing one needs a new transport."""
    return (cfg.transport, cfg.broker, cfg.url, cfg.topic, cfg.token, cfg.username, cfg.password, cfg.ca_file,
            cfg.cert_file, cfg.key_file, cfg.qos, cfg.ack_topic)


@dataclass(slots=True)
class UplinkStats:
    """Counters of the uplink client (monotonic, except the gauges `queued_*`, `spooled_*`, `spool_*` flags,
    `awaiting_*` and `confirm_fallback`)."""

    spans_accepted: int = 0  # taken by submit() into the batch being cut
    spans_spooled: int = 0  # cut, encoded and stored in the spool: accepted for delivery
    batches_spooled: int = 0
    spans_sent: int = 0  # taken by the broker (PUBACK) or the gateway (HTTP 2xx), counted once per batch
    batches_sent: int = 0
    bytes_sent: int = 0
    spans_confirmed: int = 0  # settled end to end: a gateway confirmed the export (or answered HTTP 2xx)
    batches_confirmed: int = 0
    batches_resent: int = 0  # sent again: the connection broke before a confirmation, or none came in time
    released_unconfirmed_spans: int = 0  # let go on the broker's PUBACK alone (no gateway confirms; spool full)
    released_unconfirmed_batches: int = 0
    confirms_unknown: int = 0  # confirmations of batches no longer spooled (a resend confirmed twice)
    dropped_queue_full: int = 0
    dropped_rejected: int = 0  # spans in batches the gateway refused for good (malformed, oversized, wrong node)
    dropped_unencodable: int = 0
    dropped_spool_error: int = 0  # one batch over spool_max_bytes: it can never be stored
    dropped_on_close: int = 0  # not cut, or held in a memory-only spool, when the client stopped
    spool_evicted_batches: int = 0  # oldest batches pushed out of a full spool (spool_full = "evict")
    spool_evicted_spans: int = 0
    spool_recovered_spans: int = 0  # found in the disk spool at start, left by a previous run
    spool_full_waits: int = 0  # times a cut batch waited for room in the spool (or on its disk)
    put_waits: int = 0  # times the agent's pipeline waited for room in the queue
    send_failures: int = 0
    queued_spans: int = 0
    queued_bytes: int = 0
    spooled_batches: int = 0
    spooled_spans: int = 0
    spooled_bytes: int = 0
    spool_durable: int = 0  # 1 when batches wait on disk, 0 when only in memory
    spool_blocked: int = 0  # 1 while a cut batch waits for room: the queue fills, then the agent answers busy
    awaiting_batches: int = 0  # taken by the broker, waiting for a gateway's confirmation
    awaiting_spans: int = 0
    confirm_fallback: int = 0  # 1 while no gateway confirms: the broker's PUBACK is taken as enough
    dropped_no_tables: int = 0  # spans in batches naming a table set the node no longer has
    table_sets_adopted: int = 0  # learned table sets that paid for their message and are (were) in use
    table_sets_published: int = 0  # table-set messages published or uploaded (again after a reconnect or a 409)
    table_bytes: int = 0  # what the table set in use takes (the governor counts it)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for /metrics and logs)."""
        return asdict(self)


class UplinkClient:
    """Batches spans and ships them; call `submit` from the event loop, run `run()` as a task, end with `close()`."""

    def __init__(self, cfg: UplinkConfig, node_id: str, transport: Transport | None = None,
                 spool: MemorySpool | None = None) -> None:
        self.cfg = cfg
        self._queue_limit: int | None = None  # a tighter bound than the config's: the agent's memory plan
        self.node_id = node_id
        self.stats = UplinkStats()
        self._transport = transport or self._new_transport(cfg)
        if spool is None:
            evict = cfg.spool_full == "evict"
            spool = DiskSpool(cfg.spool_dir, node_id, cfg.spool_max_bytes, evict) if cfg.spool_dir else \
                MemorySpool(cfg.spool_max_bytes, evict)
        self.spool = spool
        self.learner = TableLearner(LearningPolicy.of(cfg), node_id, cfg.learn_memory)
        self.tables = TablePublisher(cfg.tables_retain)
        self._learning: asyncio.Task[None] | None = None
        self._due: deque[SpoolEntry] = deque()  # spooled batches to send, oldest first
        self._by_seq: dict[int, SpoolEntry] = {}  # every spooled batch, for confirmations
        self._awaiting: dict[int, SpoolEntry] = {}  # taken by the broker, waiting for a confirmation
        self._last_confirm = time.monotonic()
        self._fallback = False
        self._room = asyncio.Event()  # a batch left the spool
        self._queue_room = asyncio.Event()  # spans left the queue
        self._background: set[asyncio.Future[None]] = set()
        self._released_batches = self._released_spans = 0  # by this client (the spool counts its own)
        self._queue: deque[tuple[Span, int]] = deque()
        self._queue_bytes = 0
        self._cutting = 0  # spans taken off the queue and not yet in the spool
        self._cut: list[Span] = []  # those spans
        self._oldest: float | None = None  # monotonic time the oldest queued span arrived
        self._wake = asyncio.Event()  # new spans, or closing
        self._spooled = asyncio.Event()  # a batch reached the spool, or cutting ended
        self._cut_done = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self.opened = asyncio.Event()  # the spool is open and what it held is queued for sending
        self._throttle = Throttle()
        self._next_send = 0.0
        self._old_transports: set[asyncio.Task[None]] = set()  # closing after a reconfigure
        self.metric_stats = {"submitted": 0, "spooled": 0, "superseded": 0, "dropped": 0}
        self._metrics_pending: MetricBatch | None = None  # the newest metric batch not spooled yet
        self._metrics_task: asyncio.Future[bool] | None = None

    def reconfigure(self, cfg: UplinkConfig) -> bool:
        """Take new settings while running, keeping the queue and the spool; True if the target changed (transport,
        address, topic or credentials), which gets a new transport: a send in flight on the old one fails and is
        retried on the new one, the batch staying spooled. Batch limits take effect at the next cut."""
        old, self.cfg = self.cfg, cfg
        changed = _target(old) != _target(cfg)
        if changed:
            old_transport, self._transport = self._transport, self._new_transport(cfg)
            task = asyncio.ensure_future(old_transport.close())
            self._old_transports.add(task)
            task.add_done_callback(self._old_transports.discard)
        self._wake.set()
        return changed

    # -------------------------------------------------------------------------------------------- intake

    def _new_transport(self, cfg: UplinkConfig) -> Transport:
        return make_transport(cfg, self.node_id, self._on_confirm, self._on_lost)

    def submit(self, spans: list[Span]) -> int:
        """Queue spans without blocking; returns how many were accepted (the rest are counted as dropped)."""
        accepted = self._take(spans)
        dropped = len(spans) - accepted
        if dropped:
            self.stats.dropped_queue_full += dropped
            if self._throttle.ready("full"):
                log.warning("uplink queue full (%d bytes, limit %d): dropped %d spans (total dropped %d)",
                            self._queue_bytes, self.queue_limit, dropped, self.stats.dropped_queue_full)
        self._gauges()
        return accepted

    async def put(self, spans: list[Span]) -> int:
        """Queue spans, waiting for room instead of dropping: the agent's pipeline waits here while the spool cannot
        take more, so its inbox fills and its door answers busy. Returns how many were queued (all, unless closing)."""
        done = 0
        while done < len(spans) and not self._closing:
            done += self._take(spans[done:] if done else spans)
            if done < len(spans):
                self.stats.put_waits += 1
                self._queue_room.clear()
                await self._queue_room.wait()
        if done < len(spans):
            self.stats.dropped_on_close += len(spans) - done
        self._gauges()
        return done

    def can_accept(self, nbytes: int) -> bool:
        """Whether spans of about `nbytes` would be queued now without waiting: False while the spool (or its disk) is
        full and the queue has no room, so a receiver can answer busy before it acknowledges anything."""
        if self._closing:
            return False
        return not self._queue or self._queue_bytes + nbytes <= self.queue_limit

    def _take(self, spans: list[Span]) -> int:
        """Queue the longest prefix of `spans` that fits (one span always fits an empty queue); how many."""
        accepted = 0
        limit = self.queue_limit
        for span in spans:
            size = span.approx_size()
            if self._closing or (self._queue_bytes + size > limit and self._queue):
                break
            self._queue.append((span, size))
            self._queue_bytes += size
            accepted += 1
        if accepted:
            if self._oldest is None:
                self._oldest = time.monotonic()
            self.stats.spans_accepted += accepted
            self._wake.set()
        return accepted

    def held_spans(self) -> Iterator[Span]:
        """Every span taken but not yet in the spool: queued, and the batch being cut and stored."""
        for span, _ in self._queue:
            yield span
        yield from self._cut

    @property
    def queue_limit(self) -> int:
        """Bytes the queue of spans waiting to be cut takes at most."""
        cap = self.cfg.queue_max_bytes
        return cap if self._queue_limit is None else min(cap, self._queue_limit)

    @property
    def bytes(self) -> int:
        """Bytes of spans queued, waiting to be cut into a batch."""
        return self._queue_bytes

    def set_bound(self, n: int) -> int:
        """Queue no more than `n` bytes (never above `uplink.queue_max_bytes`): the memory governor's plan. What is
        queued stays; spans that would not fit are refused at `submit` and counted there."""
        self._queue_limit = n
        return 0

    def _gauges(self) -> None:
        st, sp = self.stats, self.spool
        st.queued_spans = len(self._queue)
        st.queued_bytes = self._queue_bytes
        st.spooled_batches, st.spooled_spans, st.spooled_bytes = len(sp), sp.spans, sp.bytes
        st.spool_evicted_batches, st.spool_evicted_spans = sp.evicted_batches, sp.evicted_spans
        st.released_unconfirmed_batches = self._released_batches + sp.released_batches
        st.released_unconfirmed_spans = self._released_spans + sp.released_spans
        st.spool_durable = int(sp.durable)
        st.awaiting_batches = len(self._awaiting)
        st.awaiting_spans = sum(e.spans for e in self._awaiting.values()) if self._awaiting else 0
        st.confirm_fallback = int(self._fallback)
        st.table_sets_adopted, st.table_sets_published = self.learner.stats.adopted, self.tables.stats.published
        st.table_bytes = self.learner.bytes

    # -------------------------------------------------------------------------------------------- running

    async def run(self) -> None:
        """Cut, spool and ship batches until `close()`; never raises for link or disk failures."""
        self._task = asyncio.current_task()
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._open_spool()
            tasks = [asyncio.create_task(self._cut_loop(), name="uplink-cut"),
                     asyncio.create_task(self._send_loop(), name="uplink-send"),
                     asyncio.create_task(self._confirm_loop(), name="uplink-confirm")]
            await tasks[0]
            self._cut_done = True
            self._spooled.set()
            await tasks[1]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._background:
                await asyncio.gather(*self._background, return_exceptions=True)
            if not self.spool.durable and self._awaiting:  # the broker has them; nothing here will resend them
                self._released_batches += len(self._awaiting)
                self._released_spans += sum(e.spans for e in self._awaiting.values())
            unsent = [e for e in self.spool.entries if not e.awaiting]
            lost = sum(1 for _ in self._queue) + self._cutting + (0 if self.spool.durable else
                                                                  sum(e.spans for e in unsent))
            if lost:
                self.stats.dropped_on_close += lost
                log.warning("uplink stopped with %d spans not delivered and not on disk", lost)
            if self.spool.durable and len(self.spool):
                log.info("uplink stopped; %d batches (%d spans) wait in the spool %s for the next start",
                         len(self.spool), self.spool.spans, getattr(self.spool, "dir", ""))
            self._gauges()
            await self._transport.close()
            await self.spool.close()
            self._done.set()

    async def _open_spool(self) -> None:
        try:
            await self.spool.open()
        except UplinkError as e:
            log.error("%s; uplink batches are kept in memory only and are lost if the agent stops", e)
            self.spool = MemorySpool(self.cfg.spool_max_bytes)
            await self.spool.open()
        self.stats.spool_recovered_spans = getattr(self.spool, "recovered_spans", 0)
        await self._open_tables()
        for entry in self.spool.entries:
            self._queue_for_sending(entry)
        self._gauges()
        if len(self.spool):
            self._spooled.set()
        self.opened.set()

    async def _open_tables(self) -> None:
        """The record of table sets beside the spool; the set in use before a restart is used again."""
        directory = self.spool.dir / "tables" if isinstance(self.spool, DiskSpool) else None
        try:
            restored = await self.tables.open(directory)
        except UplinkError as e:
            log.error("%s; table sets are kept in memory only", e)
            restored = await self.tables.open(None)
        if restored is not None:
            self.learner.use(restored, await asyncio.to_thread(restored.table_bytes, self.cfg.zstd_level))
            log.info("uplink: encoding with table set %s again, as before the restart", restored.id.hex())

    def _queue_for_sending(self, entry: SpoolEntry) -> None:
        self._by_seq[entry.seq] = entry
        self._due.append(entry)

    async def _cut_loop(self) -> None:
        while await self._batch_due():
            spans = self._take_batch()
            version = self.cfg.format
            learns = version in TABLE_VERSIONS
            tables = self.learner.current if learns else EMPTY
            try:
                seq = await self._spool_call(self.spool.next_seq)
                payload = encode_batch(spans, self.node_id, seq, level=self.cfg.zstd_level, version=version,
                                       tables=tables)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a span holding a value the format cannot carry must not stop the uplink
                self.stats.dropped_unencodable += len(spans)
                self._cutting = 0
                self._cut = []
                log.error("uplink dropped a batch of %d spans that cannot be encoded: %s", len(spans), e)
                continue
            stored = await self._spool_call(lambda: self.spool.put(seq, len(spans), payload))
            self._cutting = 0
            self._cut = []
            if stored is not None:
                self.stats.spans_spooled += len(spans)
                self.stats.batches_spooled += 1
                self._queue_for_sending(stored)
                self._spooled.set()
                if learns:
                    self._observe(spans, len(payload), tables.id)
            else:
                self.stats.dropped_spool_error += len(spans)
                if self._throttle.ready("spool-size"):
                    log.error("uplink could not spool a batch of %d spans (%d bytes, spool_max_bytes=%d): dropped",
                              len(spans), len(payload), self.spool.max_bytes)
            self._gauges()

    def _observe(self, spans: list[Span], size: int, table_id: bytes) -> None:
        """Show a spooled batch to the learner; start learning a candidate table set when one is due."""
        learner = self.learner
        learner.observe(spans, size, table_id)
        reason = learner.due()
        if reason and (self._learning is None or self._learning.done()):
            self._learning = asyncio.create_task(self._learn(reason), name="uplink-learn")

    async def _learn(self, reason: str) -> None:
        learner = self.learner
        spans, current, batch = learner.begin(reason)
        cand: Candidate | None = None
        try:
            cand = await asyncio.to_thread(learner.learn, spans, current, batch)
        except Exception as e:  # noqa: BLE001 - a failed candidate leaves the set in use as it is
            log.error("uplink: learning a table set failed: %s", e)
        finally:
            del spans
            adopt = learner.judge(cand)
        if cand is None:
            return
        if not adopt:
            log.debug("uplink: table set candidate (%s) not adopted: saves %.2f B/span, message %d bytes, %.0f "
                      "spans/s", reason, cand.saving, len(cand.message), learner.rate())
            return
        try:
            await self.tables.adopt(cand.tables, cand.message)
        except (UplinkError, OSError) as e:
            log.error("uplink: cannot keep table set %s (%s): going on with the set in use", cand.tables.id.hex(), e)
            return
        learner.adopt(cand)
        log.info("uplink: table set %s in use (%s): saves %.1f B/span on recent spans, message %d bytes, learned in "
                 "%.0f ms of CPU", cand.tables.id.hex(), reason, cand.saving, len(cand.message), cand.cpu_s * 1000)
        self._gauges()

    async def _spool_call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Call the spool until it has room: a full spool or disk, or one failing, holds the batch being cut (and,
        behind it, the queue and the agent's door) rather than drop what was accepted."""
        delay = 0.05
        while True:
            try:
                result = await call()
            except UplinkError as e:
                self.stats.spool_full_waits += 1
                self.stats.spool_blocked = 1
                if self._throttle.ready("spool"):
                    extra = self._throttle.take_suppressed("spool")
                    log.error("%s: waiting for room; the agent answers busy meanwhile%s", e,
                              f" ({extra} similar waits not shown)" if extra else "")
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), delay if isinstance(e, SpoolFull) else 1.0)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 2.0)
                continue
            self.stats.spool_blocked = 0
            return result

    async def _batch_due(self) -> bool:
        """Wait until a batch should be cut; False when closing with nothing left."""
        cfg = self.cfg
        while True:
            if not self._queue:
                if self._closing:
                    return False
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._closing or len(self._queue) >= cfg.batch_max_spans or self._queue_bytes >= cfg.batch_max_bytes:
                return True
            wait = (self._oldest or time.monotonic()) + cfg.batch_max_age - time.monotonic()
            if wait <= 0:
                return True
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                return True

    def _take_batch(self) -> list[Span]:
        """Take up to one batch of spans off the queue (by count and approximate bytes)."""
        cfg = self.cfg
        spans: list[Span] = []
        size = 0
        while self._queue and len(spans) < cfg.batch_max_spans:
            span, n = self._queue[0]
            if spans and size + n > cfg.batch_max_bytes:
                break
            self._queue.popleft()
            spans.append(span)
            size += n
        self._queue_bytes -= size
        self._cutting = len(spans)
        self._cut = spans
        self._oldest = time.monotonic() if self._queue else None
        self._queue_room.set()
        self._gauges()
        return spans

    async def _send_loop(self) -> None:
        """Send spooled batches oldest-first, one at a time, paced by `drain_rate`; when closing, until none is left to
        send or to be confirmed."""
        while True:
            entry = self._next_due()
            if entry is None:
                if self._cut_done and not self._awaiting:
                    return
                self._spooled.clear()
                await self._spooled.wait()
                continue
            entry.sending = True
            try:
                await self._pace()
                payload = await self.spool.read(entry)
                settled: bool | None = None
                if payload is not None:
                    settled = await self._deliver(entry, payload)
                await self._sent(entry, settled)
            finally:
                entry.sending = False
                self._gauges()

    def _next_due(self) -> SpoolEntry | None:
        while self._due:
            entry = self._due.popleft()
            if not entry.gone and not entry.settled:
                return entry
        return None

    async def _sent(self, entry: SpoolEntry, settled: bool | None) -> None:
        """After a send: forget a settled batch (True, or None: refused for good), else wait for its confirmation."""
        if entry.gone:
            return
        if settled is not False or entry.settled:
            await self._forget(entry)
            return
        if self._fallback and entry.table_id == NO_TABLES:
            # No gateway confirms: the broker's PUBACK is all there is, as before confirmations. Not for a batch
            # naming a table set: no gateway older than confirmations reads one, so a missing confirmation means the
            # gateway could not find the set, and the batch is sent again with its set published again first.
            self._released_batches += 1
            self._released_spans += entry.spans
            await self._forget(entry)
            return
        entry.awaiting = True
        entry.deadline = time.monotonic() + self.cfg.confirm_timeout * 2 ** min(entry.resends, 4)
        self._awaiting[entry.seq] = entry

    async def _forget(self, entry: SpoolEntry) -> None:
        """Take a settled batch out of the spool."""
        entry.awaiting = False
        self._awaiting.pop(entry.seq, None)
        self._by_seq.pop(entry.seq, None)
        await self.spool.remove(entry)
        self._room.set()
        await self._sweep_tables()
        if self._cut_done and not self._awaiting:
            self._spooled.set()
        self._gauges()

    # -------------------------------------------------------------------------------------------- confirmations

    def _on_confirm(self, pairs: list[tuple[int, Settled]]) -> None:
        """A gateway settled these batches: they may leave the spool."""
        self._last_confirm = time.monotonic()
        if self._fallback:
            self._fallback = False
            log.info("uplink: a gateway confirms batches again; they stay spooled until confirmed")
        for seq, outcome in pairs:
            entry = self._by_seq.get(seq)
            if entry is None or entry.gone or entry.settled:
                self.stats.confirms_unknown += 1
                continue
            if outcome.delivered:
                self.stats.spans_confirmed += entry.spans
                self.stats.batches_confirmed += 1
            else:
                self.stats.dropped_rejected += entry.spans
                if self._throttle.ready("refused"):
                    log.error("uplink batch seq=%d (%d spans) %s by the gateway for good", seq, entry.spans,
                              "refused" if outcome is Settled.REFUSED else "dropped (its backend refused it)")
            entry.settled = True
            if not entry.sending:  # else the sender forgets it once its send ends
                self._spawn(self._forget(entry))
        self._gauges()

    def _on_lost(self) -> None:
        """The connection broke: what the broker took but no gateway confirmed may be lost with it; send it again."""
        if not self._awaiting:
            return
        entries = sorted(self._awaiting.values(), key=lambda e: e.seq)
        self._awaiting.clear()
        for e in entries:
            e.awaiting = False
        self._due.extendleft(reversed(entries))
        self.stats.batches_resent += len(entries)
        self._spooled.set()
        self._gauges()

    async def _confirm_loop(self) -> None:
        """Send again what no gateway confirmed in time; fall back to PUBACKs when no gateway confirms at all."""
        while True:
            await asyncio.sleep(_CHECK_EVERY)
            now = time.monotonic()
            overdue = [e for e in self._awaiting.values() if e.deadline <= now]
            if not overdue:
                continue
            quiet = now - self._last_confirm >= self.cfg.confirm_timeout
            if quiet and not self._fallback:
                self._fallback = True
                log.warning("uplink: no gateway confirmed any batch for %.0f s: batches now leave the spool on the "
                            "broker's PUBACK alone, so a broker crash can lose them (is the gateway older than "
                            "confirmations, or not running? see docs/reliability.md)", self.cfg.confirm_timeout)
            resend = []
            for e in sorted(overdue, key=lambda e: e.seq):
                if (quiet and e.table_id == NO_TABLES) or e.resends >= _MAX_RESENDS:
                    if (not quiet or e.table_id != NO_TABLES) and self._throttle.ready("unconfirmed"):
                        log.error("uplink batch seq=%d (%d spans) never confirmed after %d resends: let go (can the "
                                  "gateway decode it, and find its table set?)", e.seq, e.spans, e.resends)
                    self._released_batches += 1
                    self._released_spans += e.spans
                    self._spawn(self._forget(e))
                else:
                    e.resends += 1
                    e.awaiting = False
                    del self._awaiting[e.seq]
                    resend.append(e)
            if resend:
                self._due.extendleft(reversed(resend))
                self.stats.batches_resent += len(resend)
                self._spooled.set()
            self._gauges()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _pace(self) -> None:
        # After an outage the spool may hold thousands of batches: sending them back to back would hit the
        # gateway (and every other node's gateway) with a storm, so batches leave no faster than drain_rate.
        rate = self.cfg.drain_rate
        if rate <= 0:
            return
        now = time.monotonic()
        if self._next_send > now:
            await asyncio.sleep(self._next_send - now)
            now = time.monotonic()
        self._next_send = max(now, self._next_send) + 1.0 / rate

    async def _sweep_tables(self) -> None:
        try:
            await self.tables.sweep([e.table_id for e in self.spool.entries], self._transport)
        except (UplinkError, OSError) as e:
            log.warning("uplink: table sets not swept: %s", e)

    async def _deliver(self, entry: SpoolEntry, payload: bytes) -> bool | None:
        """Send until taken (True: settled end to end; False: a confirmation is to follow) or refused for good (None);
        cancelled by close()."""
        seq, spans, table_id = entry.seq, entry.spans, entry.table_id
        backoff = Backoff(maximum=self.cfg.retry_max_backoff)
        # A batch sent again for want of a confirmation: its table set is published again first (a gateway may have
        # looked for it on a broker that had lost it).
        again = entry.resends > 0
        while True:
            try:
                if not await self.tables.ensure(table_id, self._transport, again):
                    self.stats.dropped_no_tables += spans
                    log.error("uplink batch seq=%d (%d spans) names table set %s, which this node no longer has: "
                              "dropped", seq, spans, table_id.hex())
                    return None
                again = False
                settled = await self._transport.send(payload)
            except SendError as e:
                self.stats.send_failures += 1
                if e.needs_tables == table_id:  # publish it again first; at once twice, then with backoff
                    again = True
                    if backoff.attempt < 2:
                        backoff.next()
                        continue
                if e.permanent:
                    self.stats.dropped_rejected += spans
                    log.error("uplink batch seq=%d (%d spans) refused for good: %s", seq, spans, e)
                    return None
                delay = e.retry_after_s if e.retry_after_s is not None else backoff.next()
                if self._throttle.ready("send"):
                    extra = self._throttle.take_suppressed("send")
                    log.warning("%s; retrying seq=%d in %.1fs%s", e, seq, delay,
                                f" ({extra} similar failures not shown)" if extra else "")
                await asyncio.sleep(delay)
                continue
            if backoff.attempt:
                log.info("uplink delivering again (seq=%d after %d failed attempts)", seq, backoff.attempt)
            if not entry.sent:
                entry.sent = True
                self.stats.spans_sent += spans
                self.stats.batches_sent += 1
            self.stats.bytes_sent += len(payload)
            if settled and not entry.settled:
                self.stats.spans_confirmed += spans
                self.stats.batches_confirmed += 1
            return settled

    # -------------------------------------------------------------------------------------------- metrics

    def submit_metrics(self, batch: MetricBatch) -> asyncio.Future[bool]:
        """Queue an `edge.model.MetricBatch`: it gets the next sequence number, is spooled and sent
        like a span batch (its own `HM` frame). Metrics are cumulative, so only the newest batch matters: one not
        yet spooled is replaced (counted in `metric_stats['superseded']`). Await the result to know it is spooled.
        """
        stats = self.metric_stats
        stats["submitted"] += 1
        if self._metrics_pending is not None:
            stats["superseded"] += 1
        self._metrics_pending = batch
        task = self._metrics_task
        if task is None or task.done():
            task = self._metrics_task = asyncio.ensure_future(self._spool_metrics())
        return task

    async def _spool_metrics(self) -> bool:
        stats = self.metric_stats
        await self.opened.wait()
        stored = None
        while (batch := self._metrics_pending) is not None:
            self._metrics_pending = None
            try:
                batch.seq = seq = await self.spool.next_seq()
                stored = await self.spool.put(seq, 0, encode_metrics(batch, self.cfg.zstd_level))
            except Exception as e:  # noqa: BLE001 - an unencodable value or a full disk costs one export, not the uplink
                stored = None
                log.error("uplink could not spool a metrics batch: %s", e)
            stats["spooled" if stored is not None else "dropped"] += 1
            if stored is not None:
                self._queue_for_sending(stored)
                self._spooled.set()
            self._gauges()
        return stored is not None

    async def close(self, timeout: float = 5.0) -> None:
        """Spool what is queued, send what the link takes within `timeout` seconds, then stop.

        With a disk spool, batches not yet acknowledged stay on disk for the next start; with a memory spool they
        are counted in `dropped_on_close`.
        """
        self._closing = True
        self._wake.set()
        if self._task is None:
            await asyncio.sleep(0)  # a run() task created but not yet started gets its turn first
        if self._task is None:
            asyncio.ensure_future(self.run())
            await asyncio.sleep(0)
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except asyncio.TimeoutError:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
