"""HTTP/2 frames turned into spans per second on one core: frame reassembly, HPACK, stream pairing and gRPC spans.

Builds a gRPC conversation with python-hyper's h2 (unary calls with a traceparent in their metadata, several streams
in flight), turns each direction into frame-mode records as bpf/h2.bpf.h sends them (DATA payloads left out), then
times SpanBuilder.feed over the client's view of it.

Same-run reference: python-hyper's maintained parsers on the full byte stream of the same conversation: hyperframe
for every frame and an hpack Decoder per direction for every header block, frames per second.

    python bench/h2_parse.py [--calls 5000] [--repeat 5]

Each is timed by the wall clock and by the CPU time of the process (time.process_time): on shared cores the wall
clock also counts the time the process waited for a core, the CPU time only what it ran ("on one core").

Last line: JSON with frames/s and spans/s of the span builder, the reference's frames/s and the ratio (wall clock), and
the same by CPU time (cpu_*).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h2.config
import hpack
import hyperframe.frame
import h2.connection
import h2.events
import h2.settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge.protocols import http2 as p  # noqa: E402
from edge.sources.ebpf.events import Direction, Endpoint, H2Event, Role  # noqa: E402
from edge.sources.ebpf.spans import FixedClock, SpanBuilder, SpanBuilderConfig  # noqa: E402

CLI = Endpoint("10.0.0.9", 51000)
SRV = Endpoint("10.0.0.5", 50051)
_INFLIGHT = 10


def conversation(calls: int) -> list[tuple[Direction, bytes]]:
    """Every write of a gRPC client and server, in order, (direction from the client's side, bytes)."""
    cfg = dict(header_encoding="utf-8")
    cli = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, **cfg))
    srv = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, **cfg))
    writes: list[tuple[Direction, bytes]] = []

    def ack(conn: h2.connection.H2Connection, events: list[h2.events.Event]) -> None:
        for ev in events:  # as a real peer does: the flow-control window is given back once data is read
            if isinstance(ev, h2.events.DataReceived) and ev.flow_controlled_length:
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)

    def move() -> None:
        for _ in range(6):
            out = cli.data_to_send()
            if out:
                writes.append((Direction.EGRESS, out))
                ack(srv, srv.receive_data(out))
            back = srv.data_to_send()
            if back:
                writes.append((Direction.INGRESS, back))
                ack(cli, cli.receive_data(back))
            if not out and not back:
                return

    cli.initiate_connection()
    srv.initiate_connection()
    move()
    body = b"\x00\x00\x00\x00\x20" + b"x" * 32
    done = 0
    while done < calls:
        sids = []
        for _ in range(min(_INFLIGHT, calls - done)):
            sid = cli.get_next_available_stream_id()
            tp = f"00-{done + len(sids) + 1:032x}-00f067aa0ba902b7-01"
            cli.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", "/helix.demo.Orders/Get"),
                                   (":authority", "orders:50051"), ("content-type", "application/grpc"),
                                   ("te", "trailers"), ("grpc-timeout", "5S"), ("traceparent", tp),
                                   ("user-agent", "grpc-python/1.66")])
            cli.send_data(sid, body, end_stream=True)
            sids.append(sid)
        move()
        for sid in sids:
            srv.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
            srv.send_data(sid, body)
            srv.send_headers(sid, [("grpc-status", "0"), ("grpc-message", "")], end_stream=True)
        move()
        done += len(sids)
    return writes


def records(writes: list[tuple[Direction, bytes]]) -> tuple[list[H2Event], int]:
    """The client's frame-mode records, and the number of frames in them."""
    out = []
    frames = 0
    for i, (d, raw) in enumerate(writes):
        kept, n = p.frame_mode_bytes(raw)
        frames += n
        ts = 1_000_000 + i * 10_000
        out.append(H2Event(ts, ts + 2000, 100, 101, "orders-client", 7, Role.CLIENT, d, CLI, SRV, len(raw), kept,
                           start=i < 2))
    return out, frames


def reference(writes: list[tuple[Direction, bytes]]) -> tuple[float, float]:
    """python-hyper's own parsers on the same bytes, both directions: hyperframe frames, every header block through
    an hpack Decoder per direction. Frames per second, by the wall clock and by CPU time."""
    frames = 0
    decoders = {Direction.EGRESS: hpack.Decoder(), Direction.INGRESS: hpack.Decoder()}
    t0, c0 = time.perf_counter(), time.process_time()
    for d, w in writes:
        at = len(p.PREFACE) if w.startswith(p.PREFACE) else 0
        view = memoryview(w)
        while at + 9 <= len(w):
            frame, length = hyperframe.frame.Frame.parse_frame_header(view[at:at + 9])
            frame.parse_body(view[at + 9:at + 9 + length])
            if isinstance(frame, hyperframe.frame.HeadersFrame):
                decoders[d].decode(frame.data)
            at += 9 + length
            frames += 1
    return frames / (time.perf_counter() - t0), frames / (time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5, help="runs of each, interleaved; the best is kept (shared cores)")
    args = ap.parse_args()
    writes = conversation(args.calls)
    evs, frames = records(writes)
    took, cpu, ref, ref_cpu = float("inf"), float("inf"), 0.0, 0.0
    for _ in range(args.repeat):
        builder = SpanBuilder(SpanBuilderConfig(host_name="bench"), FixedClock(offset_ns=0))
        t0, c0 = time.perf_counter(), time.process_time()
        spans = builder.feed(evs)
        took, cpu = min(took, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
        assert len(spans) == args.calls and builder.stats.internal_errors == 0, (len(spans), builder.stats)
        wall_ref, cpu_ref = reference(writes)
        ref, ref_cpu = max(ref, wall_ref), max(ref_cpu, cpu_ref)
    out = {"calls": args.calls, "frames": frames, "frames_per_s": round(frames / took),
           "spans_per_s": round(len(spans) / took), "ref_h2_receive_frames_per_s": round(ref),
           "ratio_to_ref": round(frames / took / ref, 2), "cpu_frames_per_s": round(frames / cpu),
           "cpu_ref_frames_per_s": round(ref_cpu), "cpu_ratio_to_ref": round(frames / cpu / ref_cpu, 2)}
    print(f"{frames:,} frames ({args.calls:,} gRPC calls, {_INFLIGHT} in flight) in {took * 1e3:.0f} ms (best of {args.repeat}): "
          f"{out['frames_per_s']:,} frames/s, {out['spans_per_s']:,} spans/s on one core")
    print(f"reference: hyperframe + hpack {out['ref_h2_receive_frames_per_s']:,} frames/s "
          f"(ratio {out['ratio_to_ref']})")
    print(f"by CPU time: {out['cpu_frames_per_s']:,} frames/s, reference {out['cpu_ref_frames_per_s']:,} "
          f"(ratio {out['cpu_ratio_to_ref']})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
