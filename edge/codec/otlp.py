"""OTLP trace messages (official opentelemetry-proto classes) to and from the span model."""
from __future__ import annotations

import base64
import json
from collections import defaultdict
from typing import Any, Iterable

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from ..errors import DecodeError, OverBudget, describe
from .otlp_wire import id_problem
from ..model import AttrValue, Attributes, Event, Link, Resource, Scope, Source, Span, SpanKind, StatusCode, share

__all__ = [
    "spans_from_request",
    "request_from_spans",
    "parse_request_protobuf",
    "parse_request_json",
    "request_to_json",
    "ExportTraceServiceRequest",
    "ExportTraceServiceResponse",
]


def _value_from_pb(v: AnyValue) -> AttrValue:
    which = v.WhichOneof("value")
    if which == "string_value":
        return share(v.string_value)
    if which == "bool_value":
        return v.bool_value
    if which == "int_value":
        return v.int_value
    if which == "double_value":
        return v.double_value
    if which == "bytes_value":
        return v.bytes_value
    if which == "array_value":
        return [_value_from_pb(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {share(kv.key): _value_from_pb(kv.value) for kv in v.kvlist_value.values}
    return ""


def _attrs_from_pb(kvs: Iterable[KeyValue]) -> Attributes:
    return {share(kv.key): _value_from_pb(kv.value) for kv in kvs}


def _value_to_pb(out: AnyValue, v: AttrValue) -> None:
    # bool before int: bool is an int subclass in Python.
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int):
        out.int_value = v
    elif isinstance(v, float):
        out.double_value = v
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, (bytes, bytearray)):
        out.bytes_value = bytes(v)
    elif isinstance(v, (list, tuple)):
        arr = out.array_value
        arr.SetInParent()
        for x in v:
            _value_to_pb(arr.values.add(), x)
    elif isinstance(v, dict):
        kvl = out.kvlist_value
        kvl.SetInParent()
        for k, x in v.items():
            kv = kvl.values.add()
            kv.key = k
            _value_to_pb(kv.value, x)
    else:
        out.string_value = str(v)


def _attrs_to_pb(repeated: Any, attrs: Attributes) -> None:
    for k, v in attrs.items():
        kv = repeated.add()
        kv.key = k
        _value_to_pb(kv.value, v)


def spans_from_request(req: ExportTraceServiceRequest, source: Source = Source.SDK_OTLP,
                       errors: list[str] | None = None, max_bytes: int | None = None) -> list[Span]:
    """Flatten an OTLP export request into spans.

    A span with invalid ids raises DecodeError, unless `errors` is given: then it is skipped and its reason
    appended there, so one bad span does not cost its neighbours. With `max_bytes`, OverBudget as soon as the
    spans made take more.
    """
    total = 0
    out: list[Span] = []
    ids: dict[bytes, bytes] = {}  # one copy of each trace id and span id in the request (parents repeat them)
    for rs in req.resource_spans:
        resource = Resource.of(_attrs_from_pb(rs.resource.attributes))
        for ss in rs.scope_spans:
            scope = Scope(ss.scope.name, ss.scope.version)
            for s in ss.spans:
                problem = _id_problem(s)
                if problem:
                    if errors is None:
                        raise DecodeError(problem)
                    errors.append(problem)
                    continue
                tid, sid, pid = s.trace_id, s.span_id, s.parent_span_id
                span = Span(
                    trace_id=ids.setdefault(tid, tid),
                    span_id=ids.setdefault(sid, sid),
                    parent_span_id=ids.setdefault(pid, pid) if pid else b"",
                    name=share(s.name),
                    kind=SpanKind(s.kind) if s.kind in SpanKind._value2member_map_ else SpanKind.UNSPECIFIED,
                    start_ns=s.start_time_unix_nano,
                    end_ns=s.end_time_unix_nano,
                    status_code=StatusCode(s.status.code) if s.status.code in (0, 1, 2) else StatusCode.UNSET,
                    status_message=s.status.message,
                    attributes=_attrs_from_pb(s.attributes),
                    events=tuple(Event(share(e.name), e.time_unix_nano, _attrs_from_pb(e.attributes))
                                 for e in s.events) if s.events else (),
                    links=tuple(Link(lk.trace_id, lk.span_id, lk.trace_state, _attrs_from_pb(lk.attributes))
                                for lk in s.links) if s.links else (),
                    resource=resource,
                    scope=scope,
                    source=source,
                    trace_state=s.trace_state,
                    flags=(s.flags & 0xFF) if s.flags else 1,
                )
                size = span.approx_size()  # now, while the strings it shares are still the table's (see share())
                out.append(span)
                total += size
                if max_bytes is not None and total > max_bytes:
                    raise OverBudget(total, max_bytes)
    return out


def _id_problem(s: trace_pb2.Span) -> str:
    return id_problem(s.name, s.trace_id, s.span_id, s.parent_span_id)


def request_from_spans(spans: Iterable[Span], source_attribute: bool = True) -> ExportTraceServiceRequest:
    """Build an OTLP export request, grouping spans by resource and scope; `helix.source` is added when asked."""
    groups: dict[Resource, dict[Scope, list[Span]]] = defaultdict(lambda: defaultdict(list))
    for span in spans:
        groups[span.resource][span.scope].append(span)
    req = ExportTraceServiceRequest()
    for resource, scopes in groups.items():
        rs = req.resource_spans.add()
        _attrs_to_pb(rs.resource.attributes, resource.as_dict())
        for scope, members in scopes.items():
            ss = rs.scope_spans.add()
            ss.scope.name = scope.name
            ss.scope.version = scope.version
            for span in members:
                s = ss.spans.add()
                s.trace_id = span.trace_id
                s.span_id = span.span_id
                if span.parent_span_id:
                    s.parent_span_id = span.parent_span_id
                s.name = span.name
                s.kind = int(span.kind)
                s.start_time_unix_nano = span.start_ns
                s.end_time_unix_nano = span.end_ns
                s.trace_state = span.trace_state
                s.flags = span.flags & 0xFF
                if span.status_code or span.status_message:
                    s.status.code = int(span.status_code)
                    s.status.message = span.status_message
                _attrs_to_pb(s.attributes, span.attributes)
                if source_attribute and "helix.source" not in span.attributes:
                    kv = s.attributes.add()
                    kv.key = "helix.source"
                    kv.value.string_value = span.source.value
                for ev in span.events:
                    e = s.events.add()
                    e.name = ev.name
                    e.time_unix_nano = ev.time_ns
                    _attrs_to_pb(e.attributes, ev.attributes)
                for lk in span.links:
                    ln = s.links.add()
                    ln.trace_id = lk.trace_id
                    ln.span_id = lk.span_id
                    ln.trace_state = lk.trace_state
                    _attrs_to_pb(ln.attributes, lk.attributes)
    return req


def parse_request_protobuf(data: bytes) -> ExportTraceServiceRequest:
    """Decode a binary OTLP export request; DecodeError on garbage."""
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(data)
    except (ProtobufDecodeError, RuntimeError, ValueError) as e:
        raise DecodeError(f"not an OTLP protobuf ExportTraceServiceRequest: {e}") from None
    return req


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(node: Any) -> None:
    # OTLP/JSON writes ids as hex, unlike protobuf's canonical JSON (base64); convert before parsing.
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _ID_FIELDS and isinstance(v, str):
                try:
                    node[k] = base64.b64encode(bytes.fromhex(v)).decode("ascii")
                except ValueError:
                    raise DecodeError(f"field {k} is not a hex id: {describe(v)}") from None
            else:
                _hex_ids_to_base64(v)
    elif isinstance(node, list):
        for x in node:
            _hex_ids_to_base64(x)


def parse_request_json(data: bytes) -> ExportTraceServiceRequest:
    """Decode an OTLP/JSON export request (hex ids, enum numbers or names); DecodeError on garbage, nothing else."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise DecodeError("not JSON: nested too deep") from None
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: JSONDecodeError, and integers past 4,300 digits
        raise DecodeError(f"not JSON: {describe(str(e), 120)}") from None
    if not isinstance(doc, dict):
        raise DecodeError("OTLP/JSON body must be an object with 'resourceSpans'")
    req = ExportTraceServiceRequest()
    try:
        _hex_ids_to_base64(doc)
        json_format.ParseDict(doc, req, ignore_unknown_fields=True)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("not an OTLP/JSON ExportTraceServiceRequest: nested too deep") from None
    except (json_format.ParseError, ValueError, TypeError) as e:
        raise DecodeError(f"not an OTLP/JSON ExportTraceServiceRequest: {describe(str(e), 200)}") from None
    except Exception as e:  # noqa: BLE001 - whatever the body, the request is refused, never the receiver broken
        raise DecodeError(f"not an OTLP/JSON ExportTraceServiceRequest ({type(e).__name__})") from None
    return req


def _base64_ids_to_hex(node: Any) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _ID_FIELDS and isinstance(v, str):
                node[k] = base64.b64decode(v).hex()
            else:
                _base64_ids_to_hex(v)
    elif isinstance(node, list):
        for x in node:
            _base64_ids_to_hex(x)


def request_to_json(req: ExportTraceServiceRequest) -> str:
    """Encode as one line of OTLP/JSON (hex ids, as the OTLP specification writes them)."""
    doc = json_format.MessageToDict(req)
    _base64_ids_to_hex(doc)
    return json.dumps(doc, separators=(",", ":"))

