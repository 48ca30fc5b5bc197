"""The central gateway: batches in (MQTT subscription and HTTP POST), OTLP out. Stateless apart from a dedup window.

Delivery is at-least-once on both ingresses. Over HTTP a batch is answered 2xx only after its OTLP export
succeeded (or was refused for good), and 503 + Retry-After while the backend is down, so the node keeps it. Over
MQTT the gateway holds a persistent session (fixed client id, clean start off, session expiry) and sends the PUBACK
only after the export succeeded or the batch was refused for good: a gateway killed mid-export gets the message
again from the broker when it comes back. While the backend is down the MQTT loop holds its batch and retries, so
the broker (and behind it the nodes' spools) keep the rest. A settled MQTT batch is then confirmed to its node on the
node's ack topic (uplink/gateway/confirmer.py): the node keeps it until then, so a broker that loses its queue loses
nothing. Batches are idempotent: a (node, seq) settled recently, here or before a restart (uplink/gateway/dedup.py),
is not exported twice.

The node is the one the transport proves (uplink/gateway/identity.py): a batch claiming another is refused. Memory is
reserved before a batch is inflated (uplink/gateway/budget.py), so no batch takes the gateway past its limit.

A format-3 batch is decoded with the table set it names (uplink/gateway/tables.py): from the cache, uploaded by its
node over HTTP, or fetched from the node's retained MQTT topic. A batch whose set cannot be had is never exported nor
confirmed: over HTTP the node is told which set to upload (409); over MQTT the batch waits up to `gateway.table_wait`
for it and then stays with its node, which sends it again, its set published again first (counted in
`tables.missing`). The cache is bounded within `gateway.memory_limit`.
"""
from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.config.uplink import GatewayConfig
from edge.errors import DecodeError
from edge.model import MetricBatch
from edge.net.mqtt_client import MqttError
from edge.net.retry import Backoff, Throttle
from edge.runtime.rss import read_rss

from ..confirm import Settled
from ..wire import NEEDS_TABLES_HEADER, Batch, ExpansionExceeded, UnknownTableSet, declared_size, \
    decode_metrics_counted, is_metric_batch
from .budget import MemoryBudget, decode_cost, expansion_limit, export_cost
from .confirmer import Confirmer
from .dedup import SeenBatches
from .identity import UNPROVEN, HttpAuth, Identity
from .otlp_export import OtlpExporter
from .tables import GatewayTables, MqttTableSource


__all__ = ["Gateway", "GatewayStats", "Outcome", "serve_gateway"]

log = logging.getLogger(__name__)

# How long an HTTP request may wait for a struggling backend before the node is told to come back later.
_HTTP_EXPORT_BUDGET = 2.0
# Batches the broker may have on their way to this instance unacknowledged; the rest wait in the broker. The client
# queues as many as that (a smaller queue would stop its reader before the SUBACK that follows a persistent session's
# backlog), and the memory budget keeps room for them.
_RECEIVE_MAXIMUM = 4
# Memory no budget accounts: allocator slack, connections, the exporter's channel, the dedup window's growth.
_UNACCOUNTED = 24 * 1024 * 1024


class Outcome(enum.Enum):
    """What the gateway did with one batch."""

    EXPORTED = "exported"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    WRONG_NODE = "wrong-node"  # claims a node other than the one its transport proves
    DROPPED = "dropped"  # the backend refused it for good
    # Not settled: the node keeps the batch and sends it again (HTTP: 503; MQTT: acknowledged to the broker but not
    # confirmed to the node). The backend is down (HTTP), the gateway is busy, or the batch cannot be decoded yet.
    RETRY_LATER = "retry-later"
    NEEDS_TABLES = "needs-tables"  # the table set it names is not to be had (yet): not exported, the node keeps it


# What the node is told, per outcome: it may forget the batch. Outcomes missing here leave it with the node.
_SETTLED = {Outcome.EXPORTED: Settled.EXPORTED, Outcome.DUPLICATE: Settled.DUPLICATE, Outcome.DROPPED: Settled.DROPPED,
            Outcome.MALFORMED: Settled.REFUSED, Outcome.OVERSIZED: Settled.REFUSED, Outcome.WRONG_NODE: Settled.REFUSED}


@dataclass(slots=True)
class GatewayStats:
    """Counters of the gateway."""

    batches_received: int = 0
    batches_exported: int = 0
    batches_malformed: int = 0
    batches_oversized: int = 0
    batches_expanding: int = 0  # refused: its spans would expand in the OTLP request past its memory reservation
    batches_duplicate: int = 0
    batches_deferred: int = 0  # answered 503 while the backend was down
    batches_wrong_node: int = 0  # refused: the batch claims a node its transport does not prove
    batches_busy: int = 0  # HTTP: answered 503 because decoding would have gone over the memory budget
    batches_reserved_more: int = 0  # decoded batches whose counted expansion reserved more before their export
    requests_unauthorized: int = 0
    mqtt_subscriptions: int = 0  # successful (re)subscriptions; more than one means the broker link was restored
    mqtt_acks: int = 0  # PUBACKs sent, each after its batch was settled
    mqtt_unconfirmed: int = 0  # acknowledged to the broker but not settled: the node sends them again
    export_stalls: int = 0  # times an MQTT batch outlived retry_max_elapsed and was held for another round
    spans_received: int = 0
    spans_exported: int = 0
    spans_rejected: int = 0  # refused by the backend in a partial success
    spans_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


@dataclass(slots=True)
class _Result:
    outcome: Outcome
    spans: int = 0
    detail: str = ""
    retry_after_s: float | None = None
    seq: int | None = None  # known once decoded
    table_id: bytes = b""  # NEEDS_TABLES: the set the node should publish again

    def settled(self) -> Settled | None:
        """What to confirm to the node; None when the node must keep the batch."""
        return _SETTLED.get(self.outcome) if self.seq is not None else None


class Gateway:
    """Receives uplink batches and exports them as OTLP; `run(stop)` serves until `stop` is set."""

    def __init__(self, cfg: GatewayConfig, exporter: OtlpExporter | None = None) -> None:
        self.cfg = cfg
        self.stats = GatewayStats()
        self.exporter = exporter or OtlpExporter(cfg)
        self.http_port: int | None = None
        self.ready = asyncio.Event()  # HTTP bound and, if enabled, the MQTT subscription made
        self._mqtt_ready = asyncio.Event()
        self.seen = SeenBatches(cfg.dedup_window, Path(cfg.state_dir) / cfg.mqtt_client_id() if cfg.state_dir else None)
        self._inflight: dict[tuple[str, int], asyncio.Future[_Result]] = {}
        self._throttle = Throttle()
        self.auth = HttpAuth(cfg)
        self.confirmer = Confirmer(cfg.ack_topic)
        # Sized at start from what the process then holds (set_budget); until then, the whole limit.
        self.budget = MemoryBudget(cfg.memory_limit)
        self.tables = GatewayTables(cfg, MqttTableSource(cfg) if cfg.mqtt_enabled else None)
        self.metric_stats = {"received": 0, "exported": 0, "malformed": 0, "expanding": 0, "duplicate": 0, "dropped": 0,
                             "deferred": 0}

    # ------------------------------------------------------------------------------------------------ ingest

    async def ingest(self, payload: bytes, origin: str, http: bool = False, identity: Identity = UNPROVEN) -> _Result:
        """Check, decode, deduplicate and export one batch; never raises for bad input or a failing backend.

        `identity` is the node the transport proves. Memory for decoding is reserved first: over HTTP a busy gateway
        returns RETRY_LATER after a short wait, over MQTT it waits. Over HTTP a backend outage returns RETRY_LATER
        after a short budget; otherwise (MQTT) the call retries until the export succeeds or is refused for good, so
        the caller acknowledges only a settled batch.
        """
        cfg = self.cfg
        self.stats.batches_received += 1
        if len(payload) > cfg.max_batch_bytes:
            self.stats.batches_oversized += 1
            return self._bad(Outcome.OVERSIZED, origin, f"{len(payload)} bytes, over max_batch_bytes={cfg.max_batch_bytes}")
        try:
            declared = declared_size(payload)
        except DecodeError as e:
            self.stats.batches_malformed += 1
            return self._bad(Outcome.MALFORMED, origin, str(e))
        cost = decode_cost(declared)
        if cost > self.budget.total:
            self.stats.batches_oversized += 1
            return self._bad(Outcome.OVERSIZED, origin, f"inflates to {declared} bytes, which could take {cost >> 20} "
                             f"MiB to decode: more than gateway.memory_limit leaves ({self.budget.total >> 20} MiB)")
        if not await self.budget.reserve(cost, _HTTP_EXPORT_BUDGET if http else None):
            self.stats.batches_busy += 1
            return _Result(Outcome.RETRY_LATER, detail="gateway busy decoding other batches", retry_after_s=1.0)
        try:
            if is_metric_batch(payload):
                return await self._ingest_metrics(payload, declared, origin, http, identity)
            return await self._ingest_spans(payload, declared, origin, http, identity)
        finally:
            self.budget.release(cost)

    async def _ingest_spans(self, payload: bytes, declared: int, origin: str, http: bool, identity: Identity) -> _Result:
        try:
            # Over HTTP the node uploads a missing set when told (409); over MQTT it is fetched here.
            batch = await self.tables.decode(payload, declared, self.cfg.max_batch_spans, fetch=not http,
                                             max_expanded=expansion_limit(declared), otlp=True)
        except UnknownTableSet as e:
            return self._needs_tables(e.table_id, origin, http)
        except ExpansionExceeded as e:
            return self._expanding(e, origin, identity)
        except DecodeError as e:
            self.stats.batches_malformed += 1
            return self._bad(Outcome.MALFORMED, origin, str(e))
        wrong = self._wrong_node(batch.node_id, batch.seq, identity, origin)
        if wrong is not None:
            return wrong
        extra, refused = await self._reserve_export(declared, batch.expanded, batch.node_id, batch.seq, origin, http)
        if refused is not None:
            return refused
        try:
            return await self._settle(batch, http, origin, identity)
        finally:
            self.budget.release(extra)

    async def _reserve_export(self, declared: int, expanded: int, node_id: str, seq: int, origin: str,
                              http: bool) -> tuple[int, _Result | None]:
        """Reserve what a decoded batch's export takes beyond what its declared size reserved (from what the decoders
        counted) before the OTLP request is built: (bytes reserved, None), or (0, the answer) when it must wait
        (HTTP: told to come back) or can never fit (refused for good)."""
        extra = max(0, export_cost(declared, expanded) - decode_cost(declared))
        if not extra:
            return 0, None
        need = decode_cost(declared) + extra
        if need > self.budget.total:
            self.stats.batches_expanding += 1
            result = self._bad(Outcome.OVERSIZED, origin, f"uplink batch seq {seq} of node {node_id[:64]!r} takes "
                               f"{expanded} bytes once exported, {need >> 20} MiB to export: more than "
                               f"gateway.memory_limit leaves ({self.budget.total >> 20} MiB)")
            result.seq = seq
            return 0, result
        if not await self.budget.reserve(extra, _HTTP_EXPORT_BUDGET if http else None):
            self.stats.batches_busy += 1
            return 0, _Result(Outcome.RETRY_LATER, detail="gateway busy exporting other batches", retry_after_s=1.0)
        self.stats.batches_reserved_more += 1
        return extra, None

    async def _settle(self, batch: Batch, http: bool, origin: str, identity: Identity) -> _Result:
        """Deduplicate and export a decoded batch whose memory is reserved."""
        n = batch.span_count()
        key = (identity.key(batch.node_id), batch.seq)
        if key in self.seen:
            self.stats.batches_duplicate += 1
            log.info("duplicate batch node=%s seq=%d from %s dropped", key[0], batch.seq, origin)
            return _Result(Outcome.DUPLICATE, n, seq=batch.seq)
        running = self._inflight.get(key)
        if running is not None:  # the node resent while the first copy is still being exported
            self.stats.batches_duplicate += 1
            return await asyncio.shield(running)
        fut: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        self.stats.spans_received += n
        result = _Result(Outcome.RETRY_LATER, n)  # if cancelled mid-export, a waiting HTTP copy is told to resend
        try:
            result = await self._export(batch, http, origin, key)
            result.seq = batch.seq
        finally:
            del self._inflight[key]
            fut.set_result(result)
        if result.outcome is not Outcome.RETRY_LATER:
            self.seen.add(key)
        return result

    def _expanding(self, e: ExpansionExceeded, origin: str, identity: Identity) -> _Result:
        """A refusal for good of a batch whose spans would expand past its reservation: the same bytes would be
        refused again, so its node is told (confirmed refused over MQTT, 413 over HTTP) and forgets it."""
        wrong = self._wrong_node(e.node_id, e.seq, identity, origin)
        if wrong is not None:
            return wrong
        self.stats.batches_expanding += 1
        result = self._bad(Outcome.OVERSIZED, origin, str(e))
        result.seq = e.seq
        return result

    def _wrong_node(self, claimed: str, seq: int, identity: Identity, origin: str) -> _Result | None:
        """A refusal when the batch claims a node other than the one its transport proves."""
        if identity.node is None or claimed == identity.node:
            return None
        self.stats.batches_wrong_node += 1
        detail = (f"batch claims node {claimed!r} but {identity.how} proves node {identity.node!r}: a node may only "
                  "send its own batches")
        result = self._bad(Outcome.WRONG_NODE, origin, detail)
        result.seq = seq
        return result

    async def _export(self, batch: Batch, http: bool, origin: str, key: tuple[str, int]) -> _Result:
        n = batch.span_count()
        if not n:
            self.stats.batches_exported += 1
            return _Result(Outcome.EXPORTED, 0)
        if http:
            res = await self._export_once(batch, min(self.cfg.retry_max_elapsed, _HTTP_EXPORT_BUDGET))
        else:
            res = await self._export_holding(batch, origin, key)
        if res.ok:
            self.stats.batches_exported += 1
            self.stats.spans_exported += res.exported
            self.stats.spans_rejected += res.rejected
            return _Result(Outcome.EXPORTED, n, res.error)
        if res.retryable and http:
            self.stats.spans_received -= n  # it will be received again
            self.stats.batches_deferred += 1
            return _Result(Outcome.RETRY_LATER, n, res.error, res.retry_after_s)
        self.stats.spans_dropped += n
        return _Result(Outcome.DROPPED, n, res.error)

    async def _export_once(self, batch: Batch, max_elapsed: float | None = None) -> Any:
        # The request written while decoding where it could be; otherwise the exporter writes it from the spans.
        if batch.request is not None:
            return await self.exporter.export_request(batch.request, batch.request_spans, max_elapsed)
        return await self.exporter.export(batch.spans, max_elapsed)

    async def _export_holding(self, batch: Batch, origin: str, key: tuple[str, int]) -> Any:
        # The message stays unacknowledged while the backend is down: the broker keeps the queue, and a gateway
        # stopped meanwhile gets it again. Dropping it here would lose data the broker still holds safely.
        waited = 0.0
        while True:
            res = await self._export_once(batch)
            if res.ok or not res.retryable:
                return res
            waited += self.cfg.retry_max_elapsed
            self.stats.export_stalls += 1
            log.error("batch node=%s seq=%d (%d spans) from %s held: backend %s failing for %.0fs: %s; "
                      "the broker keeps the queue meanwhile", key[0], key[1], batch.span_count(), origin,
                      self.exporter.endpoint, waited, res.error)
            if self.cfg.retry_max_elapsed <= 0:
                await asyncio.sleep(1.0)

    async def _ingest_metrics(self, payload: bytes, declared: int, origin: str, http: bool,
                              identity: Identity) -> _Result:
        """A metrics frame: decode, deduplicate, export as OTLP metrics.

        Metrics are cumulative: a batch the backend cannot take within the retry budget is dropped (counted), as
        the next one carries the same counts and more; over HTTP the node is still told to retry later.
        """
        ms = self.metric_stats
        ms["received"] += 1
        try:
            batch, expanded = decode_metrics_counted(payload, declared, expansion_limit(declared))
        except ExpansionExceeded as e:
            ms["expanding"] += 1
            return self._expanding(e, origin, identity)
        except DecodeError as e:
            ms["malformed"] += 1
            self.stats.batches_malformed += 1
            return self._bad(Outcome.MALFORMED, origin, str(e))
        wrong = self._wrong_node(batch.node_id, batch.seq, identity, origin)
        if wrong is not None:
            return wrong
        extra, refused = await self._reserve_export(declared, expanded, batch.node_id, batch.seq, origin, http)
        if refused is not None:
            return refused
        try:
            return await self._settle_metrics(batch, origin, http, identity)
        finally:
            self.budget.release(extra)

    async def _settle_metrics(self, batch: MetricBatch, origin: str, http: bool, identity: Identity) -> _Result:
        """Deduplicate and export a decoded metrics batch whose memory is reserved."""
        ms = self.metric_stats
        key = (identity.key(batch.node_id), batch.seq)
        if key in self.seen:
            ms["duplicate"] += 1
            return _Result(Outcome.DUPLICATE, 0, seq=batch.seq)
        budget = min(self.cfg.retry_max_elapsed, _HTTP_EXPORT_BUDGET) if http else None
        res = await self.exporter.export_metrics(batch, max_elapsed=budget)
        if res.ok:
            ms["exported"] += 1
            self.seen.add(key)
            return _Result(Outcome.EXPORTED, 0, res.error, seq=batch.seq)
        if res.retryable and http:
            ms["deferred"] += 1
            return _Result(Outcome.RETRY_LATER, 0, res.error, res.retry_after_s)
        ms["dropped"] += 1
        self.seen.add(key)
        if self._throttle.ready("metrics"):
            log.warning("metrics batch node=%s seq=%d from %s dropped: %s (metrics are cumulative: the next batch "
                        "carries these counts)", batch.node_id, batch.seq, origin, res.error)
        return _Result(Outcome.DROPPED, 0, res.error, seq=batch.seq)

    def _needs_tables(self, table_id: bytes, origin: str, http: bool) -> _Result:
        detail = f"needs table set {table_id.hex()}, which this gateway does not hold"
        if not http and self._throttle.ready("tables"):
            extra = self._throttle.take_suppressed("tables")
            log.warning("batch from %s not exported: table set %s not found within %.0fs; the node keeps the batch "
                        "and sends it again%s", origin, table_id.hex(), self.cfg.table_wait,
                        f" ({extra} more not shown)" if extra else "")
        return _Result(Outcome.NEEDS_TABLES, 0, detail, table_id=table_id)

    def _bad(self, outcome: Outcome, origin: str, detail: str) -> _Result:
        if self._throttle.ready(outcome.value):
            extra = self._throttle.take_suppressed(outcome.value)
            log.warning("%s batch from %s dropped: %s%s", outcome.value, origin, detail,
                        f" ({extra} more not shown)" if extra else "")
        return _Result(outcome, 0, detail)

    def set_budget(self) -> None:
        """Size the memory budget from what the process holds now (call once serving has started)."""
        cfg = self.cfg
        read_ahead = (_RECEIVE_MAXIMUM + 1) * (cfg.max_batch_bytes + 65536) if cfg.mqtt_enabled else 0
        baseline = read_rss()
        total = cfg.memory_limit - baseline - read_ahead - _UNACCOUNTED - self.tables.cache.max_bytes
        if total < cfg.memory_limit // 4:
            log.error("gateway.memory_limit (%d MiB) leaves little room above what the gateway holds idle (%d MiB) and "
                      "what its MQTT client may read ahead (%d MiB, from gateway.max_batch_bytes): raise it; batches "
                      "get %d MiB regardless", cfg.memory_limit >> 20, baseline >> 20, read_ahead >> 20,
                      (cfg.memory_limit // 4) >> 20)
            total = cfg.memory_limit // 4
        self.budget.total = total
        log.info("gateway memory: limit %d MiB, idle %d MiB, MQTT read-ahead %d MiB, table sets %d MiB, for decoding "
                 "batches %d MiB", cfg.memory_limit >> 20, baseline >> 20, read_ahead >> 20,
                 self.tables.cache.max_bytes >> 20, total >> 20)

    # ------------------------------------------------------------------------------------------------ serving

    async def run(self, stop: asyncio.Event) -> None:
        """Serve MQTT and HTTP ingress until `stop` is set."""
        tasks: list[asyncio.Task[None]] = []
        runner = None
        try:
            await asyncio.to_thread(self.seen.open)
            tasks.append(asyncio.create_task(self.seen.run(), name="gateway-seen"))
            if self.cfg.http_listen is not None:
                runner = await self._start_http()
                for warning in self.auth.warnings():
                    log.warning("%s", warning)
            self.set_budget()
            if self.cfg.mqtt_enabled:
                tasks.append(asyncio.create_task(self._mqtt_loop(), name="gateway-mqtt"))
                tasks.append(asyncio.create_task(self.confirmer.run(), name="gateway-confirm"))
                tasks.append(asyncio.create_task(self._mark_ready(), name="gateway-ready"))
            else:
                self.ready.set()
            log.info("gateway exporting to %s", self.exporter.endpoint)
            await stop.wait()
        finally:
            pending = set(tasks)
            while pending:
                # Cancelled again until done: before Python 3.12 asyncio.wait_for can swallow a cancellation that
                # arrives as what it waits for completes, and a loop would then run on.
                for t in pending:
                    t.cancel()
                _, pending = await asyncio.wait(pending, timeout=1.0)
            for t in tasks:
                if not t.cancelled() and t.exception() is not None:
                    log.error("gateway task %s failed: %r", t.get_name(), t.exception())
            if runner is not None:
                await runner.cleanup()
            await self.exporter.close()
            self.seen.close()

    async def _mark_ready(self) -> None:
        await self._mqtt_ready.wait()
        self.ready.set()

    async def _mqtt_loop(self) -> None:
        cfg = self.cfg
        backoff = Backoff(maximum=30.0)
        sub = cfg.subscription()
        client_id = cfg.mqtt_client_id()
        while True:
            # A persistent session under a fixed client id: what arrives while this instance is away (restart,
            # broker link down) waits in the broker. PUBACK only once the batch is settled (manual_ack), and at
            # most _RECEIVE_MAXIMUM unacknowledged batches on their way here.
            client = cfg.mqtt_client(client_id, "gateway", receive_maximum=_RECEIVE_MAXIMUM,
                                     max_queued=_RECEIVE_MAXIMUM, manual_ack=True, clean_start=False,
                                     session_expiry=int(cfg.session_expiry), max_packet_size=cfg.max_batch_bytes + 65536)
            try:
                async with client:
                    await client.subscribe(sub, qos=1)
                    log.info("gateway subscribed to %s on %s as %s", sub, cfg.broker, client_id)
                    backoff.reset()
                    self.stats.mqtt_subscriptions += 1
                    self.confirmer.connected(client)
                    self._mqtt_ready.set()
                    # One batch at a time keeps PUBACKs in arrival order, as MQTT requires; more throughput comes
                    # from more gateway instances in the share group.
                    async for message in client.messages:
                        await self._mqtt_batch(message.topic, message.payload)
                        if message.qos > 0:
                            client.ack(message)
                            self.stats.mqtt_acks += 1
            except MqttError as e:
                self.confirmer.connected(None)
                delay = backoff.next()
                if self._throttle.ready("broker"):
                    log.warning("gateway broker unreachable at %s: %s; retrying in %.1fs", cfg.broker, e, delay)
                await asyncio.sleep(delay)

    async def _mqtt_batch(self, topic: str, payload: bytes) -> None:
        """Ingest one batch from MQTT as the node its topic names, and confirm it to that node once settled."""
        origin = f"mqtt topic {topic}"
        node = self.cfg.node_of_topic(topic)
        if node is None:  # not under the subscription's pattern: no node to speak for, nobody to confirm to
            self.stats.batches_received += 1
            self.stats.batches_wrong_node += 1
            self._bad(Outcome.WRONG_NODE, origin, f"the topic does not name a node under {self.cfg.topic}")
            return
        result = await self.ingest(payload, origin, identity=Identity(node, "its MQTT topic"))
        settled = result.settled()
        if settled is not None and result.seq is not None:
            self.confirmer.add(node, result.seq, settled)
        elif result.outcome in (Outcome.RETRY_LATER, Outcome.NEEDS_TABLES):
            self.stats.mqtt_unconfirmed += 1

    async def _start_http(self) -> Any:
        from aiohttp import web

        assert self.cfg.http_listen is not None
        host, port = self.cfg.http_listen
        app = web.Application(client_max_size=self.cfg.max_batch_bytes)
        app.router.add_post("/v1/batches", self._http_batches)
        app.router.add_put("/v1/tables/{table_id}", self._http_tables)
        app.router.add_get("/healthz", self._http_health)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        tls = self._server_tls()
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
        self.http_port = runner.addresses[0][1]
        log.info("gateway accepting batches on %s://%s:%d/v1/batches%s", "https" if tls else "http", host,
                 self.http_port, " (client certificates required)" if self.cfg.http_client_ca_file else "")
        return runner

    def _server_tls(self) -> Any:
        """The TLS context of the HTTP listener, or None for cleartext."""
        cfg = self.cfg
        if not cfg.http_cert_file:
            return None
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cfg.http_cert_file, cfg.http_key_file)
        if cfg.http_client_ca_file:
            ctx.load_verify_locations(cfg.http_client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _identify(self, request: Any, what: str) -> tuple[Identity | None, Any]:
        """The node the request proves (token or client certificate), or None and the 401 to answer."""
        from aiohttp import web

        peercert = request.transport.get_extra_info("peercert") if request.transport is not None else None
        identity = self.auth.identify(request.headers.get("Authorization", ""), peercert)
        if identity is not None:
            return identity, None
        self.stats.requests_unauthorized += 1
        if self._throttle.ready("auth"):
            log.warning("%s from %s refused: missing or wrong bearer token", what, request.remote)
        return None, web.Response(status=401, text="missing or wrong bearer token\n",
                                  headers={"WWW-Authenticate": "Bearer"})

    async def _http_tables(self, request: Any) -> Any:
        """PUT /v1/tables/<id>: a node's table set, verified against the id before it is cached (an id is a content
        hash, so whichever node uploads it, it means the same tables)."""
        from aiohttp import web

        identity, refused = self._identify(request, "table set")
        if identity is None:
            return refused
        origin = f"http {request.remote}" + (f" ({identity.node})" if identity.node else "")
        try:
            table_id = bytes.fromhex(request.match_info["table_id"])
        except ValueError:
            table_id = b""
        if len(table_id) != 8:
            self.tables.stats.refused += 1
            return web.Response(status=400, text="the table-set id must be 16 hex digits\n")
        limit = self.cfg.max_table_bytes
        if request.content_length is not None and request.content_length > limit:
            self.tables.stats.refused += 1
            return web.Response(status=413, text=f"table set larger than {limit} bytes\n")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            self.tables.stats.refused += 1
            return web.Response(status=413, text=f"table set larger than {limit} bytes\n")
        if not self.tables.upload(table_id, body, origin):
            return web.Response(status=400, text=f"table set {table_id.hex()} refused: not a valid message for that id\n")
        return web.Response(status=204)

    async def _http_batches(self, request: Any) -> Any:
        from aiohttp import web

        identity, refused = self._identify(request, "batch")
        if identity is None:
            return refused
        origin = f"http {request.remote}" + (f" ({identity.node})" if identity.node else "")
        limit = self.cfg.max_batch_bytes
        if request.content_length is not None and request.content_length > limit:
            self.stats.batches_received += 1
            self.stats.batches_oversized += 1
            self._bad(Outcome.OVERSIZED, origin, f"{request.content_length} bytes, over {limit}")
            return web.Response(status=413, text=f"batch larger than {limit} bytes\n")
        # The body's bytes are reserved before it is read: many large bodies at once wait or are told to come back.
        wire = request.content_length if request.content_length is not None else limit
        if not await self.budget.reserve(min(wire, self.budget.total), _HTTP_EXPORT_BUDGET):
            self.stats.batches_busy += 1
            return web.Response(status=503, text="gateway busy\n", headers={"Retry-After": "1"})
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                self.stats.batches_received += 1
                self.stats.batches_oversized += 1
                self._bad(Outcome.OVERSIZED, origin, f"body over {limit} bytes")
                return web.Response(status=413, text=f"batch larger than {limit} bytes\n")
            res = await self.ingest(body, origin, http=True, identity=identity)
        finally:
            self.budget.release(min(wire, self.budget.total))
        if res.outcome is Outcome.MALFORMED:
            return web.Response(status=400, text=res.detail + "\n")
        if res.outcome is Outcome.OVERSIZED:
            return web.Response(status=413, text=res.detail + "\n")
        if res.outcome is Outcome.WRONG_NODE:
            return web.Response(status=403, text=res.detail + "\n")
        if res.outcome is Outcome.NEEDS_TABLES:  # the node uploads the set and sends the batch again
            return web.Response(status=409, text=res.detail + "\n", headers={NEEDS_TABLES_HEADER: res.table_id.hex()})
        if res.outcome is Outcome.RETRY_LATER:
            wait = max(1, math.ceil(res.retry_after_s or 1))
            return web.Response(status=503, text=f"retry later: {res.detail}\n", headers={"Retry-After": str(wait)})
        return web.json_response({"status": res.outcome.value, "spans": res.spans,
                                  **({"detail": res.detail} if res.detail else {})})

    async def _http_health(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(text=json.dumps({"status": "ok", "gateway": self.stats.as_dict(),
                                             "exporter": self.exporter.stats.as_dict(),
                                             "tables": self.tables.stats.as_dict(),
                                             "memory": {"budget": self.budget.total, "reserved": self.budget.used,
                                                        "peak": self.budget.peak, "waits": self.budget.waited,
                                                        "rss": read_rss()},
                                             "confirmations": {"sent": self.confirmer.sent,
                                                               "unheard": self.confirmer.unheard,
                                                               "pending": self.confirmer.pending},
                                             "dedup": {"remembered": len(self.seen), "durable": self.seen.durable,
                                                       "loaded": self.seen.loaded}}),
                            content_type="application/json")


async def serve_gateway(cfg: Config, stop: asyncio.Event) -> None:
    """Run the gateway described by `cfg.gateway` until `stop` is set (the CLI's `helix gateway`)."""
    await Gateway(cfg.gateway).run(stop)
