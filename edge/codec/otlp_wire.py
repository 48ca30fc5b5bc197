"""OTLP/protobuf export requests read straight off the wire into spans, and the receivers' small replies.

The agent's receivers only ever read one message type (ExportTraceServiceRequest) and answer with two tiny ones
(ExportTraceServiceResponse, google.rpc.Status). Reading the protobuf wire format directly, for the fields the span
model keeps, spares the node the protobuf runtime and the generated OTLP classes: the idle agent went from 36.3 to
32.7 MiB RSS (bench/memory_budget.py, default receivers). It reads a span in ~1.2x the time the official classes
take (bench/span_memory.py). The gateway and the tests still use the official classes (codec/otlp.py), which is
also how this reader is checked: every request the official encoder writes must read back the same.

Field numbers are those of opentelemetry-proto v1 (collector/trace/v1, trace/v1, common/v1, resource/v1).
Unknown fields are skipped, a singular message given twice is merged (read as the concatenation, as protobuf
does), and anything malformed raises DecodeError.
"""
from __future__ import annotations

from collections.abc import Iterator
from struct import Struct
from typing import Any

from ..errors import DecodeError, OverBudget, describe
from ..model import AttrValue, Attributes, Event, Link, Resource, Scope, Source, Span, SpanKind, StatusCode, share

__all__ = ["decode_export_request", "encode_export_response", "encode_status", "id_problem"]

_F64 = Struct("<Q")
_DOUBLE = Struct("<d")
_F32 = Struct("<I")
_MAX_DEPTH = 32  # nested arrays/key-value lists in one attribute value
_KINDS = {int(k): k for k in SpanKind}
_STATUSES = {int(c): c for c in StatusCode}


class _Malformed(Exception):
    """Raised inside the reader; decode_export_request turns it into DecodeError with the request's context."""


def _varint(data: bytes, i: int) -> tuple[int, int]:
    b = data[i]
    if b < 0x80:
        return b, i + 1
    result = b & 0x7F
    shift = 7
    i += 1
    while True:
        b = data[i]
        result |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return result, i
        shift += 7
        if shift >= 70:
            raise _Malformed("varint longer than 10 bytes")


def _fields(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field; value is an int, or (start, end) of a length-delimited one."""
    i = start
    end = len(data) if end is None else end
    while i < end:
        key, i = _varint(data, i)
        if key > 0xFFFF_FFFF:
            raise _Malformed("field number out of range")
        wt = key & 7
        if wt == 0:
            v, i = _varint(data, i)
        elif wt == 2:
            n, i = _varint(data, i)
            if i + n > end:
                raise _Malformed("length runs past the end of the message")
            v = (i, i + n)
            i += n
        elif wt == 1:
            if i + 8 > end:
                raise _Malformed("truncated 64-bit field")
            v = _F64.unpack_from(data, i)[0]
            i += 8
        elif wt == 5:
            if i + 4 > end:
                raise _Malformed("truncated 32-bit field")
            v = _F32.unpack_from(data, i)[0]
            i += 4
        elif wt == 3:
            i = _skip_group(data, i, end, key >> 3)
            continue
        else:
            raise _Malformed(f"wire type {wt} (field {key >> 3})")
        if key >> 3 == 0:
            raise _Malformed("field number 0")
        yield key >> 3, wt, v
    if i != end:
        raise _Malformed("message runs past its end")


def _skip_group(data: bytes, i: int, end: int, number: int, depth: int = 0) -> int:
    """Past an unknown field in the deprecated group encoding (OTLP has none; protobuf readers skip them)."""
    if depth >= _MAX_DEPTH:
        raise _Malformed("groups nested too deep")
    while i < end:
        key, i = _varint(data, i)
        wt = key & 7
        if wt == 4:
            if key >> 3 != number:
                raise _Malformed("mismatched end of group")
            return i
        if wt == 0:
            _, i = _varint(data, i)
        elif wt == 2:
            n, i = _varint(data, i)
            i += n
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        elif wt == 3:
            i = _skip_group(data, i, end, key >> 3, depth + 1)
        else:
            raise _Malformed(f"wire type {wt}")
    raise _Malformed("group without its end")


def _text(data: bytes, span: tuple[int, int]) -> str:
    return data[span[0]:span[1]].decode("utf-8")


def _int64(v: int) -> int:
    v &= 0xFFFF_FFFF_FFFF_FFFF
    return v - (1 << 64) if v >> 63 else v


def _value(data: bytes, start: int, end: int, depth: int) -> AttrValue:
    # AnyValue: a oneof; the last member given wins.
    out: AttrValue = ""
    for f, wt, v in _fields(data, start, end):
        if f == 1 and wt == 2:
            out = share(_text(data, v))
        elif f == 2 and wt == 0:
            out = v != 0
        elif f == 3 and wt == 0:
            out = _int64(v)
        elif f == 4 and wt == 1:
            out = _DOUBLE.unpack(_F64.pack(v))[0]
        elif f == 7 and wt == 2:
            out = data[v[0]:v[1]]
        elif f in (5, 6) and wt == 2:
            if depth >= _MAX_DEPTH:
                raise _Malformed(f"attribute values nested deeper than {_MAX_DEPTH}")
            if f == 5:  # ArrayValue { repeated AnyValue values = 1; }
                out = [_value(data, x[0], x[1], depth + 1) for g, gw, x in _fields(data, *v) if g == 1 and gw == 2]
            else:  # KeyValueList { repeated KeyValue values = 1; }
                out = _attributes(data, [x for g, gw, x in _fields(data, *v) if g == 1 and gw == 2], depth + 1)
    return out


def _attributes(data: bytes, kvs: list[tuple[int, int]], depth: int = 0) -> Attributes:
    attrs: Attributes = {}
    for start, end in kvs:  # KeyValue { string key = 1; AnyValue value = 2; }
        # The common shape first, without the general loop: a short key, then a short value of one scalar.
        # Anything else (long fields, arrays, repeats, unknown fields) is read the general way below.
        if data[start] == 0x0A:
            k = start + 2 + data[start + 1]  # past the key (its length < 0x80 is checked below)
            if k + 2 < end and data[k] == 0x12 and data[start + 1] < 0x80 and k + 2 + data[k + 1] == end:
                t = data[k + 2]
                i = k + 3
                if t == 0x0A:  # string_value
                    if i + 1 + data[i] == end and data[i] < 0x80:
                        attrs[share(data[start + 2:k].decode())] = share(data[i + 1:end].decode())
                        continue
                elif t == 0x18:  # int_value
                    v = data[i]
                    if v < 0x80:
                        if i + 1 == end:
                            attrs[share(data[start + 2:k].decode())] = v
                            continue
                    else:
                        v, j = _varint(data, i)
                        if j == end:
                            attrs[share(data[start + 2:k].decode())] = _int64(v)
                            continue
                elif t == 0x10:  # bool_value
                    if i + 1 == end and data[i] < 0x80:
                        attrs[share(data[start + 2:k].decode())] = data[i] != 0
                        continue
                elif t == 0x21:  # double_value
                    if i + 8 == end:
                        attrs[share(data[start + 2:k].decode())] = _DOUBLE.unpack_from(data, i)[0]
                        continue
        key = ""
        value: AttrValue = ""
        parts: list[tuple[int, int]] = []
        for f, wt, v in _fields(data, start, end):
            if f == 1 and wt == 2:
                key = _text(data, v)
            elif f == 2 and wt == 2:
                parts.append(v)
        if len(parts) == 1:
            value = _value(data, parts[0][0], parts[0][1], depth)
        elif parts:
            joined = b"".join(data[a:b] for a, b in parts)
            value = _value(joined, 0, len(joined), depth)
        attrs[share(key)] = value
    return attrs


def _merged(data: bytes, parts: list[tuple[int, int]]) -> tuple[bytes, int, int]:
    """A singular message given once or more: protobuf reads repeats as one message (their concatenation)."""
    if len(parts) == 1:
        return data, parts[0][0], parts[0][1]
    if not parts:
        return b"", 0, 0
    joined = b"".join(data[a:b] for a, b in parts)
    return joined, 0, len(joined)


def _resource(data: bytes, parts: list[tuple[int, int]]) -> Resource:
    buf, a, b = _merged(data, parts)
    return Resource.of(_attributes(buf, [v for f, wt, v in _fields(buf, a, b) if f == 1 and wt == 2]))


def _scope(data: bytes, parts: list[tuple[int, int]]) -> Scope:
    buf, a, b = _merged(data, parts)
    name = version = ""
    kvs = []
    for f, wt, v in _fields(buf, a, b):
        if f == 1 and wt == 2:
            name = _text(buf, v)
        elif f == 2 and wt == 2:
            version = _text(buf, v)
        elif f == 3 and wt == 2:
            kvs.append(v)
    _attributes(buf, kvs)  # not kept, but a malformed request is refused whole
    return Scope(name, version)


def _status(data: bytes, parts: list[tuple[int, int]]) -> tuple[int, str]:
    buf, a, b = _merged(data, parts)
    code, message = 0, ""
    for f, wt, v in _fields(buf, a, b):
        if f == 2 and wt == 2:
            message = _text(buf, v)
        elif f == 3 and wt == 0:
            code = _int64(v)
    return code, message


def _event(data: bytes, start: int, end: int) -> Event:
    name, time_ns, kvs = "", 0, []
    for f, wt, v in _fields(data, start, end):
        if f == 1 and wt == 1:
            time_ns = v
        elif f == 2 and wt == 2:
            name = _text(data, v)
        elif f == 3 and wt == 2:
            kvs.append(v)
    return Event(share(name), time_ns, _attributes(data, kvs))


def _link(data: bytes, start: int, end: int) -> Link:
    tid = sid = b""
    state = ""
    kvs = []
    for f, wt, v in _fields(data, start, end):
        if f == 1 and wt == 2:
            tid = data[v[0]:v[1]]
        elif f == 2 and wt == 2:
            sid = data[v[0]:v[1]]
        elif f == 3 and wt == 2:
            state = _text(data, v)
        elif f == 4 and wt == 2:
            kvs.append(v)
    return Link(tid, sid, state, _attributes(data, kvs))


def id_problem(name: str, tid: bytes, sid: bytes, pid: bytes) -> str:
    """Why a span's ids are unusable ("" when they are fine)."""
    if len(tid) != 16 or not any(tid):
        return f"span {describe(name)} has an invalid trace id ({len(tid)} bytes, must be 16 and not all zero)"
    if len(sid) != 8 or not any(sid):
        return f"span {describe(name)} has an invalid span id ({len(sid)} bytes, must be 8 and not all zero)"
    if pid and len(pid) != 8:
        return f"span {describe(name)} has an invalid parent span id"
    return ""


def _span(data: bytes, start: int, end: int, resource: Resource, scope: Scope, source: Source,
          ids: dict[bytes, bytes], errors: list[str] | None) -> Span | None:
    tid = sid = pid = b""
    name = state = ""
    kind = start_ns = end_ns = 0
    flags = 0
    kvs: list[tuple[int, int]] = []
    events: list[tuple[int, int]] = []
    links: list[tuple[int, int]] = []
    status: list[tuple[int, int]] = []
    # The general field loop, inlined: this runs for every span of every request.
    i = start
    while i < end:
        key = data[i]
        if key < 0x80:
            i += 1
        else:
            key, i = _varint(data, i)
            if key > 0xFFFF_FFFF:
                raise _Malformed("field number out of range")
        f = key >> 3
        wt = key & 7
        if wt == 2:
            n = data[i]
            if n < 0x80:
                i += 1
            else:
                n, i = _varint(data, i)
            j = i + n
            if j > end:
                raise _Malformed("length runs past the end of the message")
            if f == 9:
                kvs.append((i, j))
            elif f == 1:
                tid = data[i:j]
            elif f == 2:
                sid = data[i:j]
            elif f == 5:
                name = data[i:j].decode("utf-8")
            elif f == 4:
                pid = data[i:j]
            elif f == 3:
                state = data[i:j].decode("utf-8")
            elif f == 15:
                status.append((i, j))
            elif f == 11:
                events.append((i, j))
            elif f == 13:
                links.append((i, j))
            i = j
        elif wt == 1:
            if i + 8 > end:
                raise _Malformed("truncated 64-bit field")
            if f == 7:
                start_ns = _F64.unpack_from(data, i)[0]
            elif f == 8:
                end_ns = _F64.unpack_from(data, i)[0]
            i += 8
        elif wt == 0:
            v, i = _varint(data, i)
            if f == 6:
                kind = _int64(v)
        elif wt == 5:
            if i + 4 > end:
                raise _Malformed("truncated 32-bit field")
            if f == 16:
                flags = _F32.unpack_from(data, i)[0]
            i += 4
        elif wt == 3:
            i = _skip_group(data, i, end, f)
        else:
            raise _Malformed(f"wire type {wt} (field {f})")
        if f == 0:
            raise _Malformed("field number 0")
    if i != end:
        raise _Malformed("message runs past its end")
    # Everything is read before the ids are judged: a malformed request is refused whole, not half-read.
    code, message = _status(data, status) if status else (0, "")
    attributes = _attributes(data, kvs)
    span_events = tuple(_event(data, a, b) for a, b in events)
    span_links = tuple(_link(data, a, b) for a, b in links)
    problem = id_problem(name, tid, sid, pid)
    if problem:
        if errors is None:
            raise DecodeError(problem)
        errors.append(problem)
        return None
    span = Span(
        trace_id=ids.setdefault(tid, tid),
        span_id=ids.setdefault(sid, sid),
        parent_span_id=ids.setdefault(pid, pid) if pid else b"",
        name=share(name),
        kind=_KINDS.get(kind, SpanKind.UNSPECIFIED),
        start_ns=start_ns,
        end_ns=end_ns,
        status_code=_STATUSES.get(code, StatusCode.UNSET),
        status_message=message,
        attributes=attributes,
        events=span_events,
        links=span_links,
        resource=resource,
        scope=scope,
        source=source,
        trace_state=state,
        flags=(flags & 0xFF) if flags else 1,
    )
    span.approx_size()  # now, while the strings it shares are still the table's (see share())
    return span


def _split(data: bytes, start: int, end: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Fields 1 and 2 of a ResourceSpans or ScopeSpans (resource or scope, and what it holds); 3 is schema_url."""
    first: list[tuple[int, int]] = []
    second: list[tuple[int, int]] = []
    for f, wt, v in _fields(data, start, end):
        if wt == 2:
            if f == 1:
                first.append(v)
            elif f == 2:
                second.append(v)
            elif f == 3:
                _text(data, v)  # not kept, but must be UTF-8 like every string
    return first, second


def decode_export_request(data: bytes, source: Source = Source.SDK_OTLP,
                          errors: list[str] | None = None, max_bytes: int | None = None) -> list[Span]:
    """The spans of a binary OTLP ExportTraceServiceRequest; DecodeError when the message is malformed.

    A span with invalid ids raises DecodeError too, unless `errors` is given: then it is skipped and its reason
    appended there, so one bad span does not cost its neighbours. With `max_bytes`, decoding stops with OverBudget
    as soon as the spans read take more (Span.approx_size), before the rest of the request is read.
    """
    out: list[Span] = []
    ids: dict[bytes, bytes] = {}  # one copy of each trace id and span id in the request (parents repeat them)
    total = 0
    try:
        for f, wt, (rs_a, rs_b) in _typed(_fields(data), 1):  # repeated ResourceSpans resource_spans = 1
            res_parts, scope_spans = _split(data, rs_a, rs_b)
            resource = _resource(data, res_parts)
            for ss_a, ss_b in scope_spans:
                scope_parts, spans = _split(data, ss_a, ss_b)
                scope = _scope(data, scope_parts)
                for a, b in spans:
                    span = _span(data, a, b, resource, scope, source, ids, errors)
                    if span is not None:
                        out.append(span)
                        if max_bytes is not None:
                            total += span.approx_size()
                            if total > max_bytes:
                                raise OverBudget(total, max_bytes)
    except (DecodeError, OverBudget):
        raise
    except Exception as e:  # noqa: BLE001 - whatever the bytes, the request is refused, never the receiver broken
        reason = "truncated" if isinstance(e, IndexError) else describe(str(e), 120) if isinstance(
            e, (_Malformed, UnicodeDecodeError, ValueError)) else type(e).__name__
        raise DecodeError(f"not an OTLP protobuf ExportTraceServiceRequest: {reason}") from None
    return out


def _typed(fields: Iterator[tuple[int, int, Any]], number: int) -> Iterator[tuple[int, int, Any]]:
    for f, wt, v in fields:
        if f == number and wt == 2:
            yield f, wt, v


def _put_varint(out: bytearray, v: int) -> None:
    v &= 0xFFFF_FFFF_FFFF_FFFF
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _put_text(out: bytearray, field: int, text: str) -> None:
    raw = text.encode("utf-8")
    _put_varint(out, field << 3 | 2)
    _put_varint(out, len(raw))
    out += raw


def _number_and_text(number: int, text: str) -> bytes:
    """A message of a varint field 1 and a string field 2, each left out when zero or empty (proto3)."""
    out = bytearray()
    if number:
        _put_varint(out, 1 << 3)
        _put_varint(out, number)
    if text:
        _put_text(out, 2, text)
    return bytes(out)


def encode_export_response(rejected_spans: int = 0, error_message: str = "") -> bytes:
    """ExportTraceServiceResponse; with `partial_success` (field 1) when spans were rejected or a message is given."""
    if not rejected_spans and not error_message:
        return b""
    inner = _number_and_text(rejected_spans, error_message)  # ExportTracePartialSuccess
    out = bytearray()
    _put_varint(out, 1 << 3 | 2)
    _put_varint(out, len(inner))
    return bytes(out) + inner


def encode_status(code: int, message: str) -> bytes:
    """google.rpc.Status {code = 1, message = 2}: the body of an OTLP/HTTP error reply."""
    return _number_and_text(code, message)
