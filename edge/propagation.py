"""Trace-context formats read off the wire: W3C traceparent/tracestate, B3 (single and multi), Jaeger uber-trace-id.

Pure functions over strings; no I/O. Invalid input gives None, never an exception, because these values come
from arbitrary third-party traffic.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from .model import INVALID_SPAN_ID, INVALID_TRACE_ID

__all__ = [
    "SpanContext",
    "parse_traceparent",
    "format_traceparent",
    "parse_tracestate",
    "extract",
]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
# The shape nearly every tracer writes (version 00, nothing around it): one match without groups, then the ids by
# position. Anything else takes _TRACEPARENT's path, which gives the same answer for this shape.
_TRACEPARENT_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_HEX = re.compile(r"[0-9a-f]+")
_TRACESTATE_KEY = re.compile(r"^([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})$")
_TRACESTATE_VALUE = re.compile(r"^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$")


@dataclass(slots=True, frozen=True, init=False)
class SpanContext:
    """The propagated identity of a remote span: the parent of whatever continues it."""

    trace_id: bytes
    span_id: bytes
    flags: int = 1
    trace_state: str = ""
    format: str = "w3c"

    # Written out: compiled, a frozen dataclass's generated __init__ is ~30x slower than this one, and one is made per
    # request that carries a trace context (tests/edge/test_accel.py checks it against the fields).
    def __init__(self, trace_id: bytes, span_id: bytes, flags: int = 1, trace_state: str = "",
                 format: str = "w3c") -> None:  # noqa: A002 - the field's name
        object.__setattr__(self, "trace_id", trace_id)
        object.__setattr__(self, "span_id", span_id)
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "trace_state", trace_state)
        object.__setattr__(self, "format", format)

    @property
    def sampled(self) -> bool:
        """W3C sampled flag."""
        return bool(self.flags & 1)


def parse_traceparent(value: object, tracestate: object = None) -> SpanContext | None:
    """Parse a W3C `traceparent` (version 00, or a later version read as 00 per the spec); None if invalid."""
    # Typed `object`: callers hand over whatever a decoded message held, and the compiled build checks declared types.
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    if len(value) == 55 and _TRACEPARENT_00.fullmatch(value):
        # int(x, 16) of the flags would cost as much as both ids' fromhex.
        trace_id, span_id, flag = bytes.fromhex(value[3:35]), bytes.fromhex(value[36:52]), bytes.fromhex(value[53:])[0]
    else:
        m = _TRACEPARENT.fullmatch(value.strip(" \t"))
        if not m:
            return None
        version, tid, sid, flags, rest = m.groups()
        if version == "ff" or (version == "00" and rest):
            return None
        # Later versions may append fields after a dash; anything else glued on is invalid.
        if rest is not None and not rest.startswith("-"):
            return None
        trace_id, span_id, flag = bytes.fromhex(tid), bytes.fromhex(sid), int(flags, 16)
    if trace_id == INVALID_TRACE_ID or span_id == INVALID_SPAN_ID:
        return None
    state = ""
    if tracestate is not None:
        if isinstance(tracestate, bytes):
            tracestate = tracestate.decode("ascii", "replace")
        if not isinstance(tracestate, str):
            tracestate = ""
        state = format_tracestate(parse_tracestate(tracestate))
    return SpanContext(trace_id, span_id, flag, state, "w3c")


def format_traceparent(trace_id: bytes, span_id: bytes, flags: int = 1) -> str:
    """Format a version-00 W3C traceparent."""
    return f"00-{trace_id.hex()}-{span_id.hex()}-{flags & 0xFF:02x}"


def parse_tracestate(value: str) -> list[tuple[str, str]]:
    """Parse W3C tracestate into ordered (key, value) pairs, dropping malformed members (max 32)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for member in value.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        key, sep, val = member.partition("=")
        if not sep or not _TRACESTATE_KEY.fullmatch(key) or not _TRACESTATE_VALUE.fullmatch(val) or key in seen:
            continue
        seen.add(key)
        out.append((key, val))
        if len(out) == 32:
            break
    return out


def format_tracestate(members: Iterable[tuple[str, str]]) -> str:
    """Format (key, value) pairs as a tracestate header value."""
    return ",".join(f"{k}={v}" for k, v in members)


def _parse_b3_single(value: str) -> SpanContext | None:
    # b3: {trace-id}-{span-id}[-{sampling}[-{parent-span-id}]]; a lone "0"/"1"/"d" carries no identity.
    parts = value.strip().lower().split("-")
    if not 2 <= len(parts) <= 4:
        return None
    tid, sid = parts[0], parts[1]
    if len(tid) not in (16, 32) or len(sid) != 16:
        return None
    sampled = parts[2] if len(parts) > 2 else "1"
    if sampled not in ("0", "1", "d"):
        return None
    if len(parts) == 4 and (len(parts[3]) != 16 or not _HEX.fullmatch(parts[3])):
        return None
    return _from_hex(tid, sid, sampled in ("1", "d"), "b3")


def _parse_jaeger(value: str) -> SpanContext | None:
    # uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}; ids may be shorter than full width.
    parts = value.strip().lower().replace("%3a", ":").split(":")
    if len(parts) != 4:
        return None
    if not parts[3] or len(parts[3]) > 2 or not _HEX.fullmatch(parts[3]):
        return None
    flags = int(parts[3], 16)
    return _from_hex(parts[0], parts[1], bool(flags & 1), "jaeger")


def _from_hex(tid: str, sid: str, sampled: bool, fmt: str) -> SpanContext | None:
    if not tid or not sid or len(tid) > 32 or len(sid) > 16 or not _HEX.fullmatch(tid) or not _HEX.fullmatch(sid):
        return None
    trace_id = bytes.fromhex(tid.rjust(32, "0"))
    span_id = bytes.fromhex(sid.rjust(16, "0"))
    if trace_id == INVALID_TRACE_ID or span_id == INVALID_SPAN_ID:
        return None
    return SpanContext(trace_id, span_id, 1 if sampled else 0, "", fmt)


def _text(value: object) -> str | None:
    # Header maps built from raw traffic may hold bytes; anything else is not a header value.
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return None


def extract(headers: Mapping[str, object]) -> SpanContext | None:
    """Find a trace context in lower-cased headers or MQTT user properties: W3C first, then B3, then Jaeger."""
    ctx = parse_traceparent(_text(headers.get("traceparent")), _text(headers.get("tracestate")))
    if ctx is not None:
        return ctx
    b3 = _text(headers.get("b3"))
    if b3 is not None:
        ctx = _parse_b3_single(b3)
        if ctx is not None:
            return ctx
    tid, sid = _text(headers.get("x-b3-traceid")), _text(headers.get("x-b3-spanid"))
    if tid is not None and sid is not None:
        tid, sid = tid.strip().lower(), sid.strip().lower()
        flag = (_text(headers.get("x-b3-flags")) or "").strip()
        sampled = (_text(headers.get("x-b3-sampled")) or "1").strip().lower() in ("1", "true", "d") or flag == "1"
        if len(tid) in (16, 32) and len(sid) == 16:
            ctx = _from_hex(tid, sid, sampled, "b3multi")
            if ctx is not None:
                return ctx
    uber = _text(headers.get("uber-trace-id"))
    if uber is not None:
        return _parse_jaeger(uber)
    return None
