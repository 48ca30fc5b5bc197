from __future__ import annotations

from edge.demo.trees import format_trace, group_traces, has_orphans
from edge.model import Resource, Source, Span, StatusCode


def test_tree_shows_nesting_sources_and_orphans() -> None:
    t = b"\x01" * 16
    r = Resource.of({"service.name": "order-service"})
    d = Resource.of({"service.name": "sensor-gw-7"})
    spans = [
        Span(t, b"\x01" * 8, "createOrder", 0, 100_000_000, resource=r, source=Source.SDK_OTLP),
        Span(t, b"\x02" * 8, "handleCommand", 10_000_000, 60_000_000, parent_span_id=b"\x01" * 8, resource=d,
             source=Source.SDK_MQTT, status_code=StatusCode.ERROR),
        Span(t, b"\x03" * 8, "readSensor", 20_000_000, 30_000_000, parent_span_id=b"\x02" * 8, resource=d,
             source=Source.SDK_MQTT),
        Span(t, b"\x04" * 8, "GET", 1, 50_000, parent_span_id=b"\x09" * 8, source=Source.EBPF),
    ]
    (members,) = group_traces(spans).values()
    text = format_trace(members)
    lines = text.splitlines()
    assert lines[0].startswith(f"trace {t.hex()}  4 spans  sources: ebpf, sdk-mqtt, sdk-otlp")
    assert any(line.startswith("├─ createOrder  [sdk-otlp · order-service]  100.0 ms") for line in lines)
    assert any("│  └─ handleCommand  [sdk-mqtt · sensor-gw-7]  50.0 ms  ERROR" in line for line in lines)
    assert any("│     └─ readSensor" in line for line in lines)
    assert lines[-1].startswith("└─ GET  [ebpf") and "(parent not received)" in lines[-1]


def test_cycles_do_not_hang() -> None:
    t = b"\x02" * 16
    spans = [Span(t, b"\x01" * 8, "a", 0, 1, parent_span_id=b"\x02" * 8),
             Span(t, b"\x02" * 8, "b", 0, 1, parent_span_id=b"\x01" * 8)]
    assert format_trace(spans).splitlines()[0].startswith("trace")


def test_orphans_are_spans_whose_parent_is_not_in_the_trace() -> None:
    t = b"\x03" * 16
    root = Span(t, b"\x01" * 8, "root", 0, 1)
    child = Span(t, b"\x02" * 8, "child", 0, 1, parent_span_id=b"\x01" * 8)
    stray = Span(t, b"\x03" * 8, "stray", 0, 1, parent_span_id=b"\x07" * 8)
    assert not has_orphans([root, child])
    assert has_orphans([root, child, stray])
