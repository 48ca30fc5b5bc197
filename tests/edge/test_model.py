from __future__ import annotations

import gc
import tracemalloc

import pytest

from edge.codec.otlp import parse_request_protobuf, request_from_spans, spans_from_request
from edge.model import Event, Resource, Span, SpanKind, new_span_id, new_trace_id


def _server_span(i: int) -> Span:
    return Span(new_trace_id(), new_span_id(), "GET /api/orders/{id}", 1_700_000_000_000_000_000 + i,
                1_700_000_000_001_000_000 + i, parent_span_id=new_span_id(), kind=SpanKind.SERVER,
                attributes={"http.request.method": "GET", "url.path": f"/api/orders/{i}", "url.scheme": "http",
                            "http.response.status_code": 200, "server.address": "10.0.0.5", "server.port": 8080,
                            "client.address": "10.0.0.9", "client.port": 51000 + i % 1000,
                            "user_agent.original": "python-requests/2.31", "http.route": "/api/orders/{id}"},
                events=[Event("retransmit", 1_700_000_000_000_500_000, {"tcp.state": "ESTABLISHED"})] if i % 4 == 0
                else [], resource=Resource.of({"service.name": "orders"}), trace_state="ot=th:0")


@pytest.mark.parametrize("n", [2000])
def test_size_estimate_is_close_to_what_decoded_spans_really_hold(n: int) -> None:
    """Budgets count spans by this estimate: one at half the real cost lets buffers hold twice their bytes."""
    wire = request_from_spans([_server_span(i) for i in range(n)]).SerializeToString()
    gc.collect()
    tracemalloc.start()
    try:
        req = parse_request_protobuf(wire)
        base = tracemalloc.get_traced_memory()[0]
        spans = spans_from_request(req)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    real = (held - 8 * len(spans)) / len(spans)  # the list's slots are not the spans' cost
    estimate = sum(s.approx_size() for s in spans) / len(spans)
    print(f"estimate {estimate:.0f} B, measured {real:.0f} B per span")
    assert 0.75 <= estimate / real <= 1.33, f"estimate {estimate:.0f} B per span, measured {real:.0f} B"


def test_the_size_estimate_is_taken_once() -> None:
    from edge.model import Span

    span = Span(b"\x01" * 16, b"\x02" * 8, "GET /x", 1, 2, attributes={"http.route": "/x"})
    first = span.approx_size()
    span.attributes["late"] = "x" * 1000  # what stitching adds later is small; it is not measured again
    assert span.approx_size() == first
    assert Span(b"\x01" * 16, b"\x02" * 8, "GET /x", 1, 2, attributes=dict(span.attributes)).approx_size() > first + 1000
    assert span == Span(b"\x01" * 16, b"\x02" * 8, "GET /x", 1, 2, attributes=dict(span.attributes))  # not compared
