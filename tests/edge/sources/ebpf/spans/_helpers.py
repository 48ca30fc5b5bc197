"""Shared by the span builder tests: events as the probes would send them, HTTP messages, a builder on a fixed clock."""
from __future__ import annotations

from edge.sources.ebpf.events import CloseEvent, DataEvent, DataMoreEvent, Direction, Endpoint, Role
from edge.sources.ebpf.spans import FixedClock, SpanBuilder, SpanBuilderConfig


OFFSET = 1_700_000_000_000_000_000
SRV = Endpoint("10.0.0.5", 8080)
CLI = Endpoint("10.0.0.9", 51000)
BROKER = Endpoint("10.0.0.2", 1883)
TID = "4bf92f3577b34da6a3ce929d0e0e4736"
SID = "00f067aa0ba902b7"
TP = f"00-{TID}-{SID}-01"
IN, OUT = Direction.INGRESS, Direction.EGRESS


def builder(**cfg) -> SpanBuilder:
    cfg.setdefault("host_name", "edge-1")
    return SpanBuilder(SpanBuilderConfig(**cfg), FixedClock(offset_ns=OFFSET))


def data(sock, direction, ts, payload, *, end=None, size=None, prev_bytes=0, prev_end=0, role=Role.SERVER, pid=100,
         tid=101, comm="api", offcpu=0, local=SRV, remote=CLI) -> DataEvent:
    return DataEvent(ts, end if end is not None else ts + 1000, pid, tid, comm, 7, sock, role, direction, local, remote,
                     len(payload) if size is None else size, payload[:256], prev_bytes, prev_end, offcpu)


def req(method="GET", target="/api/orders?id=1", headers=(), body=b"", host="shop.local:8080") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: test-agent/1.0", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def resp(status=200, body=b"ok", headers=()) -> bytes:
    lines = [f"HTTP/1.1 {status} X", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_clean(b: SpanBuilder) -> None:
    assert b.stats.internal_errors == 0
    assert b.connection_count == 0 and b.pending_count == 0
    assert not b.conns.waiting and not b.conns.by_pid  # internal maps back to baseline


def _messages(records, index):
    """Coalesce one relayed connection's recorded segments into direction runs: what the probes call messages."""
    out: list[tuple[str, bytes]] = []
    for i, name, chunk in records:
        if i != index:
            continue
        if out and out[-1][0] == name:
            out[-1] = (name, out[-1][1] + chunk)
        else:
            out.append((name, chunk))
    return out


def _replay(b, msgs, *, server_side: bool, sock=1, step=1_000_000, **kw):
    """Turn messages into the DataEvents the probes would emit, as seen by the server or the client process."""
    spans = []
    prev_bytes = prev_end = 0
    for n, (name, raw) in enumerate(msgs):
        ingress = (name == "up") == server_side
        ts = (n + 1) * step
        spans += b.feed([data(sock, IN if ingress else OUT, ts, raw, end=ts + 1000, size=len(raw), prev_bytes=prev_bytes,
                              prev_end=prev_end, role=Role.SERVER if server_side else Role.CLIENT, **kw)])
        prev_bytes, prev_end = len(raw), ts + 1000
    spans += b.feed([CloseEvent(len(msgs) * step + step, 100, 101, 7, sock, prev_bytes, prev_end, 0)])
    return spans


# `kernel_view` restates the rules of bpf/io.bpf.c (sock_done) so that the tests feed the builder exactly the records
# the probes would send for a sequence of syscalls; tests/bpf/test_kernel_spans.py checks the real thing.
GAP = 5_000_000  # sources.ebpf.message_gap, the probes' default


def kernel_view(sock, syscalls, *, payload_bytes=256, gap_ns=GAP, **kw):
    """DataEvents and DataMoreEvents for syscalls [(direction, bytes, sys_enter, sys_exit)] on one connection."""
    out = []
    direction, total, last_end = None, 0, 0
    for d, chunk, ts, end in syscalls:
        if d == direction and not (gap_ns and end - last_end > gap_ns):
            offset, total, last_end = total, total + len(chunk), end
            if offset < payload_bytes:  # top-up until payload_bytes of the message are out, then counting only
                out.append(DataMoreEvent(ts, end, sock, kw.get("pid", 100), kw.get("tid", 101), d, offset,
                                         chunk[:payload_bytes - offset]))
            continue
        prev_bytes, prev_end = (total, last_end) if direction is not None else (0, 0)
        direction, total, last_end = d, len(chunk), end
        out.append(data(sock, d, ts, chunk[:payload_bytes], end=end, size=len(chunk), prev_bytes=prev_bytes,
                        prev_end=prev_end, **kw))
    return out


class Wire:
    """Syscalls on one connection, written as a client library does them, with a clock."""

    def __init__(self, t=1_000_000):
        self.t = t
        self.calls = []

    def io(self, direction, *chunks, pause=0, step=2_000):
        """Syscalls moving `chunks` one after another, `pause` ns after the previous syscall."""
        self.t += pause
        for c in chunks:
            self.calls.append((direction, c, self.t, self.t + 1_000))
            self.t += step
        return self

    def read_like_libmosquitto(self, pkt, pause=0):
        """The command byte, each remaining-length byte, then the rest: libmosquitto, paho and the broker."""
        n = 2
        while pkt[n - 1] & 0x80:
            n += 1
        return self.io(IN, pkt[:1], *[pkt[i:i + 1] for i in range(1, n)], pkt[n:], pause=pause)


def dataclasses_replace(ev, **changes):
    import dataclasses

    return dataclasses.replace(ev, **changes)
