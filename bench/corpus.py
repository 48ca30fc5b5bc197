"""Spans that real tracers emitted, read from the demo-apps corpus into the agent's span model.

The corpus (`../shared/corpus/demo-apps` beside the repository, or `HELIX_CORPUS`) holds four sub-corpora, each in
its tracer's own storage format; every one is Apache-2.0 licensed (dd-trace-py: Apache-2.0 OR BSD-3-Clause):

- `dataprepper-sample-app`: OpenSearch Data Prepper `otel-v1-apm-span` documents (ES bulk NDJSON) of the trace
  analytics sample app, OpenTelemetry Python 0.14b0; from opensearch-project/dashboards-observability.
- `hotrod-jaeger`: Jaeger HotROD spans as Jaeger stores them in Elasticsearch (Jaeger Go client 2.30); same repo.
- `kiali-bookinfo`: one Istio/Envoy Bookinfo trace as Tempo returns it (OTLP/JSON `batches`); from kiali/kiali.
- `ddtrace-py-snapshots`: dd-trace-py integration snapshot tests (`[[span, ...], ...]`); from DataDog/dd-trace-py.

The mapping follows the corpus README: Data Prepper's derived fields are dropped and `@` in keys becomes `.`;
Jaeger process tags become the resource (`hostname` -> `host.name`, `jaeger.version` -> `opencensus.exporterversion`
as the Collector's Jaeger translator does), logs become events named by their `event` field, 64-bit trace ids are
zero-padded; Datadog spans take `resource` as name, `name` as `operation.name`, `type` as `span.type`, meta and
metrics as attributes (integral float metrics as int), `_dd.*` tags dropped, and ids regenerated from
blake2b(file/trace/span) because the test agent had replaced them with small integers.

A node emits a span when it ends, so `load` returns spans ordered by end time: what a node would have sent.
Run `python bench/corpus.py` for a summary; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from google.protobuf import json_format  # noqa: E402

from edge.codec.otlp import ExportTraceServiceRequest, spans_from_request  # noqa: E402
from edge.model import AttrValue, Attributes, Event, Link, Resource, Scope, Span, SpanKind, StatusCode  # noqa: E402

__all__ = ["SUBCORPORA", "default_root", "load", "load_all"]

SUBCORPORA = ("dataprepper-sample-app", "hotrod-jaeger", "kiali-bookinfo", "ddtrace-py-snapshots")

_INT64 = (-(2**63), 2**63 - 1)


def default_root() -> Path:
    """`HELIX_CORPUS`, else the nearest `shared/corpus/demo-apps` beside the repository or one of its parents."""
    env = os.environ.get("HELIX_CORPUS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    for up in repo.parents:
        candidate = up / "shared" / "corpus" / "demo-apps"
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "corpus" / "demo-apps"


def load(name: str, root: Path | None = None) -> list[Span]:
    """The spans of one sub-corpus, in the order a node would emit them (by end time)."""
    folder = (root or default_root()) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"span corpus {name!r} not found at {folder} "
                                "(set HELIX_CORPUS to the demo-apps folder)")
    reader = _READERS[name]
    spans = list(reader(folder))
    spans.sort(key=lambda s: s.end_ns)  # stable: ties keep the file's order
    return spans


def load_all(root: Path | None = None) -> dict[str, list[Span]]:
    """Every sub-corpus found under `root`, by name; FileNotFoundError if there is none."""
    base = root or default_root()
    found = {name: load(name, base) for name in SUBCORPORA if (base / name).is_dir()}
    if not found:
        raise FileNotFoundError(f"no span corpus under {base} (set HELIX_CORPUS to the demo-apps folder)")
    return found


# ------------------------------------------------------------------------------------------------ Data Prepper

_KINDS = {f"SPAN_KIND_{k.name}": k for k in SpanKind}
_PY_TRIPLE_QUOTED = re.compile(r'"""(.*?)"""', re.S)
# Fields Data Prepper derives from the span; the span itself never carried them.
_DP_DERIVED = ("traceGroup", "traceGroupFields.", "durationInNanos", "serviceName", "droppedAttributesCount",
               "droppedEventsCount", "droppedLinksCount")


def _iso_ns(text: str) -> int:
    # "2021-03-25T17:23:30.088478464Z": datetime keeps microseconds only, so the fraction is read apart.
    head, _, frac = text.rstrip("Z").partition(".")
    secs = int(datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
    return secs * 1_000_000_000 + int((frac + "000000000")[:9])


def _dp_key(k: str) -> str:
    return k.replace("@", ".")


def _dataprepper(folder: Path) -> Iterator[Span]:
    for path in sorted(folder.glob("*.json")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            if '"""' in line:  # ten documents hold Python-style triple-quoted strings, invalid JSON
                line = _PY_TRIPLE_QUOTED.sub(lambda m: json.dumps(m.group(1)), line)
            doc = json.loads(line)
            if "index" in doc:
                continue
            yield _dataprepper_span(doc)


def _dataprepper_span(doc: dict[str, Any]) -> Span:
    res: Attributes = {}
    attrs: Attributes = {}
    for k, v in doc.items():
        if k.startswith("resource.attributes."):
            res[_dp_key(k[len("resource.attributes."):])] = v
        elif k.startswith("span.attributes."):
            attrs[_dp_key(k[len("span.attributes."):])] = v
    events = tuple(Event(e["name"], _iso_ns(e["time"]), {_dp_key(k): v for k, v in e.get("attributes", {}).items()})
                   for e in doc.get("events", ()))
    links = tuple(Link(bytes.fromhex(lk["traceId"]), bytes.fromhex(lk["spanId"]), lk.get("traceState", ""),
                       {_dp_key(k): v for k, v in lk.get("attributes", {}).items()}) for lk in doc.get("links", ()))
    return Span(
        trace_id=bytes.fromhex(doc["traceId"]),
        span_id=bytes.fromhex(doc["spanId"]),
        parent_span_id=bytes.fromhex(doc.get("parentSpanId") or ""),
        name=doc["name"],
        kind=_KINDS.get(doc.get("kind", ""), SpanKind.UNSPECIFIED),
        start_ns=_iso_ns(doc["startTime"]),
        end_ns=_iso_ns(doc["endTime"]),
        status_code=StatusCode(int(doc.get("status.code", 0))),
        status_message=doc.get("status.message", ""),
        attributes=attrs,
        events=events,
        links=links,
        resource=Resource.of(res),
        scope=Scope(doc.get("instrumentationLibrary.name", ""), doc.get("instrumentationLibrary.version", "")),
        trace_state=doc.get("traceState", ""),
    )


# ------------------------------------------------------------------------------------------------------ Jaeger

_JAEGER_KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "producer": SpanKind.PRODUCER,
                 "consumer": SpanKind.CONSUMER, "internal": SpanKind.INTERNAL}


def _jaeger_field(f: dict[str, Any]) -> AttrValue:
    t, v = f.get("type", "string"), f["value"]
    if t == "int64":
        return int(v)
    if t == "float64":
        return float(v)
    if t == "bool":
        return v if isinstance(v, bool) else str(v).lower() == "true"
    return v


def _jaeger_tags(doc: dict[str, Any]) -> Attributes:
    # Elasticsearch keeps tags twice: "tag" (a map, '.' stored as '@') and "tags" (the rest, typed).
    out: Attributes = {k.replace("@", "."): v for k, v in doc.get("tag", {}).items()}
    for f in doc.get("tags", ()):
        out[f["key"]] = _jaeger_field(f)
    return out


def _jaeger_id(hex_id: str, size: int) -> bytes:
    return bytes.fromhex(hex_id.rjust(size * 2, "0"))


def _jaeger(folder: Path) -> Iterator[Span]:
    for path in sorted(folder.glob("*.json")):
        for line in path.read_text().splitlines():
            doc = json.loads(line)
            if "index" not in doc:
                yield _jaeger_span(doc)


def _jaeger_span(doc: dict[str, Any]) -> Span:
    tags = _jaeger_tags(doc)
    tags.pop("internal.span.format", None)  # added by Jaeger's storage, not by the app
    kind = _JAEGER_KINDS.get(str(tags.pop("span.kind", "")), SpanKind.INTERNAL)
    status = StatusCode.ERROR if tags.pop("error", False) is True else StatusCode.UNSET
    proc = doc.get("process", {})
    res: Attributes = {"service.name": proc.get("serviceName", "")}
    for k, v in _jaeger_tags(proc).items():
        if k == "hostname":
            res["host.name"] = v
        elif k == "jaeger.version":
            res["opencensus.exporterversion"] = f"Jaeger-{v}"
        else:
            res[k] = v
    parent = b""
    links: list[Link] = []
    for ref in doc.get("references", ()):
        tid, sid = _jaeger_id(ref["traceID"], 16), _jaeger_id(ref["spanID"], 8)
        if ref.get("refType") == "CHILD_OF" and not parent and ref["traceID"] == doc["traceID"]:
            parent = sid
        else:
            links.append(Link(tid, sid))
    events = []
    for log in doc.get("logs", ()):
        attrs = {f["key"]: _jaeger_field(f) for f in log.get("fields", ())}
        name = attrs.pop("event", "")
        events.append(Event(str(name), log["timestamp"] * 1000, attrs))
    start = doc["startTime"] * 1000
    return Span(
        trace_id=_jaeger_id(doc["traceID"], 16),
        span_id=_jaeger_id(doc["spanID"], 8),
        parent_span_id=parent,
        name=doc["operationName"],
        kind=kind,
        start_ns=start,
        end_ns=start + doc["duration"] * 1000,
        status_code=status,
        attributes=tags,
        events=events,
        links=links,
        resource=Resource.of(res),
        flags=doc.get("flags", 1) & 0xFF,
    )


# ---------------------------------------------------------------------------------------------- Tempo OTLP/JSON

def _tempo(folder: Path) -> Iterator[Span]:
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        # Tempo names the resource-span list "batches" and writes ids base64, protobuf's own JSON mapping.
        req = ExportTraceServiceRequest()
        json_format.ParseDict({"resourceSpans": doc["batches"]}, req, ignore_unknown_fields=True)
        yield from spans_from_request(req)


# ------------------------------------------------------------------------------------------------- dd-trace-py

_DD_KINDS = _JAEGER_KINDS
# Tags the tracer adds for itself (sampling, propagation, process tags); dropped as the corpus README says.
_DD_RESOURCE_TAGS = {"language": "telemetry.sdk.language", "runtime-id": "service.instance.id",
                     "process_id": "process.pid"}


def _dd_id(size: int, *parts: object) -> bytes:
    return hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=size).digest()


def _dd_value(v: Any) -> AttrValue:
    # OTLP integers are int64; the few larger ones (a 64-bit span id inside appsec data) travel as text.
    if isinstance(v, bool) or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v if _INT64[0] <= v <= _INT64[1] else str(v)
    if isinstance(v, float):
        return int(v) if v.is_integer() and _INT64[0] <= v <= _INT64[1] else v
    if isinstance(v, list):
        return [_dd_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _dd_value(x) for k, x in v.items()}
    return str(v)


def _ddtrace(folder: Path) -> Iterator[Span]:
    for path in sorted(folder.glob("*.json")):
        for trace in json.loads(path.read_text()):
            for s in trace:
                yield _dd_span(path.stem, s)


def _dd_span(file: str, s: dict[str, Any]) -> Span:
    res: Attributes = {"service.name": s.get("service") or ""}
    attrs: Attributes = {"operation.name": s["name"]}
    if s.get("type"):
        attrs["span.type"] = s["type"]
    for source in (s.get("meta", {}), s.get("metrics", {}), s.get("meta_struct", {})):
        for k, v in source.items():
            if k.startswith("_dd.") or k == "_sampling_priority_v1":
                continue
            if k in _DD_RESOURCE_TAGS:
                res[_DD_RESOURCE_TAGS[k]] = _dd_value(v)
            else:
                attrs[k] = _dd_value(v)
    kind = _DD_KINDS.get(str(attrs.pop("span.kind", "")), SpanKind.INTERNAL)
    tid = s["trace_id"]
    links = tuple(
        Link(_dd_id(16, file, lk["trace_id"]), _dd_id(8, file, lk["trace_id"], lk["span_id"]), lk.get("tracestate", ""),
             {str(k): _dd_value(v) for k, v in lk.get("attributes", {}).items()})
        for lk in s.get("span_links", ()))
    component = attrs.get("component")
    return Span(
        trace_id=_dd_id(16, file, tid),
        span_id=_dd_id(8, file, tid, s["span_id"]),
        parent_span_id=_dd_id(8, file, tid, s["parent_id"]) if s.get("parent_id") else b"",
        name=s.get("resource") or s["name"],
        kind=kind,
        start_ns=s["start"],
        end_ns=s["start"] + s["duration"],
        status_code=StatusCode.ERROR if s.get("error") else StatusCode.UNSET,
        attributes=attrs,
        links=links,
        resource=Resource.of(res),
        scope=Scope(f"ddtrace.{component}" if isinstance(component, str) else "ddtrace"),
    )


_READERS = {
    "dataprepper-sample-app": _dataprepper,
    "hotrod-jaeger": _jaeger,
    "kiali-bookinfo": _tempo,
    "ddtrace-py-snapshots": _ddtrace,
}


def main() -> None:
    """Print spans, traces, services and attribute keys of each sub-corpus, then the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=None, help="the demo-apps folder (default: %(default)s)")
    args = ap.parse_args()
    out: dict[str, dict[str, int]] = {}
    for name, spans in load_all(args.root).items():
        out[name] = {
            "spans": len(spans),
            "traces": len({s.trace_id for s in spans}),
            "services": len({s.resource.service_name for s in spans}),
            "attribute_keys": len({k for s in spans for k in s.attributes}),
            "events": sum(len(s.events) for s in spans),
            "links": sum(len(s.links) for s in spans),
        }
        print(f"{name:<24}" + "  ".join(f"{k} {v}" for k, v in out[name].items()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
