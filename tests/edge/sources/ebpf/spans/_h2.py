"""HTTP/2 conversations made by python-hyper's h2 (a real HTTP/2 implementation), turned into the records the probes
would send: H2Events in frame mode (DATA payloads left out, bpf/h2.bpf.h) or DataEvents in message mode."""
from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

from edge.protocols import http2 as p
from edge.sources.ebpf.events import DataEvent, Direction, Endpoint, H2Event, Role

CLI = Endpoint("10.0.0.9", 51000)
SRV = Endpoint("10.0.0.5", 50051)


def kept(stream: bytes) -> bytes:
    """What frame mode sends of a direction's byte stream (preface excluded): headers, and non-DATA payloads."""
    return p.frame_mode_bytes(stream)[0]


@dataclass
class Conversation:
    """Both ends of one connection; `calls` is every write, in order: (direction from the client's side, bytes)."""

    client: h2.connection.H2Connection = field(default_factory=lambda: h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")))
    server: h2.connection.H2Connection = field(default_factory=lambda: h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8")))
    calls: list[tuple[Direction, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client.initiate_connection()
        self.flush()
        self.server.initiate_connection()
        self.flush()

    def flush(self) -> None:
        """Move whatever each end wants to send to the other, recording each as one call."""
        for _ in range(8):
            moved = False
            out = self.client.data_to_send()
            if out:
                self.calls.append((Direction.EGRESS, out))
                self._events(self.server.receive_data(out))
                moved = True
            out = self.server.data_to_send()
            if out:
                self.calls.append((Direction.INGRESS, out))
                self.client.receive_data(out)
                moved = True
            if not moved:
                return

    def _events(self, events: list[h2.events.Event]) -> None:
        pass

    def request(self, path: str, headers: tuple[tuple[str, str], ...] = (), body: bytes = b"", grpc: bool = True,
                end: bool = True) -> int:
        sid = self.client.get_next_available_stream_id()
        hs = [(":method", "POST" if grpc or body else "GET"), (":scheme", "http"), (":path", path),
              (":authority", "svc.local:50051")]
        if grpc:
            hs += [("content-type", "application/grpc"), ("te", "trailers")]
        self.client.send_headers(sid, hs + list(headers), end_stream=not body and end)
        if body:
            self.client.send_data(sid, body, end_stream=end)
        return sid

    def respond(self, sid: int, status: int = 200, body: bytes = b"", grpc_status: int | None = 0,
                messages: int = 1) -> None:
        hs = [(":status", str(status))]
        if grpc_status is not None:
            hs.append(("content-type", "application/grpc"))
        self.server.send_headers(sid, hs)
        for _ in range(messages):
            if body:
                self.server.send_data(sid, body)
        if grpc_status is not None:
            self.server.send_headers(sid, [("grpc-status", str(grpc_status)), ("grpc-message", "oh%20no")],
                                     end_stream=True)
        else:
            self.server.send_data(sid, b"", end_stream=True)


def grpc_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def frame_events(calls: list[tuple[Direction, bytes]], *, server_side: bool = False, sock: int = 7, t0: int = 1_000_000,
                 step: int = 1_000_000, start: bool = True, split: int = 0) -> list[H2Event]:
    """Frame-mode records of a conversation as one end sees it (the client's, or with `server_side` the server's).
    `split` > 0 cuts every call's kept bytes into records of that size (frames straddling calls)."""
    out: list[H2Event] = []
    streams = {Direction.EGRESS: b"", Direction.INGRESS: b""}
    first = {Direction.EGRESS: start, Direction.INGRESS: start}
    for i, (d, raw) in enumerate(calls):
        if server_side:
            d = Direction.INGRESS if d == Direction.EGRESS else Direction.EGRESS
        if raw.startswith(p.PREFACE):
            raw = raw[len(p.PREFACE):]
        pieces = [kept(raw)]
        if split:
            pieces = [pieces[0][j:j + split] for j in range(0, len(pieces[0]), split)] or [b""]
        for piece in pieces:
            ts = t0 + i * step
            role = Role.SERVER if server_side else Role.CLIENT
            local, remote = (SRV, CLI) if server_side else (CLI, SRV)
            out.append(H2Event(ts, ts + 1000, 100, 101 + (i % 3), "svc", sock, role, d, local, remote, len(raw), piece,
                               start=first[d], gap=False))
            first[d] = False
        streams[d] += raw
    return out


def message_events(calls: list[tuple[Direction, bytes]], *, payload_bytes: int = 256, sock: int = 7,
                   t0: int = 1_000_000, step: int = 1_000_000, role: Role = Role.CLIENT) -> list[DataEvent]:
    """Message-mode records (the client's view): each call a message of its own, its first payload_bytes sent."""
    out = []
    prev_bytes = prev_end = 0
    for i, (d, raw) in enumerate(calls):
        ts = t0 + i * step
        out.append(DataEvent(ts, ts + 1000, 100, 101, "svc", 7, sock, role, d, CLI, SRV, len(raw), raw[:payload_bytes],
                             prev_bytes, prev_end, 0))
        prev_bytes, prev_end = len(raw), ts + 1000
    return out
