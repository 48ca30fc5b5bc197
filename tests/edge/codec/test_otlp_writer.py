"""OTLP requests written straight from the span model: byte for byte what the official classes serialize, in both
implementations (pure Python and compiled), and failing where they fail."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from bench._workload import realistic_spans
from bench.corpus import load_all
from edge import accel
from edge.codec.otlp import ExportTraceServiceRequest, request_from_spans, spans_from_request
from edge.model import Event, Link, Resource, Scope, Source, Span, SpanKind, StatusCode
from tests.edge._implementations import IMPLEMENTATIONS
from tests.uplink.wire.test_columnar import _spans

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "demo-apps-sample"


def _writer(impl: str):  # type: ignore[no-untyped-def]
    return accel.modules(impl)["edge.codec.otlp_writer"].request_bytes


def _official(spans: list[Span], source_attribute: bool = True) -> bytes:
    return request_from_spans(spans, source_attribute=source_attribute).SerializeToString()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_real_and_generated_spans_are_written_byte_for_byte_as_the_official_classes_serialize(impl: str) -> None:
    write = _writer(impl)
    streams = dict(load_all(SAMPLE))
    streams["generator"] = realistic_spans(60, seed=3)
    for name, spans in streams.items():
        for size in (1, 32, 512):
            for i in range(0, len(spans), size):
                batch = spans[i:i + size]
                for source_attribute in (True, False):
                    assert write(batch, source_attribute) == _official(batch, source_attribute), (name, size, i)
        # And it reads back into the same spans.
        assert spans_from_request(ExportTraceServiceRequest.FromString(write(spans[:100]))) == \
            spans_from_request(request_from_spans(spans[:100]))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=_spans())
def test_any_spans_the_model_holds_are_written_as_the_official_classes_serialize(impl: str, spans: list[Span]) -> None:
    # Values at the edges of what OTLP holds: -0.0, 64-bit extremes (uint64 above int64 fails in both), nesting,
    # bytes, empty keys and texts, every kind and status, events, links, flags above 8 bits.
    write = _writer(impl)
    for source_attribute in (True, False):
        try:
            want: object = _official(spans, source_attribute)
        except (ValueError, TypeError) as e:
            want = type(e)
        try:
            got: object = write(spans, source_attribute)
        except (ValueError, TypeError) as e:
            got = type(e)
        assert got == want


def _span(**kw: object) -> Span:
    base: dict[str, object] = {"trace_id": b"\x01" * 16, "span_id": b"\x02" * 8, "name": "op", "start_ns": 1,
                               "end_ns": 2}
    return Span(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_groups_defaults_and_values_match_the_official_classes(impl: str) -> None:
    write = _writer(impl)
    r1, r2 = Resource.of({"service.name": "a"}), Resource.of({"service.name": "b", "n": 1})
    equal_r1 = Resource((("service.name", "a"),))  # equal to r1, another object: one group
    cases = [
        [],
        [_span(name="", start_ns=0, end_ns=0, trace_id=b"", span_id=b"", flags=0, kind=SpanKind.UNSPECIFIED)],
        [_span(status_code=StatusCode.ERROR), _span(status_message="why"), _span(status_code=StatusCode.OK,
                                                                                  status_message="ok")],
        [_span(resource=r1, scope=Scope("s", "1")), _span(resource=r2), _span(resource=equal_r1, scope=Scope("s", "1")),
         _span(resource=r1, scope=Scope("t")), _span(resource=Resource())],
        [_span(attributes={"b": True, "i": 1, "f": 1.0, "z": -0.0, "neg": -(2**63), "max": 2**63 - 1, "by": b"\x00",
                           "l": [1, "x", [True]], "m": {"k": {"": 2.5}}, "e": [], "d": {}, "": "", "u": "ü€😀"})],
        [_span(attributes={"helix.source": "mine"}, source=Source.EBPF)],
        [_span(events=[Event("", 0), Event("ev", 5, {"a": "b"})],
               links=[Link(b"\x03" * 16, b"\x04" * 8, "st", {"x": 1}), Link(b"", b"")],
               trace_state="k=v", flags=0x1FF, parent_span_id=b"\x05" * 8)],
        [_span(attributes={"same": "text"}), _span(attributes={"same": "text"}, events=[Event("e", 1, {"same": "text"})])],
    ]
    for spans in cases:
        for source_attribute in (True, False):
            assert write(spans, source_attribute) == _official(spans, source_attribute), spans


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("attrs,error", [({"big": 2**63}, ValueError), ({"small": -(2**63) - 1}, ValueError),
                                         ({"s": "a\ud800"}, UnicodeEncodeError)])
def test_values_otlp_cannot_hold_fail_as_in_the_official_classes(impl: str, attrs: dict[str, object],
                                                                 error: type[Exception]) -> None:
    spans = [_span(attributes=attrs)]
    with pytest.raises(error):
        _official(spans)
    with pytest.raises(error):
        _writer(impl)(spans)
    with pytest.raises(ValueError):
        _writer(impl)([_span(start_ns=-1)])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_values_equal_in_python_but_written_differently_never_share_a_remembered_encoding(impl: str) -> None:
    # True == 1 == 1.0 and 0.0 == -0.0: the writer remembers encoded attributes and resources across requests, and
    # must write each as its own type whichever came first.
    write = _writer(impl)
    values: list[object] = [1, True, 1.0, 0, False, 0.0, -0.0, "1", 2**40, [1], [True]]
    for order in (values, values[::-1]):
        for v in order:
            fresh = Resource(tuple(Resource.of({"v": v}).attributes))  # equal resources, other objects
            for spans in ([_span(attributes={"v": v})], [_span(resource=fresh)],
                          [_span(resource=Resource.of({"v": v}), events=[Event("e", 1, {"v": v})])]):
                for _ in range(2):  # the second time from what was remembered
                    assert write(spans) == _official(spans), v


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_resources_are_remembered_by_value_only_where_equal_values_are_written_alike(impl: str) -> None:
    key = accel.modules(impl)["edge.codec.otlp_writer"].value_key
    text = (("host.name", "n1"), ("pid", 7), ("id", b"\x01"))
    assert key(text) == key(tuple(text)) is not None  # another object of the same resource
    assert key((("on", True),)) != key((("on", 1),))  # equal in Python, a bool and an int in OTLP
    assert key((("on", False), ("n", 1))) != key((("on", 0), ("n", True)))
    # Floats (0.0 == -0.0), nested values and keys that are not text are written from each object itself.
    for frozen in [(("x", 0.0),), (("x", (1,)),), (("x", (("k", 1),)),), ((1, "v"),)]:
        assert key(frozen) is None
    spans = [_span(resource=Resource((("r", 1), ("x", 0.0)))), _span(resource=Resource((("r", 1), ("x", -0.0))))]
    for _ in range(2):
        assert _writer(impl)(spans) == _official(spans)
