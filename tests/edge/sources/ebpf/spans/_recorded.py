"""A fixed set of ring-buffer records of many shapes, and the spans built from them in a comparable form.

The records are packed exactly as the probes write them (bpf/io.h layouts, decode.py's structs), so that the check
covers decoding and span building together: HTTP/1 heads of many shapes (keep-alive, pipelined, split over syscalls,
cut by the snapshot, interim responses, chunked bodies, odd but legal header syntax, malformed heads), MQTT v5 and
3.1.1 publishes, TCP connects, faults and closes. `spans_json` turns spans into plain data with random ids replaced by
their order of first appearance, so that two builds of the same records compare equal.
"""
from __future__ import annotations

import dataclasses
import enum
import socket

from edge.protocols.mqtt import MQTT_5, MQTT_311
from edge.sources.ebpf.decode import (
    _CLOSE, _CONNECT, _DATA, _DATA_MORE, _FAULT, _RV_KERNEL, EV_CLOSE, EV_CONNECT, EV_DATA, EV_DATA_MORE, EV_TCP_FAULT,
    F_TLS,
)
from edge.sources.ebpf.events import (
    CloseEvent, ConnectEvent, DataEvent, DataMoreEvent, Endpoint, FaultKind, Role, TcpFaultEvent,
)
from tests.edge.protocols import mqtt_encode as enc

from ._helpers import BROKER, CLI, IN, OUT, SRV, TP, Wire, kernel_view, req, resp

_AF_INET = 2


def _addr(ep: Endpoint) -> bytes:
    return socket.inet_pton(socket.AF_INET, ep.addr) + bytes(12)


def _comm(comm: str) -> bytes:
    return comm.encode().ljust(16, b"\0")[:16]


def pack(ev: object) -> bytes:
    """The ring-buffer record the probes would have written for a decoded event."""
    if isinstance(ev, DataEvent):
        rv = (ev.rv | _RV_KERNEL) if ev.rv is not None else 0
        return _DATA.pack(EV_DATA, ev.pid, ev.tid, ev.fd, ev.ts_ns, ev.end_ns, ev.sock, ev.size, ev.prev_bytes,
                          ev.prev_end_ns, ev.offcpu_ns, rv, _addr(ev.local), _addr(ev.remote), ev.local.port,
                          ev.remote.port, _AF_INET, int(ev.role), int(ev.direction), _comm(ev.comm), len(ev.payload),
                          F_TLS if ev.tls else 0, ev.tls_version) + ev.payload
    if isinstance(ev, DataMoreEvent):
        return _DATA_MORE.pack(EV_DATA_MORE, ev.pid, ev.tid, len(ev.payload), int(ev.direction),
                               F_TLS if ev.tls else 0, ev.ts_ns, ev.end_ns, ev.sock, ev.offset) + ev.payload
    if isinstance(ev, CloseEvent):
        return _CLOSE.pack(EV_CLOSE, ev.pid, ev.tid, ev.fd, ev.ts_ns, ev.sock, ev.last_bytes, ev.last_end_ns,
                           ev.offcpu_ns)
    if isinstance(ev, ConnectEvent):
        return _CONNECT.pack(EV_CONNECT, ev.pid, ev.error, 0, ev.ts_ns, ev.sock, ev.latency_ns, _addr(ev.local),
                             _addr(ev.remote), ev.local.port, ev.remote.port, _AF_INET, int(Role.CLIENT), 0,
                             _comm(ev.comm))
    if isinstance(ev, TcpFaultEvent):
        return _FAULT.pack(EV_TCP_FAULT, int(ev.kind), ev.state, 0, ev.ts_ns, ev.sock, _addr(ev.local),
                           _addr(ev.remote), ev.local.port, ev.remote.port, _AF_INET, 0, 0)
    raise TypeError(type(ev).__name__)


def _server(sock: int, calls: list, **kw) -> list:
    kw.setdefault("comm", "api")
    return kernel_view(sock, calls, role=Role.SERVER, local=SRV, remote=CLI, **kw)


def _client(sock: int, calls: list, **kw) -> list:
    kw.setdefault("comm", "shop")
    return kernel_view(sock, calls, role=Role.CLIENT, local=CLI, remote=SRV, pid=200, tid=201, **kw)


def _close(sock: int, ts: int, last_bytes: int, last_end: int, pid: int = 100, tid: int = 101) -> CloseEvent:
    return CloseEvent(ts, pid, tid, 7, sock, last_bytes, last_end, 0)


def _http_server_shapes() -> list:
    evs: list = []
    # Keep-alive: three exchanges, W3C context, B3 context, none.
    w = Wire()
    w.io(IN, req(headers=[f"traceparent: {TP}"]))
    w.io(OUT, resp(body=b'{"id": 1}'), pause=40_000)
    w.io(IN, req("POST", "/api/orders", [
        "X-B3-TraceId: 4bf92f3577b34da6a3ce929d0e0e4736", "X-B3-SpanId: 00f067aa0ba902b7", "X-B3-Sampled: 1"],
        body=b'{"qty": 3}'), pause=9_000_000)
    w.io(OUT, resp(201, b"created"), pause=30_000)
    w.io(IN, req("DELETE", "/api/orders/7"), pause=9_000_000)
    w.io(OUT, resp(204, b"", headers=[]), pause=30_000)
    evs += _server(1, w.calls)
    evs.append(_close(1, w.t + 9_000_000, 0, 0))
    # Pipelined: two requests in one write, two responses in one write.
    w = Wire()
    w.io(IN, req(target="/a") + req(target="/b?x=1&y=2"))
    w.io(OUT, resp(body=b"A") + resp(404, b"missing"), pause=50_000)
    evs += _server(2, w.calls)
    evs.append(_close(2, w.t + 9_000_000, 0, 0))
    # A head split over three reads, then a response whose body outruns the snapshot (ended by the next message).
    head = req(target="/slow", headers=["Accept: */*", "X-Request-Id: 77"])
    w = Wire()
    w.io(IN, head[:20], head[20:61], head[61:])
    w.io(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 1000, b"y" * 4000, pause=40_000)
    w.io(IN, req(target="/after"), pause=9_000_000)
    w.io(OUT, resp(503, b"busy"), pause=40_000)
    evs += _server(3, w.calls)
    evs.append(_close(3, w.t + 9_000_000, 0, 0))
    # 100-continue, then the body, then the final response; a chunked response complete in the snapshot.
    w = Wire()
    w.io(IN, req("PUT", "/upload", ["Expect: 100-continue", "Content-Length: 11"]))
    w.io(OUT, b"HTTP/1.1 100 Continue\r\n\r\n", pause=20_000)
    w.io(IN, b"hello world", pause=20_000)
    w.io(OUT, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", pause=20_000)
    evs += _server(4, w.calls)
    evs.append(_close(4, w.t + 9_000_000, 0, 0))
    # Odd but legal syntax: LF-only lines, folded and repeated headers, tabs, upper-case names, HTTP/1.0, a query.
    odd = (b"GET /odd?q=%20x HTTP/1.0\nHOST:  shop.local  \nX-Fold: a\n\tb\nX-Dup: 1\nx-dup: 2\n"
           b"USER-AGENT:\tcurl/8.5\n\n")
    w = Wire()
    w.io(IN, odd)
    w.io(OUT, b"HTTP/1.0 200\r\nServer: x\r\nContent-Length: 0\r\n\r\n", pause=20_000)
    evs += _server(5, w.calls)
    evs.append(_close(5, w.t + 9_000_000, 0, 0))
    # A head longer than the snapshot (cut), then HEAD and 304.
    long_head = req(target="/big", headers=[f"X-Pad-{i}: {'v' * 30}" for i in range(12)])
    w = Wire()
    w.io(IN, long_head)
    w.io(OUT, resp(body=b"ok"), pause=20_000)
    w.io(IN, req("HEAD", "/big"), pause=9_000_000)
    w.io(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 123\r\n\r\n", pause=20_000)
    w.io(IN, req(target="/cached", headers=["If-None-Match: \"abc\""]), pause=9_000_000)
    w.io(OUT, b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\n\r\n", pause=20_000)
    evs += _server(6, w.calls)
    evs.append(_close(6, w.t + 9_000_000, 0, 0))
    # Malformed heads: a control byte in a value, a bad header name, a bad version; then a good one.
    w = Wire()
    w.io(IN, b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n")
    w.io(OUT, b"\x00\x01binary", pause=20_000)
    evs += _server(7, w.calls)
    w = Wire()
    w.io(IN, b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n")
    w.io(OUT, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", pause=20_000)
    w.io(IN, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", pause=9_000_000)
    w.io(IN, req(target="/ok"), pause=9_000_000)
    w.io(OUT, resp(body=b"fine"), pause=20_000)
    evs += _server(8, w.calls)
    evs.append(_close(8, w.t + 9_000_000, 0, 0))
    # A request the server never answers before closing.
    w = Wire()
    w.io(IN, req(target="/hang"))
    evs += _server(9, w.calls)
    evs.append(_close(9, w.t + 9_000_000, 0, 0))
    return evs


def _http_client_shapes() -> list:
    evs: list = [ConnectEvent(500_000, 200, "shop", 20, CLI, SRV, 42_000)]
    # The client side: an absolute-form target, an error status, a context-less request the kernel chose rv for.
    w = Wire()
    w.io(OUT, req(target="http://inventory.local:9000/stock?sku=1", host="inventory.local:9000"))
    w.io(IN, resp(500, b"boom"), pause=60_000)
    w.io(OUT, req(target="/stock?sku=2", headers=[f"traceparent: {TP}", "tracestate: a=b"]), pause=9_000_000)
    w.io(IN, resp(404, b"none", headers=["Content-Type: text/plain"]), pause=60_000)
    client = _client(20, w.calls)
    client[0] = dataclasses.replace(client[0], rv=0x12345678ABCDEF)
    evs += client
    evs.append(TcpFaultEvent(w.t + 100, FaultKind.RETRANSMIT, 20, CLI, SRV, 1))
    evs.append(_close(20, w.t + 9_000_000, 0, 0, pid=200, tid=201))
    # A connect that failed, a reset on another connection; TLS plaintext from the library.
    evs.append(ConnectEvent(w.t + 10_000_000, 200, "shop", 21, CLI, Endpoint("10.0.0.77", 443), 3_000_000, 111))
    w = Wire(t=w.t + 20_000_000)
    w.io(OUT, req(target="/secure", host="pay.local"))
    w.io(IN, resp(body=b"paid"), pause=80_000)
    tls = [dataclasses.replace(e, tls=True, tls_version=0x0304) for e in _client(22, w.calls)]
    evs += tls
    evs.append(TcpFaultEvent(w.t + 200, FaultKind.RECEIVE_RESET, 22, CLI, SRV, 7))
    evs.append(_close(22, w.t + 9_000_000, 0, 0, pid=200, tid=201))
    return evs


def _mqtt_shapes() -> list:
    kw = dict(role=Role.CLIENT, local=CLI, remote=BROKER, comm="sensor", pid=300, tid=301)
    w = Wire()
    w.io(OUT, enc.connect("press-3", MQTT_5))
    w.io(IN, enc.connack(version=MQTT_5), pause=30_000)
    w.io(OUT, enc.publish("plant/press/3", b'{"t": 1}', qos=1, packet_id=42,
                          user=[("traceparent", TP), ("tracestate", "a=b")]), pause=9_000_000)
    w.io(IN, enc.puback(42, version=MQTT_5), pause=30_000)
    w.read_like_libmosquitto(enc.publish("cmd/press/3", b"stop", user=[("traceparent", TP)]), pause=9_000_000)
    evs = kernel_view(30, w.calls, **kw)
    w = Wire()
    w.io(OUT, enc.connect("legacy", MQTT_311))
    w.io(OUT, enc.publish("line/1", b"\x00\x01\x02", version=MQTT_311), pause=9_000_000)
    evs += kernel_view(31, w.calls, **kw)
    evs.append(_close(31, w.t + 9_000_000, 0, 0, pid=300, tid=301))
    return evs


def recorded_records() -> list[bytes]:
    """The ring-buffer records of every shape above, in one stream."""
    events = _http_server_shapes() + _http_client_shapes() + _mqtt_shapes()
    return [pack(ev) for ev in events]


class _Ids:
    def __init__(self) -> None:
        self.seen: dict[bytes, str] = {}

    def __call__(self, raw: bytes) -> str:
        if not raw:
            return ""
        return self.seen.setdefault(raw, f"id{len(self.seen)}")


def _plain(value: object, ids: _Ids) -> object:
    if isinstance(value, bytes):
        return ids(value) if len(value) in (8, 16) else value.hex()
    if isinstance(value, enum.Enum):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), ids) for f in dataclasses.fields(value) if f.compare}
    if isinstance(value, dict):
        return {k: _plain(v, ids) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, ids) for v in value]
    return value


def spans_json(spans: list) -> list[object]:
    """Spans as plain data, random ids replaced by their order of first appearance; the kernel's rv part of a trace
    id is kept."""
    ids = _Ids()
    out = []
    for sp in spans:
        d = _plain(sp, ids)
        assert isinstance(d, dict)
        if "rv:" in sp.trace_state:
            d["trace_id_low"] = sp.trace_id[9:].hex()
        out.append(d)
    return out


def build(records: list[bytes], batch: int = 7, implementation: str = "pure") -> list:
    """Decode the records and build spans with one implementation (edge/accel.py), fed in batches of `batch`, then
    everything still waiting flushed."""
    from edge import accel

    from ._helpers import OFFSET

    mods = accel.modules(implementation)
    decode, spans_mod = mods["edge.sources.ebpf.decode"], mods["edge.sources.ebpf.spans"]
    b = spans_mod.SpanBuilder(spans_mod.SpanBuilderConfig(host_name="edge-1"), spans_mod.FixedClock(offset_ns=OFFSET))
    stats = decode.DecodeStats()
    spans = []
    for i in range(0, len(records), batch):
        spans += b.feed(decode.decode_batch(records[i:i + batch], stats))
    assert stats.dropped == 0
    spans += b.flush(10**15)
    assert b.stats.internal_errors == 0
    return spans


GOLDEN = __import__("pathlib").Path(__file__).with_name("recorded_spans.json")

if __name__ == "__main__":  # rewrite the expected spans: only when a change of span output is intended
    import json

    GOLDEN.write_text(json.dumps(spans_json(build(recorded_records())), indent=1, sort_keys=True) + "\n")
