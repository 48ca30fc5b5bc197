"""Route and error classification of spans, shared by the tail rules and the RED aggregator.

Routes must stay few (they become metric series and rule keys): `http.route` is taken as the instrumentation
gave it; a raw `url.path` has its query dropped and every id-like segment replaced by `{id}`.
"""
from __future__ import annotations

import re

from ..model import Span, SpanKind, StatusCode

__all__ = ["normalise_path", "route_of", "is_error", "peer_of", "MAX_ROUTE_LEN"]

MAX_ROUTE_LEN = 128
_NUMBER = re.compile(r"^[0-9][0-9._,:-]*$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^(?:0x)?[0-9a-fA-F]{8,}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_=+-]{20,}$")  # base64-ish tokens, long opaque keys
_DIGITS = re.compile(r"\d")


def _id_like(seg: str) -> bool:
    if _NUMBER.match(seg) or _UUID.match(seg) or _HEX.match(seg):
        return True
    # Mixed letters and several digits (order-8F3K2, a1b2c3d4) is an id; a word with one digit (v2, ipv6) is not.
    return bool(_TOKEN.match(seg)) or (len(seg) >= 6 and len(_DIGITS.findall(seg)) >= 3)


def normalise_path(path: str) -> str:
    """'/api/orders/123?x=1' -> '/api/orders/{id}'; ids are numbers, UUIDs, long hex and token-like segments."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:  # an absolute-form target (proxies): keep the path only
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    segs = ["{id}" if seg and _id_like(seg) else seg for seg in path.split("/")]
    out = "/".join(segs) or "/"
    return out[:MAX_ROUTE_LEN]


def route_of(span: Span) -> str:
    """The span's route: `http.route`, else the normalised `url.path` (or `http.target`), else ''."""
    a = span.attributes
    r = a.get("http.route")
    if isinstance(r, str) and r:
        return r[:MAX_ROUTE_LEN]
    p = a.get("url.path")
    if not isinstance(p, str) or not p:
        p = a.get("http.target")
    if isinstance(p, str) and p:
        return normalise_path(p)
    return ""


def is_error(span: Span) -> bool:
    """Error status, or an HTTP status of 500 and above."""
    if span.status_code == StatusCode.ERROR:
        return True
    a = span.attributes
    code = a.get("http.response.status_code", a.get("http.status_code"))
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    return isinstance(code, int) and not isinstance(code, bool) and code >= 500


def peer_of(span: Span) -> str:
    """The called side of a client/producer span (`server.address`, else `network.peer.address`); '' otherwise.

    Server and consumer spans get no peer: their peers are the callers, whose addresses are unbounded in number and
    would turn every client into a metric series.
    """
    if span.kind not in (SpanKind.CLIENT, SpanKind.PRODUCER):
        return ""
    a = span.attributes
    for k in ("server.address", "network.peer.address"):
        v = a.get(k)
        if isinstance(v, str) and v:
            return v[:MAX_ROUTE_LEN]
    return ""
