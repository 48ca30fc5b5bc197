from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.codec.otlp import parse_request_protobuf, request_from_spans, spans_from_request
from edge.codec.sdk_cbor import decode_payload, encode_payload
from edge.model import Event, Resource, Span, SpanKind, is_shared, new_span_id, new_trace_id, share
from edge.model import _attrs_size, _value_size


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


def _held_per_span(decode: Callable[[], list[Span]]) -> tuple[float, list[Span]]:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        spans = decode()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return (held - 8 * len(spans)) / len(spans), spans


@pytest.fixture
def fresh_string_table() -> None:
    """Start with an empty table, so that it does not start over in the middle of a test."""
    from edge import model

    model._SHARED.clear()


@pytest.mark.usefixtures("fresh_string_table")
def test_decoded_spans_share_repeated_strings_ids_and_resources() -> None:
    """Keys, names and enum-like values repeat on every span: one copy each, not one per span."""
    wires = [request_from_spans([_server_span(i) for i in range(k, k + 100)]).SerializeToString()
             for k in range(0, 400, 100)]
    reqs = [parse_request_protobuf(w) for w in wires]
    spans_from_request(reqs[0])  # the table's own copies are the agent's, not these spans'
    real, spans = _held_per_span(lambda: [s for r in reqs for s in spans_from_request(r)])
    a, b = spans[0], spans[-1]  # from different requests
    assert a.name is b.name
    for key in a.attributes:
        assert next(k for k in b.attributes if k == key) is key
    assert a.attributes["http.request.method"] is b.attributes["http.request.method"]
    assert a.resource is b.resource
    # Before share() and the per-request id table these spans held 2.4 KiB each; now about 1.1 KiB.
    assert real < 1250, f"{real:.0f} B per decoded span"
    estimate = sum(s.approx_size() for s in spans) / len(spans)
    assert 0.75 <= estimate / real <= 1.33, f"estimate {estimate:.0f} B per span, measured {real:.0f} B"


@pytest.mark.usefixtures("fresh_string_table")
def test_cbor_decoded_spans_share_strings_and_one_trace_id_per_message() -> None:
    spans = [_server_span(i) for i in range(50)]
    for s in spans[1:]:
        s.trace_id = spans[0].trace_id
    payloads = [encode_payload(spans, {"service.name": "orders"}) for _ in range(4)]
    decode_payload(payloads[0], {})
    real, out = _held_per_span(lambda: [s for p in payloads for s in decode_payload(p, {}).spans])
    assert all(s.trace_id is out[0].trace_id for s in out[:50])
    assert out[0].name is out[-1].name and out[0].resource is out[-1].resource
    assert real < 1100, f"{real:.0f} B per decoded span"  # 2.2 KiB before sharing, about 0.85 KiB now
    estimate = sum(s.approx_size() for s in out) / len(out)
    assert 0.75 <= estimate / real <= 1.33, f"estimate {estimate:.0f} B per span, measured {real:.0f} B"


def test_the_string_table_is_bounded_and_skips_long_strings() -> None:
    from edge import model

    long = "x" * (model._SHARED_LEN + 1)
    assert model.share(long) is long and not model.is_shared(long)
    first = model.share("".join(["route-", "a"]))
    assert model.share("".join(["route-", "a"])) is first and model.is_shared(first)
    for i in range(model._SHARED_MAX + 10):  # one-off values (ids, addresses) fill it; it starts over, bounded
        model.share(f"one-off-{i}")
    assert len(model._SHARED) <= model._SHARED_MAX
    again = model.share("".join(["route-", "a"]))
    assert again == first and model.is_shared(again)


def test_owned_strings_count_and_shared_ones_do_not() -> None:
    from edge.model import share

    key, value = share("".join(["http.", "route"])), share("".join(["/api/", "x"]))
    shared = Span(b"\x01" * 16, b"\x02" * 8, share("GET /x"), 1, 2, attributes={key: value})
    owned = Span(b"\x01" * 16, b"\x02" * 8, "".join(["GET ", "/x"]),
                 1, 2, attributes={"".join(["http.", "route"]): "".join(["/api/", "x"])})
    assert owned.approx_size() - shared.approx_size() == 3 * 49 + len("GET /x") + len("http.route") + len("/api/x")


def test_events_and_links_are_tuples_and_empty_ones_compare_equal() -> None:
    a = Span(b"\x01" * 16, b"\x02" * 8, "x", 1, 2, events=[], links=[])
    b = Span(b"\x01" * 16, b"\x02" * 8, "x", 1, 2)
    assert a == b and a.events == () and a.links == ()
    c = Span(b"\x01" * 16, b"\x02" * 8, "x", 1, 2, events=[Event("e", 1)])
    assert c.events == (Event("e", 1),)


def test_kernel_span_keys_are_the_builders_constants_and_do_not_count() -> None:
    from edge.model import Source

    def span(source: Source) -> Span:
        return Span(b"\x01" * 16, b"\x02" * 8, "GET", 1, 2, source=source,
                    attributes={"".join(["url.", "path"]): 1000, "".join(["server.", "port"]): 8080})

    assert span(Source.SDK_OTLP).approx_size() - span(Source.EBPF).approx_size() == 2 * 49 + len("url.path") + len(
        "server.port")


def test_equal_resources_of_other_value_types_are_never_one_shared_copy() -> None:
    # True == 1 == 1.0 in Python: a shared copy keyed by value alone handed one service's bool back as another's int.
    as_int = Resource.of({"service.name": "a", "x": 1, "xs": [1, 2]})
    as_bool = Resource.of({"service.name": "a", "x": True, "xs": [True, 2]})
    as_float = Resource.of({"service.name": "a", "x": 1.0, "xs": [1.0, 2]})
    assert type(as_int.as_dict()["x"]) is int and type(as_int.as_dict()["xs"][0]) is int
    assert type(as_bool.as_dict()["x"]) is bool and type(as_bool.as_dict()["xs"][0]) is bool
    assert type(as_float.as_dict()["x"]) is float and type(as_float.as_dict()["xs"][0]) is float
    # the same types still share one copy
    assert Resource.of({"xs": [True, 2], "x": True, "service.name": "a"}) is as_bool


def test_an_otlp_bool_resource_attribute_reads_back_a_bool_after_an_equal_int_one() -> None:
    spans = []
    for value in (1, True):
        s = Span(trace_id=new_trace_id(), span_id=new_span_id(), name="op", start_ns=1, end_ns=2,
                 resource=Resource.of({"service.name": "svc", "flag": value}))
        spans.extend(spans_from_request(parse_request_protobuf(request_from_spans([s]).SerializeToString())))
    assert [type(s.resource.as_dict()["flag"]) for s in spans] == [int, bool]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["http.route", "url.path", "k", "x" * 70]) | st.text(max_size=8),
                       st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70)
                       | st.binary(max_size=8) | st.lists(st.integers() | st.text(max_size=4), max_size=3)
                       | st.sampled_from([SpanKind.SERVER, "GET", "mqtt"]), max_size=12),
       st.booleans())
def test_attribute_sizes_inline_answer_as_the_per_value_estimate(attrs: dict, constant_keys: bool) -> None:
    """The inlined per-type sizes of _attrs_size give what _value_size gives value by value."""
    share("GET")
    share("http.route")
    expected = sum((0 if constant_keys or is_shared(k) else 49 + len(k)) + _value_size(v) for k, v in attrs.items())
    assert _attrs_size(attrs, constant_keys) == expected
