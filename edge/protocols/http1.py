"""HTTP/1.x request and response heads from a payload snapshot that may be cut anywhere.

The kernel probes hand over only the first bytes of each message, so every parser here accepts a prefix: a head
cut by the snapshot comes back with `truncated=True` and whatever was complete. Anything that is not HTTP/1.x
(TLS records, HTTP/2 frames, binary protocols, noise) gives None, never an exception, and is rejected within the
first few bytes because most traffic on a busy node is not HTTP.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit

from .. import accel

__all__ = [
    "METHODS",
    "HttpRequest",
    "HttpResponse",
    "parse_request",
    "parse_requests",
    "parse_response",
    "parse_responses",
    "looks_like_http",
    "chunked_body_end",
    "use_c_heads",
]

METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE"})
_METHODS_B = frozenset(m.encode() for m in METHODS)
_MAX_METHOD = max(len(m) for m in METHODS)
MAX_HEADERS = 100
_MAX_MESSAGES = 64

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Header values: visible ASCII, obs-text, space and tab; any other control byte means this is not HTTP.
_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
_TARGET = re.compile(rb"^[\x21-\x7e\x80-\xff]+$")
_STATUS_LINE = re.compile(rb"^HTTP/(1\.[01]) ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?$")
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
# Whole heads of CRLF lines with no folding, the shape nearly every client and server writes: request or status line
# (groups 1-3) and the header lines, each after its CRLF (group 4). The classes are _TOKEN's, _VALUE's and _TARGET's.
_HEADER_LINES = rb"((?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*)\r\n\r\n"
_REQUEST_HEAD = re.compile(rb"([A-Z]+) ([\x21-\x7e\x80-\xff]+) HTTP/(1\.[01])" + _HEADER_LINES)
_RESPONSE_HEAD = re.compile(rb"HTTP/(1\.[01]) ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?" + _HEADER_LINES)
# The C parser of the same whole heads (edge/protocols/_http1_heads.c), where it was built: None leaves them to the
# patterns above. It answers only what they would, and None for all else.
_C_HEADS = "edge.protocols._http1_heads"
_heads: Any = accel.c_module(_C_HEADS)


def use_c_heads(on: bool) -> bool:
    """Parse whole heads with the C parser when `on` and it runs here; returns whether it now does."""
    global _heads
    _heads = accel.c_module(_C_HEADS) if on else None
    return _heads is not None


@dataclass(slots=True, init=False)
class HttpRequest:
    """A request head as far as the snapshot showed it."""

    method: str
    target: str
    path: str
    query: str
    version: str  # "1.1" or "1.0"; "" when the request line was cut
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names, first value wins
    host: str = ""
    truncated: bool = False  # the head did not end inside the snapshot
    content_length: int | None = None
    chunked: bool = False
    offset: int = 0  # where the request starts in the snapshot
    head_length: int | None = None  # request line + headers + blank line, when complete
    length: int | None = None  # the whole message (head + body), when the snapshot lets us know it

    # Written out: see DataEvent.__init__ (edge/sources/ebpf/events.py); one of these is made per request head.
    def __init__(self, method: str, target: str, path: str, query: str, version: str,
                 headers: dict[str, str] | None = None, host: str = "", truncated: bool = False,
                 content_length: int | None = None, chunked: bool = False, offset: int = 0,
                 head_length: int | None = None, length: int | None = None) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = {} if headers is None else headers
        self.host = host
        self.truncated = truncated
        self.content_length = content_length
        self.chunked = chunked
        self.offset = offset
        self.head_length = head_length
        self.length = length

    @property
    def body_size(self) -> int | None:
        """Body bytes when known from the head (or the chunk walk), else None."""
        if self.length is None or self.head_length is None:
            return None
        return self.length - self.head_length


@dataclass(slots=True, init=False)
class HttpResponse:
    """A response head as far as the snapshot showed it."""

    status: int
    reason: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    truncated: bool = False
    content_length: int | None = None
    chunked: bool = False
    offset: int = 0
    head_length: int | None = None
    length: int | None = None  # None when the body runs until close or the chunk walk left the snapshot

    # Written out: see DataEvent.__init__ (edge/sources/ebpf/events.py).
    def __init__(self, status: int, reason: str, version: str, headers: dict[str, str] | None = None,
                 truncated: bool = False, content_length: int | None = None, chunked: bool = False, offset: int = 0,
                 head_length: int | None = None, length: int | None = None) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = {} if headers is None else headers
        self.truncated = truncated
        self.content_length = content_length
        self.chunked = chunked
        self.offset = offset
        self.head_length = head_length
        self.length = length

    @property
    def body_size(self) -> int | None:
        """Body bytes when known, else None."""
        if self.length is None or self.head_length is None:
            return None
        return self.length - self.head_length

    @property
    def interim(self) -> bool:
        """1xx responses precede the final one (101 ends HTTP on the connection, so it counts as final)."""
        return 100 <= self.status < 200 and self.status != 101


def looks_like_http(data: bytes) -> bool:
    """Cheap first-bytes test: a known method and a space, or `HTTP/1.`."""
    if data.startswith(b"HTTP/1."):
        return True
    sp = data.find(b" ", 0, _MAX_METHOD + 1)
    return sp > 0 and data[:sp] in _METHODS_B


def parse_request(data: bytes) -> HttpRequest | None:
    """The first request head in `data`, or None if `data` does not start with one."""
    try:
        return _request_at(data, 0)
    except Exception:  # noqa: BLE001 - hostile input must never escape as an exception, whatever breaks
        return None


def parse_requests(data: bytes) -> list[HttpRequest]:
    """All requests pipelined in `data` whose starts are inside it; stops at the first one cut or unknowable."""
    out: list[HttpRequest] = []
    off = 0
    try:
        while off < len(data) and len(out) < _MAX_MESSAGES:
            req = _request_at(data, off)
            if req is None:
                break
            out.append(req)
            if req.truncated or req.length is None:
                break
            off += req.length
    except Exception:  # noqa: BLE001 - as above
        pass
    return out


def parse_response(data: bytes, request_method: str = "") -> HttpResponse | None:
    """The first response head in `data`; `request_method` matters only for HEAD (no body follows)."""
    try:
        return _response_at(data, 0, request_method)
    except Exception:  # noqa: BLE001 - as above
        return None


def parse_responses(data: bytes, request_methods: Sequence[str] = ()) -> list[HttpResponse]:
    """All responses in `data` whose starts are inside it; `request_methods[i]` is the method that the i-th final
    response answers (interim 1xx responses do not consume one)."""
    out: list[HttpResponse] = []
    off = 0
    finals = 0
    try:
        while off < len(data) and len(out) < _MAX_MESSAGES:
            method = request_methods[finals] if finals < len(request_methods) else ""
            resp = _response_at(data, off, method)
            if resp is None:
                break
            out.append(resp)
            if not resp.interim:
                finals += 1
            if resp.truncated or resp.length is None:
                break
            off += resp.length
    except Exception:  # noqa: BLE001 - as above
        pass
    return out


def chunked_body_end(data: bytes, pos: int) -> int | None:
    """Offset just past a chunked body starting at `pos`, or None if its end is not inside `data` (or it is bad)."""
    n = len(data)
    for _ in range(4096):
        eol = data.find(b"\n", pos, pos + 1024)
        if eol < 0:
            return None
        size_field = data[pos:eol].rstrip(b"\r").split(b";", 1)[0].strip()
        if not size_field or len(size_field) > 16:
            return None
        try:
            size = int(size_field, 16)
        except ValueError:
            return None
        if size_field.startswith((b"+", b"-", b"0x", b"0X")) or b"_" in size_field:
            return None
        pos = eol + 1
        if size == 0:
            while True:  # trailer section, ended by an empty line
                eol = data.find(b"\n", pos)
                if eol < 0:
                    return None
                line = data[pos:eol].rstrip(b"\r")
                pos = eol + 1
                if not line:
                    return pos
        pos += size
        if data.startswith(b"\r\n", pos):
            pos += 2
        elif data.startswith(b"\n", pos):
            pos += 1
        else:
            return None
        if pos >= n:
            return None
    return None


# -- internals ---------------------------------------------------------------------------------------------------


def _head_lines(data: bytes, start: int) -> tuple[list[bytes], int | None]:
    """Split the head beginning at `start` into lines; the head length is None when the snapshot cut it (and the
    last, possibly partial, line is dropped unless it is the only one)."""
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    ends = [(crlf, 4), (lf, 2)]
    ends = [(i, k) for i, k in ends if i >= 0]
    if ends:
        idx, k = min(ends)
        block = data[start:idx]
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in block.split(b"\n")]
        return lines, idx + k - start
    block = data[start:]
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in block.split(b"\n")]
    return lines, None


def _parse_headers(lines: list[bytes]) -> tuple[dict[str, str], bool] | None:
    """Header lines into a lower-cased dict (first value wins); None on a line no HTTP peer would send."""
    headers: dict[str, str] = {}
    last = ""
    capped = False
    for count, line in enumerate(lines):
        if count >= MAX_HEADERS:
            capped = True
            break
        if line[:1] in (b" ", b"\t"):  # obsolete line folding: continue the previous value
            if not last or not _VALUE.match(line):
                return None
            headers[last] = (headers[last] + " " + line.strip().decode("latin-1")).strip()
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name) or not _VALUE.match(value):
            return None
        key = name.decode("ascii").lower()
        if key not in headers:
            headers[key] = value.strip(b" \t").decode("latin-1")
            last = key
        else:
            last = ""
    return headers, capped


def _content_length(headers: dict[str, str]) -> int | None:
    raw = headers.get("content-length")
    if raw is None:
        return None
    if "," in raw:  # a list of values: valid when they all agree (RFC 9110 section 8.6)
        values = {v.strip() for v in raw.split(",")}
        if len(values) != 1:
            return None
        v = values.pop()
    else:
        v = raw.strip()
    if not v.isdigit() or not v.isascii() or len(v) > 18:
        return None
    return int(v)


def _is_chunked(headers: dict[str, str]) -> bool:
    te = headers.get("transfer-encoding")
    if not te:
        return False
    return te.split(",")[-1].strip().lower() == "chunked"


def _fast_headers(block: bytes) -> dict[str, str]:
    """The headers of a block the head patterns below matched (so every line is a valid, unfolded header)."""
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        key = name.lower()
        if key not in headers:
            headers[key] = value.strip(" \t")
    return headers


def _request_at(data: bytes, start: int) -> HttpRequest | None:
    if _heads is not None:
        req: HttpRequest | None = _heads.request_head(data, start, HttpRequest)
        if req is not None:
            return req
    sp = data.find(b" ", start, start + _MAX_METHOD + 1)
    if sp <= start or data[start:sp] not in _METHODS_B:
        return None
    m = _REQUEST_HEAD.match(data, start)
    if m is not None:
        method, target, version, lines = m.groups()
        if lines.count(b"\n") < MAX_HEADERS:
            # The common case, a whole head of CRLF lines, in one pattern; anything else takes the general path, which
            # gives the same result for this case (tests/edge/protocols/test_http1.py compares them).
            return _request(data, start, method.decode("ascii"), target, version.decode("ascii"),
                            _fast_headers(lines), False, False, m.end() - start)
    return _request_at_general(data, start)


def _request_at_general(data: bytes, start: int) -> HttpRequest | None:
    lines, head_len = _head_lines(data, start)
    truncated = head_len is None
    request_line = lines[0]
    header_lines = lines[1:-1] if truncated else lines[1:]
    parts = request_line.split(b" ")
    method = parts[0].decode("ascii")
    if len(parts) == 3 and not (truncated and len(lines) == 1):
        target_b, version_b = parts[1], parts[2]
        if version_b not in _VERSIONS:
            return None
        version = version_b[5:].decode("ascii")
    elif truncated and len(lines) == 1 and 2 <= len(parts) <= 3:
        # The snapshot ended inside the request line: keep the method and the target seen so far.
        target_b = parts[1]
        if len(parts) == 3 and not any(v.startswith(parts[2]) for v in _VERSIONS):
            return None
        version = ""
    else:
        return None
    if target_b and not _TARGET.match(target_b):
        return None
    if not target_b and not truncated:
        return None
    parsed = _parse_headers(header_lines)
    if parsed is None:
        return None
    headers, capped = parsed
    return _request(data, start, method, target_b, version, headers, truncated, capped, head_len)


def _request(data: bytes, start: int, method: str, target_b: bytes, version: str, headers: dict[str, str],
             truncated: bool, capped: bool, head_len: int | None) -> HttpRequest:
    target = target_b.decode("utf-8", "replace")
    path, query, target_host = _split_target(method, target)
    req = HttpRequest(
        method=method,
        target=target,
        path=path,
        query=query,
        version=version,
        headers=headers,
        host=headers.get("host", "") or target_host,
        truncated=truncated or capped,
        content_length=_content_length(headers),
        chunked=_is_chunked(headers),
        offset=start,
        head_length=head_len,
    )
    if head_len is not None and not capped:
        body_start = start + head_len
        if req.chunked:
            end = chunked_body_end(data, body_start)
            req.length = None if end is None else end - start
        elif req.content_length is not None:
            req.length = head_len + req.content_length
        elif "transfer-encoding" not in headers:
            req.length = head_len  # a request without either header has no body (RFC 9112 section 6.3)
    return req


def _split_target(method: str, target: str) -> tuple[str, str, str]:
    """(path, query, host from an absolute-form or authority-form target)."""
    if method == "CONNECT":
        return "", "", target
    if target == "*":
        return "*", "", ""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query.partition("#")[0], ""
    if "://" in target:
        try:
            parts = urlsplit(target)
            host = parts.netloc.rpartition("@")[2]
        except ValueError:
            return target, "", ""
        return parts.path or "/", parts.query, host
    return target, "", ""


def _response_at(data: bytes, start: int, request_method: str) -> HttpResponse | None:
    if _heads is not None:
        resp: HttpResponse | None = _heads.response_head(data, start, request_method, HttpResponse)
        if resp is not None:
            return resp
    if not data.startswith(b"HTTP/1.", start):
        return None
    m = _RESPONSE_HEAD.match(data, start)
    if m is not None:
        version, status, reason, lines = m.groups()
        if lines.count(b"\n") < MAX_HEADERS:  # as in _request_at
            return _response(data, start, request_method, int(status), reason or b"", version.decode(),
                             _fast_headers(lines), False, False, m.end() - start)
    return _response_at_general(data, start, request_method)


def _response_at_general(data: bytes, start: int, request_method: str) -> HttpResponse | None:
    lines, head_len = _head_lines(data, start)
    truncated = head_len is None
    status_line = lines[0]
    if truncated and len(lines) == 1:
        # Cut inside the status line: usable once the status code is complete.
        m = _STATUS_LINE.match(status_line[:12]) if len(status_line) >= 12 else None
        if m is None or (len(status_line) > 12 and status_line[12:13] != b" "):
            return None
        reason_b = status_line[13:]
        if not _VALUE.match(reason_b):
            return None
        version, status = m.group(1).decode(), int(m.group(2))
        return HttpResponse(status, reason_b.decode("latin-1"), version, {}, True, offset=start)
    m = _STATUS_LINE.match(status_line)
    if m is None:
        return None
    header_lines = lines[1:-1] if truncated else lines[1:]
    parsed = _parse_headers(header_lines)
    if parsed is None:
        return None
    headers, capped = parsed
    return _response(data, start, request_method, int(m.group(2)), m.group(3) or b"", m.group(1).decode(), headers,
                     truncated, capped, head_len)


def _response(data: bytes, start: int, request_method: str, status: int, reason: bytes, version: str,
              headers: dict[str, str], truncated: bool, capped: bool, head_len: int | None) -> HttpResponse:
    resp = HttpResponse(
        status=status,
        reason=reason.decode("latin-1"),
        version=version,
        headers=headers,
        truncated=truncated or capped,
        content_length=_content_length(headers),
        chunked=_is_chunked(headers),
        offset=start,
        head_length=head_len,
    )
    if head_len is not None and not capped:
        if 100 <= status < 200 or status in (204, 304) or request_method == "HEAD":
            resp.length = head_len
        elif request_method == "CONNECT" and 200 <= status < 300:
            resp.length = None  # a tunnel follows, not HTTP
        elif resp.chunked:
            end = chunked_body_end(data, start + head_len)
            resp.length = None if end is None else end - start
        elif resp.content_length is not None:
            resp.length = head_len + resp.content_length
    return resp
