"""The real-span corpus loader, on the sample kept in tests/data (the full corpus need not be on the machine)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.corpus import SUBCORPORA, load, load_all
from edge.model import SpanKind, StatusCode

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "demo-apps-sample"


def test_every_sub_corpus_loads_in_end_time_order() -> None:
    corpora = load_all(SAMPLE)
    assert set(corpora) == set(SUBCORPORA)
    for name, spans in corpora.items():
        assert spans, name
        assert [s.end_ns for s in spans] == sorted(s.end_ns for s in spans), name
        for s in spans:
            assert len(s.trace_id) == 16 and len(s.span_id) == 8, name
            assert s.resource.service_name != "unknown_service", name


def test_data_prepper_documents_are_mapped_and_repaired() -> None:
    spans = load("dataprepper-sample-app", SAMPLE)
    # The document with Python-style """ strings is read, its stack trace kept as the event attribute.
    failed = [s for s in spans if s.status_code is StatusCode.ERROR]
    stacks = [e.attributes["exception.stacktrace"] for s in failed for e in s.events]
    assert any(st.startswith("Traceback (most recent call last):") for st in stacks)
    client = next(s for s in spans if s.name == "HTTP POST")
    assert client.kind is SpanKind.CLIENT
    assert client.attributes["http.method"] == "POST" and client.attributes["http.status_code"] == 200
    assert client.scope.name == "opentelemetry.instrumentation.requests"
    # Fields Data Prepper derives are not span data.
    assert not any(k.startswith(("traceGroup", "serviceName")) for s in spans for k in s.attributes)
    assert dict(client.resource.attributes)["telemetry.sdk.version"] == "0.14b0"


def test_jaeger_spans_take_process_tags_as_resource_and_logs_as_events() -> None:
    spans = load("hotrod-jaeger", SAMPLE)
    s = next(s for s in spans if s.name == "HTTP GET /customer")
    assert s.kind is SpanKind.SERVER and s.trace_id[:8] == bytes(8)  # 64-bit id, zero-padded
    res = dict(s.resource.attributes)
    assert res["service.name"] == "customer" and "host.name" in res
    assert res["opencensus.exporterversion"].startswith("Jaeger-Go-")
    assert "internal.span.format" not in s.attributes and "span.kind" not in s.attributes
    assert [e.name for e in s.events][:2] == ["HTTP request received", "Loading customer"]
    assert (s.end_ns - s.start_ns) % 1000 == 0  # Jaeger stores microseconds


def test_datadog_spans_are_mapped_as_the_corpus_readme_says() -> None:
    spans = load("ddtrace-py-snapshots", SAMPLE)
    req = next(s for s in spans if s.attributes.get("operation.name") == "aiohttp.request")
    assert req.kind is SpanKind.CLIENT and req.scope.name == "ddtrace.aiohttp_client"
    assert req.attributes["span.type"] == "http" and req.attributes["http.status_code"] == "200"
    assert not any(k.startswith("_dd.") for s in spans for k in s.attributes)
    res = dict(req.resource.attributes)
    assert res["telemetry.sdk.language"] == "python" and type(res["process.pid"]) is int
    # Span links, and ids regenerated per file, trace and span (the test agent had numbered them 0, 1, 2...).
    assert any(s.links for s in spans)
    assert len({s.span_id for s in spans}) == len(spans)
    # A 64-bit integer inside nested appsec data does not fit OTLP's int64: it travels as text.
    appsec = next(s.attributes["appsec"] for s in spans if "appsec" in s.attributes)
    assert appsec["triggers"][0]["span_id"] == "13771019123070844178"


def test_tempo_otlp_json_keeps_base64_ids() -> None:
    spans = load("kiali-bookinfo", SAMPLE)
    assert len(spans) == 8 and len({s.trace_id for s in spans}) == 1
    assert sum(1 for s in spans if not s.parent_span_id) == 1


def test_missing_corpus_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="HELIX_CORPUS"):
        load_all(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load("hotrod-jaeger", tmp_path)
