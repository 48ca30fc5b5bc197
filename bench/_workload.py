"""A deterministic generator of realistic traces for benchmarks: SDK business spans fleshed out by kernel-like spans.

Each trace is one request through a small shop: an SDK server span (business attributes), internal SDK spans,
and eBPF-observed HTTP and database calls carrying the usual semantic-convention attributes. Ids are random,
times have nanosecond jitter, and values vary the way real traffic varies (ids in URLs, peer ports, sizes).
"""
from __future__ import annotations

import random

from edge.model import Event, Resource, Scope, Source, Span, SpanKind, StatusCode

__all__ = ["realistic_spans"]

_SERVICES = {
    "orders": ("POST", "/api/orders", "createOrder"),
    "promotions": ("POST", "/api/promotions/apply", "applyPromotion"),
    "risk": ("POST", "/api/risk/review", "riskReview"),
    "catalog": ("GET", "/api/products/{id}", "getProduct"),
}
_TIERS = ("free", "silver", "gold", "platinum")
_UAS = ("python-requests/2.31.0", "Go-http-client/1.1", "okhttp/4.12.0")
_SQL = ("SELECT * FROM orders WHERE id = ?", "INSERT INTO orders (id, customer, total) VALUES (?, ?, ?)",
        "UPDATE stock SET qty = qty - ? WHERE sku = ?")


def _resource(service: str, host: int) -> Resource:
    return Resource.of({
        "service.name": service,
        "service.version": "1.4.2",
        "deployment.environment": "prod",
        "host.name": f"edge-node-{host:02d}",
        "host.arch": "arm64",
        "os.type": "linux",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": "1.25.0",
    })


_SDK_SCOPE = Scope("shop.instrumentation", "1.4.2")
_EBPF_SCOPE = Scope("helix.ebpf", "0.1.0")


def realistic_spans(n_traces: int, seed: int) -> list[Span]:
    """Spans of `n_traces` traces, in the order a node would emit them (children end, and are emitted, first)."""
    rng = random.Random(seed)
    resources = {(svc, h): _resource(svc, h) for svc in _SERVICES for h in range(3)}
    now = 1_732_500_000_000_000_000 + rng.randrange(10**9)
    spans: list[Span] = []

    def sid() -> bytes:
        return rng.getrandbits(64).to_bytes(8, "big") or b"\x01" * 8

    def http_span(tid: bytes, parent: bytes, start: int, dur: int, svc: str, host: int, peer: str,
                  method: str, path: str, route: str, status: int, kind: SpanKind) -> Span:
        return Span(
            trace_id=tid, span_id=sid(), parent_span_id=parent, name=f"{method} {route}", kind=kind,
            start_ns=start, end_ns=start + dur, status_code=StatusCode.ERROR if status >= 500 else StatusCode.UNSET,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "http.route": route,
                "http.response.status_code": status,
                "server.address": peer,
                "server.port": 8080,
                "network.peer.address": f"10.0.{rng.randrange(4)}.{rng.randrange(2, 250)}",
                "network.protocol.version": "1.1",
                "user_agent.original": rng.choice(_UAS),
            },
            resource=resources[(svc, host)], scope=_EBPF_SCOPE, source=Source.EBPF,
        )

    for _ in range(n_traces):
        now += rng.randrange(200_000, 3_000_000)
        tid = rng.getrandbits(128).to_bytes(16, "big")
        host = rng.randrange(3)
        order_id = rng.randrange(10**6, 10**7)
        customer = f"c-{rng.randrange(10**5):05d}"
        root_id = sid()
        root_start = now
        t = root_start + rng.randrange(20_000, 200_000)
        trace: list[Span] = []

        # eBPF sees the inbound request on the orders service, as the SDK's child.
        failed = rng.random() < 0.02
        # Business steps the SDK instruments, each with an outbound HTTP call seen by eBPF.
        for svc in ("promotions", "risk", "catalog"):
            method, route, op = _SERVICES[svc]
            path = route.replace("{id}", str(rng.randrange(1, 5000)))
            step_id = sid()
            step_start = t
            call_start = t + rng.randrange(5_000, 50_000)
            call_dur = rng.randrange(300_000, 8_000_000)
            call = http_span(tid, step_id, call_start, call_dur, "orders", host, f"{svc}.shop.svc", method, path, route,
                             503 if failed and svc == "risk" else 200, SpanKind.CLIENT)
            server = http_span(tid, call.span_id, call_start + rng.randrange(50_000, 300_000),
                               call_dur - rng.randrange(100_000, 290_000), svc, rng.randrange(3), "0.0.0.0", method, path,
                               route, call.attributes["http.response.status_code"], SpanKind.SERVER)  # type: ignore[arg-type]
            step_end = call_start + call_dur + rng.randrange(10_000, 100_000)
            step = Span(
                trace_id=tid, span_id=step_id, parent_span_id=root_id, name=op, kind=SpanKind.INTERNAL,
                start_ns=step_start, end_ns=step_end,
                attributes={"order.id": order_id, "customer.id": customer, "step": svc},
                resource=resources[("orders", host)], scope=_SDK_SCOPE, source=Source.SDK_OTLP,
            )
            trace += [server, call, step]
            t = step_end + rng.randrange(5_000, 50_000)

        db_start = t
        db = Span(
            trace_id=tid, span_id=sid(), parent_span_id=root_id, name="INSERT orders", kind=SpanKind.CLIENT,
            start_ns=db_start, end_ns=db_start + rng.randrange(200_000, 3_000_000),
            attributes={"db.system": "postgresql", "db.namespace": "shop", "db.operation.name": "INSERT",
                        "db.query.text": rng.choice(_SQL), "server.address": "db.shop.svc", "server.port": 5432},
            resource=resources[("orders", host)], scope=_EBPF_SCOPE, source=Source.EBPF,
        )
        trace.append(db)
        root_end = db.end_ns + rng.randrange(20_000, 200_000)
        root = Span(
            trace_id=tid, span_id=root_id, name="createOrder", kind=SpanKind.SERVER,
            start_ns=root_start, end_ns=root_end,
            status_code=StatusCode.ERROR if failed else StatusCode.UNSET,
            status_message="risk review unavailable" if failed else "",
            attributes={
                "order.id": order_id,
                "customer.id": customer,
                "customer.tier": rng.choice(_TIERS),
                "cart.items": rng.randrange(1, 12),
                "order.total": round(rng.uniform(5, 500), 2),
                "payment.method": rng.choice(("card", "wallet", "invoice")),
                "http.request.method": "POST",
                "http.route": "/api/orders",
            },
            resource=resources[("orders", host)], scope=_SDK_SCOPE, source=Source.SDK_OTLP,
        )
        if failed:
            root.events = (Event("exception", root_end - 10_000, {
                "exception.type": "RiskUnavailable", "exception.message": "risk review returned 503"}),)
        trace.append(root)
        spans += trace
    return spans
