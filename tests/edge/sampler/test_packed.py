from __future__ import annotations

import gc
import tracemalloc

from bench._workload import realistic_spans
from edge.codec.otlp import request_from_spans, spans_from_request
from edge.codec.sdk_cbor import decode_payload, encode_payload
from edge.model import Event, Resource, Scope, Source, Span, SpanKind, StatusCode, new_span_id
from edge.sampler.packed import SpanPacker, packed_size


def decoded(n: int) -> list[Span]:
    """Workload spans as the receivers hand them over: half from OTLP, half from lightweight-SDK CBOR."""
    spans = realistic_spans(n // 11 + 1, seed=3)[:n]
    half = n // 2
    out: list[Span] = []
    for i in range(0, half, 100):
        out += spans_from_request(request_from_spans(spans[i:i + 100]))
    for i in range(half, n, 50):
        out += decode_payload(encode_payload(spans[i:i + 50], {"service.name": "dev"}), {"service.name": "dev"}).spans
    return out


def test_workload_spans_come_back_equal_with_their_shared_resource_and_scope() -> None:
    packer = SpanPacker()
    spans = decoded(2000)
    packed = [packer.pack(s) for s in spans]
    assert sum(type(p) is tuple for p in packed) > 0.9 * len(spans)  # spans with events or links stay as they are
    back = [packer.unpack(p) for p in packed]
    assert back == spans
    assert all(b.resource is s.resource and b.scope is s.scope and b.source is s.source for b, s in zip(back, spans))


def test_every_attribute_type_and_field_survives() -> None:
    res = Resource.of({"service.name": "gw", "host.name": "pi-7"})
    s = Span(b"\x11" * 16, new_span_id(), "MQTT publish", 123_456_789, 123_999_999, parent_span_id=b"\x22" * 8,
             kind=SpanKind.PRODUCER, status_code=StatusCode.ERROR, status_message="broker refused: \u00e9t\u00e9",
             attributes={"s": "text", "i": -7, "big": 1 << 70, "f": 0.1, "t": True, "no": False, "b": b"\x00\xff",
                         "l": ["a", 1, 2.5], "d": {"k": ["v"]}, "u": "\u6e29\u5ea6", "empty": ""},
             resource=res, scope=Scope("lib", "1.0"), source=Source.EBPF, trace_state="ot=th:8,vendor=x", flags=0)
    packer = SpanPacker()
    for _ in range(2):  # the second time round, the shape is known
        p = packer.pack(s)
        assert type(p) is tuple
        back = packer.unpack(p)
        assert back == s and type(back.attributes["t"]) is bool and type(back.kind) is SpanKind


def test_spans_it_cannot_pack_are_held_as_they_are() -> None:
    packer = SpanPacker()
    with_event = Span(b"\x01" * 16, new_span_id(), "x", 1, 2, events=(Event("retry", 1, {}),))
    odd_value = Span(b"\x01" * 16, new_span_id(), "x", 1, 2, attributes={"o": object()})
    for s in (with_event, odd_value):
        assert packer.pack(s) is s and packer.unpack(s) is s and packed_size(s) == s.approx_size()


def test_a_full_shape_table_starts_over_and_earlier_spans_keep_theirs() -> None:
    packer = SpanPacker(max_shapes=5)
    spans = [Span(b"\x01" * 16, new_span_id(), f"op-{i}", 1, 2, attributes={f"key.{i % 12}": f"v{i % 3}", "n": i})
             for i in range(60)]
    packed = [packer.pack(s) for s in spans]
    assert len(packer) <= 5
    assert len({id(p[3]) for p in packed}) > 2  # several tables, each kept alive by its spans
    assert [packer.unpack(p) for p in packed] == spans


def test_packed_spans_hold_under_half_the_memory_and_the_estimate_is_close() -> None:
    spans = decoded(4000)
    for s in spans:
        s.approx_size()
    packer = SpanPacker()
    packer.pack(spans[0])
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        packed = [packer.pack(s) for s in spans]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base - 8 * len(packed)
    finally:
        tracemalloc.stop()
    estimate = sum(packed_size(p) for p in packed) + packer.bytes
    as_objects = sum(s.approx_size() for s in spans)
    assert held < 0.5 * as_objects
    assert 0.8 * held < estimate < 1.25 * held
