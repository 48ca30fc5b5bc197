"""The probes in this machine's kernel, driven by real servers and clients."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge.sources.ebpf.events import (
    CloseEvent,
    ConnectEvent,
    DataEvent,
    DataMoreEvent,
    Direction,
    ExecEvent,
    ExitEvent,
    FaultKind,
    FileIoEvent,
    FileOp,
    Role,
    TcpFaultEvent,
)

from .conftest import Server

pytestmark = pytest.mark.bpf


async def run(*argv: str) -> tuple[int, int, float]:
    """Run a command without blocking the loop; return (pid, exit code, wall seconds)."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
    rc = await proc.wait()
    return proc.pid, rc, time.monotonic() - t0


async def curl(port: int, path: str = "/path") -> tuple[int, float]:
    pid, rc, wall = await run("curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}{path}")
    assert rc == 0
    return pid, wall


async def test_http_request_through_server_and_curl(kernel: Any, http_server: Server) -> None:
    k = kernel()
    curl_pid, wall = await curl(http_server.port)
    srv = http_server.pid

    ingress = (await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == srv
                                and e.direction == Direction.INGRESS))[0]
    assert ingress.payload.startswith(b"GET /path HTTP/1.1\r\n")
    assert ingress.role == Role.SERVER
    assert ingress.local.addr == "127.0.0.1" and ingress.local.port == http_server.port
    assert ingress.remote.addr == "127.0.0.1"
    assert ingress.prev_bytes == 0 and ingress.prev_end_ns == 0
    assert ingress.ts_ns <= ingress.end_ns

    egress = (await k.wait_for(lambda e: isinstance(e, DataEvent) and e.sock == ingress.sock
                               and e.direction == Direction.EGRESS))[0]
    assert egress.payload.startswith(b"HTTP/1.")
    assert egress.role == Role.SERVER and egress.pid == srv
    assert egress.prev_bytes == ingress.size  # the request was one read
    assert egress.prev_end_ns == ingress.end_ns

    client_out = (await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == curl_pid
                                   and e.direction == Direction.EGRESS))[0]
    assert client_out.role == Role.CLIENT and client_out.comm == "curl"
    assert client_out.payload.startswith(b"GET /path HTTP/1.1")
    assert client_out.remote.port == http_server.port
    assert client_out.local.port == ingress.remote.port and client_out.remote == ingress.local
    assert client_out.size == ingress.size
    client_in = (await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == curl_pid
                                  and e.direction == Direction.INGRESS))[0]
    assert client_in.payload.startswith(b"HTTP/1.") and client_in.sock == client_out.sock

    conn = (await k.wait_for(lambda e: isinstance(e, ConnectEvent) and e.pid == curl_pid))[0]
    assert conn.error == 0 and conn.sock == client_out.sock and conn.comm == "curl"
    assert conn.remote.port == http_server.port and conn.local.port == client_out.local.port
    assert 0 < conn.latency_ns < wall * 1e9

    await k.wait_for(lambda e: isinstance(e, CloseEvent) and e.sock == ingress.sock and e.pid == srv)
    close = (await k.wait_for(lambda e: isinstance(e, CloseEvent) and e.pid == curl_pid))[0]
    assert close.sock == client_out.sock and close.last_bytes >= client_in.size

    execs = await k.wait_for(lambda e: isinstance(e, ExecEvent) and e.pid == curl_pid)
    assert execs[0].filename.endswith("/curl") and execs[0].ppid == os.getpid()
    exits = await k.wait_for(lambda e: isinstance(e, ExitEvent) and e.pid == curl_pid)
    assert exits[0].exit_code == 0


async def test_file_io_is_not_data_and_slow_file_io_is_reported(kernel: Any, tmp_path: Path) -> None:
    k = kernel(slow_file_ns=0)  # every regular-file read/write/fsync counts as slow
    target = tmp_path / "journal.dat"
    script = ("import os, sys\n"
              "fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o600)\n"
              "for _ in range(50): os.write(fd, b'x' * 4096)\n"
              "os.fsync(fd); os.close(fd)\n"
              "data = open(sys.argv[1], 'rb').read()\n")
    pid, rc, _ = await run(sys.executable, "-c", script, str(target))
    assert rc == 0

    fsync = (await k.wait_for(lambda e: isinstance(e, FileIoEvent) and e.pid == pid and e.op == FileOp.FSYNC))[0]
    assert fsync.path.endswith("/journal.dat") and fsync.size == 0 and fsync.end_ns >= fsync.ts_ns
    writes = await k.wait_for(lambda e: isinstance(e, FileIoEvent) and e.pid == pid and e.op == FileOp.WRITE
                              and e.path.endswith("/journal.dat"), count=50)
    assert all(w.size == 4096 for w in writes)
    await k.wait_for(lambda e: isinstance(e, FileIoEvent) and e.pid == pid and e.op == FileOp.READ
                     and e.path.endswith("/journal.dat") and e.size == 50 * 4096)
    assert str(target).endswith(fsync.path.removeprefix("..."))
    await k.settle()
    assert not [e for e in k.events if isinstance(e, (DataEvent, CloseEvent)) and e.pid == pid]


async def test_file_io_under_threshold_is_silent(kernel: Any, tmp_path: Path) -> None:
    k = kernel(slow_file_ns=10_000_000_000)  # 10 s: nothing on tmpfs/disk is this slow
    pid, rc, _ = await run(sys.executable, "-c",
                           "import os,sys; fd=os.open(sys.argv[1], os.O_CREAT|os.O_WRONLY); os.write(fd, b'x'); "
                           "os.fsync(fd)", str(tmp_path / "quick.dat"))
    assert rc == 0
    await k.wait_for(lambda e: isinstance(e, ExitEvent) and e.pid == pid)
    assert not [e for e in k.events if isinstance(e, FileIoEvent) and e.pid == pid]


async def test_exec_and_exit_of_spawned_processes(kernel: Any) -> None:
    k = kernel()
    true_pid, rc, _ = await run("/bin/true")
    assert rc == 0
    false_pid, rc, _ = await run("/bin/false")
    assert rc == 1
    killed_pid, rc, _ = await run("/bin/sh", "-c", "kill -9 $$")
    assert rc == -9

    ex = (await k.wait_for(lambda e: isinstance(e, ExecEvent) and e.pid == true_pid))[0]
    assert ex.filename == "/bin/true" and ex.comm == "true" and ex.ppid == os.getpid()
    assert (await k.wait_for(lambda e: isinstance(e, ExitEvent) and e.pid == true_pid))[0].exit_code == 0
    assert (await k.wait_for(lambda e: isinstance(e, ExitEvent) and e.pid == false_pid))[0].exit_code == 1
    assert (await k.wait_for(lambda e: isinstance(e, ExitEvent) and e.pid == killed_pid))[0].exit_code == -9


async def test_detach_and_attach_again(kernel: Any, http_server: Server) -> None:
    k = kernel()
    k.probes.detach()
    assert not k.probes.attached
    unseen, _ = await curl(http_server.port)
    await k.settle()
    assert not [e for e in k.events if getattr(e, "pid", None) == unseen]

    k.probes.attach()
    assert k.probes.attached and sorted(k.probes.program_info()) == sorted(
        [*k.probes.attached_programs, *k.probes.uprobe_programs()])
    seen, _ = await curl(http_server.port)
    out = (await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == seen))[0]
    assert out.payload.startswith(b"GET /path HTTP/1.1")


async def test_pid_allow_list_is_applied_live(kernel: Any, http_server: Server) -> None:
    k = kernel()
    k.probes.set_allowed_pids([http_server.pid])
    filtered_curl, _ = await curl(http_server.port)
    await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == http_server.pid
                     and e.direction == Direction.EGRESS)
    await k.wait_for(lambda e: isinstance(e, CloseEvent) and e.pid == http_server.pid)
    await k.settle()
    assert not [e for e in k.events if getattr(e, "pid", None) == filtered_curl]

    k.probes.set_allowed_pids(None)
    open_curl, _ = await curl(http_server.port)
    await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == open_curl)
    assert k.probes.map_entry_count("allowed_pids") == 0


def _pid_bit(k: Any, map_name: str, pid: int) -> bool:
    from edge.sources.ebpf import _libbpf

    raw = _libbpf.libbpf().lookup(k.probes.map_fd(map_name), (pid // 64).to_bytes(4, sys.byteorder), 8)
    return raw is not None and bool(int.from_bytes(raw, sys.byteorder) >> (pid % 64) & 1)


async def test_allow_list_bitmap_follows_the_allow_list(kernel: Any, http_server: Server) -> None:
    # the programs check the bitmap (an inlined array lookup) before the hash: both must say the same
    k = kernel()
    k.probes.set_allowed_pids([http_server.pid, 10 ** 9])  # the second is beyond any pid_max: the hash alone
    assert _pid_bit(k, "allowed_bits", http_server.pid)
    assert not _pid_bit(k, "allowed_bits", http_server.pid + 1)
    k.probes.set_allowed_pids([os.getppid()])
    assert not _pid_bit(k, "allowed_bits", http_server.pid) and _pid_bit(k, "allowed_bits", os.getppid())
    k.probes.set_allowed_pids(None)
    assert not _pid_bit(k, "allowed_bits", os.getppid())


async def test_busy_bit_is_cleared_by_sys_exit_and_thread_exit(kernel: Any, http_server: Server) -> None:
    # sys_exit skips the inflight lookup when the thread's busy bit is clear: a bit left set would cost a lookup per
    # syscall, a bit wrongly clear would lose the syscall's record
    k = kernel()
    pid, _ = await curl(http_server.port)
    await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == pid and e.direction == Direction.INGRESS)
    await k.wait_for(lambda e: isinstance(e, ExitEvent) and e.pid == pid)
    assert not _pid_bit(k, "busy_tids", pid)
    await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == http_server.pid
                     and e.direction == Direction.EGRESS)
    await k.settle()
    assert not _pid_bit(k, "busy_tids", http_server.pid)  # idle in accept(): its last read/write has returned


async def test_sampling_threshold_is_live_and_56_bit(kernel: Any, http_server: Server) -> None:
    # What a threshold holds back, and what is counted instead, is in test_kernel_sampling.py.
    k = kernel()
    assert k.probes.sample_threshold() == 0
    k.probes.set_sample_threshold(1 << 55)
    assert k.probes.sample_threshold() == 1 << 55
    k.probes.set_sample_threshold(0)
    kept, _ = await curl(http_server.port)
    await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == kept)
    assert k.probes.decision_counts() == dict.fromkeys(k.probes.decision_counts(), 0), "threshold 0 decides nothing"
    with pytest.raises(ValueError):
        k.probes.set_sample_threshold(1 << 56)


RESET_SCRIPT = r"""
import socket, struct, time
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen()
c = socket.create_connection(ls.getsockname())
a, _ = ls.accept()
c.sendall(b"ping"); a.recv(4)
print(ls.getsockname()[1], c.getsockname()[1], flush=True)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()          # SO_LINGER 0: close sends RST instead of FIN
time.sleep(0.3)
try:
    a.recv(1)
except ConnectionResetError:
    pass
a.close()
"""


async def test_linger_zero_close_is_a_reset_on_both_ends(kernel: Any) -> None:
    k = kernel()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", RESET_SCRIPT, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    listen_port, client_port = map(int, out.split())

    sent = (await k.wait_for(lambda e: isinstance(e, TcpFaultEvent) and e.kind == FaultKind.SEND_RESET
                             and e.local.port == client_port))[0]
    assert sent.remote.port == listen_port and sent.remote.addr == "127.0.0.1"
    got = (await k.wait_for(lambda e: isinstance(e, TcpFaultEvent) and e.kind == FaultKind.RECEIVE_RESET
                            and e.local.port == listen_port and e.remote.port == client_port))[0]
    assert got.sock != sent.sock
    client_data = k.of(DataEvent, pid=proc.pid, direction=Direction.EGRESS)
    assert client_data and client_data[0].sock == sent.sock and client_data[0].role == Role.CLIENT


TOPUP_SCRIPT = r"""
import socket, time
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen()
c = socket.create_connection(ls.getsockname()); a, _ = ls.accept()
c.sendall(b"sub"); a.recv(3)      # a read: what `a` writes next starts an egress message
print(ls.getsockname()[1], flush=True)
a.send(b"\x30"); a.send(b"\x05"); a.sendmsg([b"he", b"llo"])   # one message moved in three syscalls
time.sleep(0.3)                                                   # idle: longer than the gap
a.send(b"x" * 100); a.send(b"y" * 100); a.send(b"z" * 100)
time.sleep(0.1)
"""


@pytest.mark.parametrize("gap_ms", [50, 0])
async def test_later_syscalls_top_the_snapshot_up_and_idle_gaps_start_messages(kernel: Any, gap_ms: int) -> None:
    k = kernel(payload_bytes=128, message_gap_ns=gap_ms * 1_000_000)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", TOPUP_SCRIPT, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    # The probes trace every process: once the script's sockets are gone, another process's connection may get the
    # same sock address (other tests, other suites on the machine). Its records begin after this.
    exited_ns = time.monotonic_ns()
    assert proc.returncode == 0
    port = int(out)
    first = (await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == proc.pid and e.local.port == port
                              and e.direction == Direction.EGRESS))[0]
    assert (first.payload, first.size, first.role) == (b"\x30", 1, Role.SERVER)
    await k.settle()
    starts = [e for e in k.of(DataEvent, sock=first.sock) if e.direction == Direction.EGRESS and e.ts_ns < exited_ns]
    mores = [e for e in k.of(DataMoreEvent, sock=first.sock) if e.ts_ns < exited_ns]
    more = [(e.offset, e.payload) for e in mores]
    assert all(e.pid == proc.pid and e.direction == Direction.EGRESS for e in mores)
    if gap_ms:
        # The pause started a second message; each gets at most payload_bytes (128): 100 + a top-up of 28.
        assert [(e.payload[:1], e.size, e.prev_bytes) for e in starts] == [(b"\x30", 1, 3), (b"x", 100, 7)]
        assert more == [(1, b"\x05"), (2, b"hello"), (100, b"y" * 28)]
    else:
        # No gap rule: one message, whose first 128 bytes went up over four syscalls and then nothing.
        assert len(starts) == 1
        assert more == [(1, b"\x05"), (2, b"hello"), (7, b"x" * 100), (107, b"y" * 21)]
    assert all(m.ts_ns <= m.end_ns for m in mores) and mores[0].ts_ns >= first.end_ns


ECHO_SERVER = r"""
import socket
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(512)
print(ls.getsockname()[1], flush=True)
while True:
    a, _ = ls.accept()
    if a.recv(16) == b"quit":
        break
    a.sendall(b"ok")
    a.close()
"""

MANY_CLIENTS = r"""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()   # wait until the test has allowed our pid
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"hi")
    assert c.recv(2) == b"ok"
    c.close()
c = socket.create_connection(("127.0.0.1", port)); c.sendall(b"quit"); c.close()
"""


@pytest.mark.slow
async def test_ten_thousand_short_connections_leave_no_state(kernel: Any) -> None:
    k = kernel(ringbuf_bytes=8 << 20)
    n = 10_000
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", ECHO_SERVER, stdout=asyncio.subprocess.PIPE)
    assert server.stdout is not None
    port = int(await server.stdout.readline())
    client = await asyncio.create_subprocess_exec(sys.executable, "-c", MANY_CLIENTS, str(port), str(n),
                                                  stdin=asyncio.subprocess.PIPE)
    # only these two processes: other work on the machine must not move the map counts
    k.probes.set_allowed_pids([server.pid, client.pid])
    baseline = k.probes.map_entry_count("conns")
    assert client.stdin is not None
    client.stdin.write(b"go\n")
    await client.stdin.drain()
    assert await client.wait() == 0
    assert await server.wait() == 0

    connects = await k.wait_for(lambda e: isinstance(e, ConnectEvent) and e.pid == client.pid,
                                count=n + 1 - k.probes.lost_events(), timeout=60)
    assert len(connects) > n // 2
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while k.probes.map_entry_count("conns") > baseline and loop.time() < deadline:
        await asyncio.sleep(0.1)
    # at most the baseline: connections other processes had open when the allow-list was set may close meanwhile
    assert k.probes.map_entry_count("conns") <= baseline
    assert k.probes.map_entry_count("conn_start") == 0
    assert k.probes.drop_counts()["state_full"] == 0


SELF_PROBE = b"GET /from-the-agent HTTP/1.0\r\n\r\n"


async def test_the_agents_own_traffic_is_not_traced(kernel: Any, http_server: Server) -> None:
    async def talk() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", http_server.port)
        writer.write(SELF_PROBE)
        await reader.read()
        writer.close()
        await writer.wait_closed()

    me = os.getpid()
    k = kernel()  # self_pid defaults to this process
    await talk()
    await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == http_server.pid
                     and e.payload.startswith(b"GET /from-the-agent"))
    await k.settle()
    assert not [e for e in k.events if getattr(e, "pid", None) == me]

    other = kernel(self_pid=1)  # the same traffic, with the exclusion pointed elsewhere, is seen
    await talk()
    mine = await other.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == me)
    assert mine[0].role == Role.CLIENT and mine[0].payload.startswith(b"GET /from-the-agent")


async def test_off_cpu_time_accumulates_between_messages(kernel: Any) -> None:
    k = kernel()
    script = ("import socket, time\n"
              "ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen()\n"
              "c = socket.create_connection(ls.getsockname()); a, _ = ls.accept()\n"
              "c.sendall(b'ask'); a.recv(3)\n"
              "time.sleep(0.3)\n"
              "a.sendall(b'answer'); c.recv(6)\n")
    pid, rc, _ = await run(sys.executable, "-c", script)
    assert rc == 0
    got = (await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == pid and e.payload == b"ask"
                            and e.direction == Direction.INGRESS))[0]
    sent = (await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == pid and e.payload == b"answer"
                             and e.direction == Direction.EGRESS))[0]
    assert sent.tid == got.tid
    assert sent.offcpu_ns - got.offcpu_ns >= 250_000_000  # it slept 300 ms between the two


def _bpf_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:") and ("bpf" in target or "perf_event" in target):
            n += 1
    return n


def test_close_leaves_no_links_maps_or_programs(load_probes: Any) -> None:
    before = _bpf_fds()
    probes = load_probes()
    assert len(probes.attached_programs) >= 25
    # one program serves every read/write-like exit: verified once, attached to each call's tracepoint
    assert probes.attached_programs.count("exit_rw") == 1
    assert probes.attached_tracepoints >= len(probes.attached_programs) + 8
    assert _bpf_fds() > before + probes.attached_tracepoints
    probes.close()
    assert _bpf_fds() == before
    probes.close()  # idempotent
    pinned = Path("/sys/fs/bpf")
    if pinned.is_dir():
        assert not [p for p in pinned.rglob("*") if p.name in ("events", "conns", "config")]


def test_only_inet_stream_sockets_get_connection_state(load_probes: Any) -> None:
    from edge.sources.ebpf import _libbpf

    probes = load_probes(self_pid=1)  # trace this very process, and only it
    probes.set_allowed_pids([os.getpid()])

    def new_conns() -> set[bytes]:
        # Other processes' TCP I/O before the allow-list applied may have left entries: count only new ones.
        return set(_libbpf.libbpf().keys(probes.map_fd("conns"), 8)) - before

    before: set[bytes] = set()
    before = new_conns()
    a, b = socket.socketpair()
    a.sendall(b"x"); b.recv(1)
    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u1.bind(("127.0.0.1", 0))
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u2.sendto(b"y", u1.getsockname()); u1.recv(1)
    assert len(new_conns()) == 0  # unix and UDP sockets are not tracked
    ls = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(ls.getsockname())
    s, _ = ls.accept()
    c.sendall(b"z"); s.recv(1)
    assert len(new_conns()) == 2  # the client and the accepted socket
    for sock in (a, b, u1, u2, c, s, ls):
        sock.close()


async def test_a_socket_file_reused_by_another_socket_is_classified_afresh(kernel: Any) -> None:
    # A closed socket's fd number and struct file are handed to the next socket (the slab gives the freed object back
    # first): a TCP socket file the probes remembered must not make a later UDP socket at that address look like TCP,
    # nor make a later TCP connection's records carry the closed one's sock and ports.
    k = kernel(self_pid=1)  # trace this very process, and only it
    k.probes.set_allowed_pids([os.getpid()])
    ls = socket.create_server(("127.0.0.1", 0))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    expected: list[tuple[bytes, int, int]] = []
    for i in range(20):
        c = socket.create_connection(ls.getsockname())
        s, _ = ls.accept()
        tag = b"tcp-%02d" % i
        c.sendall(tag)
        assert s.recv(16) == tag
        expected.append((tag, c.getsockname()[1], s.getsockname()[1]))
        c.close()
        s.close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"udp-%02d" % i, sink.getsockname())
        u.close()
        assert sink.recv(16) == b"udp-%02d" % i
    sent = await k.wait_for(lambda e: isinstance(e, DataEvent) and e.pid == os.getpid()
                            and e.direction == Direction.EGRESS and e.payload.startswith(b"tcp-"), count=20)
    await k.settle()
    by_tag = {e.payload: e for e in sent}
    for tag, local, remote in expected:
        e = by_tag[tag]
        assert (e.local.port, e.remote.port) == (local, remote)
    assert not [e for e in k.events if isinstance(e, (DataEvent, DataMoreEvent)) and e.payload.startswith(b"udp-")]
    ls.close()
    sink.close()
