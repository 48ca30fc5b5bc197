// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket and file I/O seen from syscall tracepoints, TCP state from sock:/tcp: raw tracepoints.
 *
 * A read/write-family syscall is classified at sys_enter by walking task->files->fdt->fd[fd]: TCP sockets
 * (inet/inet6 SOCK_STREAM) and regular files are remembered in `inflight`; everything else (pipes, ttys,
 * unix sockets, eventfds) costs one fd lookup and nothing more. At sys_exit a socket syscall updates the
 * connection's state in `conns`. The first syscall of a message (the direction changed, or the connection
 * was idle longer than settings.msg_idle_gap_ns) sends a data_event with its first bytes; the message's
 * later syscalls send small data_more_events with theirs until payload_bytes of the message are out, and
 * nothing after that. A file syscall sends a record only when it was slower than settings.slow_file_ns.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "io.h"
#include "maps.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define DIR_EGRESS 0
#define DIR_INGRESS 1
#define DIR_NONE 0xff

#define ROLE_UNKNOWN 0
#define ROLE_CLIENT 1
#define ROLE_SERVER 2

#define FILE_READ 0
#define FILE_WRITE 1
#define FILE_FSYNC 2
#define FILE_NONE 0xff

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

#define ECONNABORTED 103

#define IOV_MAX_COPY 4 /* iovec segments copied into a payload snapshot */

/* HTTP/2 frame boundaries of one direction of a connection in frame mode (h2.bpf.h). */
struct h2_dir {
	__u32 rem;    /* payload bytes of the current frame still to come; 0: a frame header is next */
	__u8 have;    /* bytes of a frame header that straddled the previous call (in hdr) */
	__u8 copy;    /* the current frame's payload goes to userspace */
	__u8 resync;  /* a record was lost: keep nothing until the next frame header, then say HELIX_H2_GAP */
	__u8 fresh;   /* nothing sent yet since the preface: the next record says HELIX_H2_START */
	__u8 hdr[32]; /* a header has 9 bytes; the room past them keeps every partial copy in bounds */
};

/* Per-connection state, keyed by struct sock address. Deleted by tcp:tcp_destroy_sock (the kernel frees
 * the sock right after), so a closed connection never outlives its socket; LRU bounds whatever a missed
 * destroy could leave. 65536 x ~230 B = 15 MiB at most. */
struct conn_state {
	__u64 bytes;   /* bytes of the message in flight */
	__u64 end_ns;  /* sys_exit of its last syscall */
	__u8 dir;      /* direction of the message in flight, DIR_NONE before the first */
	__u8 role;     /* ROLE_* */
	__u16 sport;   /* local port once known: a reset on close has already released it from the sock */
	__u8 skip;     /* SKIP_* (sampling.bpf.h): the message in flight is held back */
	__u8 tls;      /* its messages are the TLS library's plaintext (tls.bpf.h); the socket's own bytes are not sent */
	__u8 tls_seen; /* a message of it began with a TLS record header: a socket a guessed TLS link may go to */
	__u8 h2;       /* H2_* (h2.bpf.h): HTTP/2 frame mode */
	__u8 mqtt;     /* it carried an MQTT CONNECT or CONNACK: PUBLISHes read on it are decided (mqtt_in.bpf.h) */
	__u64 held_bytes;  /* books of the last message sent before the held-back ones, which the next record */
	__u64 held_end_ns; /* sent (data_event or close) reports as its previous message */
	__u64 ssl;     /* the SSL object linked to it (tls.bpf.h), 0: none */
	struct h2_dir h2d[2]; /* by Direction */
	/* The endpoints as read from the sock once both ports were set (family 0: not yet): a message's record copies
	 * them instead of reading five sock fields again. A connect() starts the state afresh, so they cannot go stale. */
	struct helix_endpoints ep;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct conn_state);
} conns SEC(".maps");

/* SYN_SENT timestamp and connecting task, keyed by sock, until ESTABLISHED or CLOSE. 8192 x ~90 B. */
struct conn_start {
	__u64 ts_ns;
	__u32 pid;
	__u32 _pad;
	char comm[HELIX_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct conn_start);
} conn_start SEC(".maps");

/* Where a data record is assembled before bpf_ringbuf_output, so the record is only as long as its
 * payload. Twice HELIX_PAYLOAD_MAX of room so that the verifier can bound every partial copy simply. */
struct data_scratch {
	__u8 raw[sizeof(struct data_event) + 2 * HELIX_PAYLOAD_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct data_scratch);
} scratch SEC(".maps");

/* TCP socket files classified lately, per CPU, by the file's address (struct file comes from a slab of 256-byte objects,
 * hence the shift). A traced syscall on a file found here checks that the file still holds the same socket and the
 * socket the same sock (two reads) instead of classifying it again (inode mode, socket type, sock, family: four more,
 * on two more cache lines). A file freed and reused at the same address by another socket cannot pass: its socket
 * would have to reuse the old one's address and hold a sock at the old sock's, which comes from the TCP slab and so is
 * a TCP sock again. */
struct sock_file {
	__u64 file;
	__u64 so;
	__u64 sk;
};

#define SOCK_FILES 64

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SOCK_FILES);
	__type(key, __u32);
	__type(value, struct sock_file);
} sock_files SEC(".maps");

#include "sampling.bpf.h"

/* The struct file behind the current task's fd. io.bpf.o loads on 5.17+ only (bpf_loop), so it walks task -> files ->
 * fdt with BTF-typed loads (bpf_get_current_task_btf, 5.11+), which the JIT inlines, instead of one helper call per
 * field; this runs on every read/write-family syscall of every traced process. The slot in the fd array is indexed
 * by a runtime value, which the verifier refuses on a BTF pointer: that read stays a helper call. io_compat.bpf.o,
 * for older kernels, reads every field through helpers. */
static __always_inline struct file *fd_file(long fd)
{
	struct file **fds;
	struct file *f = NULL;
#ifndef HELIX_NO_BPF_LOOP
	struct fdtable *fdt = bpf_get_current_task_btf()->files->fdt;

	if (fd < 0 || !fdt || fd >= fdt->max_fds)
		return NULL;
	fds = fdt->fd;
#else
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);

	if (fd < 0 || !fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
#endif
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline __u16 file_type(struct file *f)
{
	return BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT;
}

/* The struct sock behind a socket file, if it is a TCP-like (inet, stream) socket; remembered in sock_files. */
static __always_inline struct sock *stream_sock(struct file *f)
{
	struct socket *so = BPF_CORE_READ(f, private_data);
	struct sock_file *c;
	struct sock *sk;
	__u16 family;
	__u32 key;

	if (!so || BPF_CORE_READ(so, type) != SOCK_STREAM)
		return NULL;
	sk = BPF_CORE_READ(so, sk);
	if (!sk)
		return NULL;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return NULL;
	key = ((__u64)f >> 8) & (SOCK_FILES - 1);
	c = bpf_map_lookup_elem(&sock_files, &key);
	if (c) {
		c->file = (__u64)f;
		c->so = (__u64)so;
		c->sk = (__u64)sk;
	}
	return sk;
}

/* The TCP sock behind f when sock_files knows f and it still holds the same socket and sock, else NULL. */
static __always_inline struct sock *known_stream_sock(struct file *f)
{
	__u32 key = ((__u64)f >> 8) & (SOCK_FILES - 1);
	struct sock_file *c = bpf_map_lookup_elem(&sock_files, &key);
	struct socket *so;

	if (!c || c->file != (__u64)f)
		return NULL;
	so = BPF_CORE_READ(f, private_data);
	if ((__u64)so != c->so || (__u64)BPF_CORE_READ(so, sk) != c->sk) {
		c->file = 0;
		return NULL;
	}
	return (struct sock *)c->sk;
}

static __always_inline void read_endpoints(struct sock *sk, struct helix_endpoints *ep)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	ep->family = family;
	ep->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	ep->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		__u32 a = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 b = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		__builtin_memcpy(ep->saddr, &a, 4);
		__builtin_memcpy(ep->daddr, &b, 4);
	} else {
		BPF_CORE_READ_INTO(&ep->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&ep->daddr, sk, __sk_common.skc_v6_daddr);
	}
}

/* The connection's endpoints into ep (role and direction left to the caller), from the state's copy once it has one. */
static __always_inline void conn_endpoints(struct sock *sk, struct conn_state *st, struct helix_endpoints *ep)
{
	if (!st->ep.family) {
		read_endpoints(sk, &st->ep);
		if (!st->ep.sport || !st->ep.dport) {
			/* not connected yet: this record has what there is, the next one reads again */
			*ep = st->ep;
			st->ep.family = 0;
			return;
		}
	}
	*ep = st->ep;
}

/* The current thread's name, as bpf_get_current_comm gives it (the kernel keeps comm NUL-padded). io.bpf.o reads it
 * with two BTF-typed loads the JIT inlines instead of a helper call that copies it byte by byte. */
static __always_inline void current_comm(char *dst)
{
#ifndef HELIX_NO_BPF_LOOP
	__builtin_memcpy(dst, bpf_get_current_task_btf()->comm, HELIX_COMM_LEN);
#else
	bpf_get_current_comm(dst, HELIX_COMM_LEN);
#endif
}

/* The thread's cumulative off-CPU time; creating the entry enrols the thread in sched_switch accounting. */
static __always_inline __u64 thread_offcpu(__u32 tid)
{
	struct offcpu_state *st = bpf_map_lookup_elem(&offcpu, &tid);
	struct offcpu_state zero = {};

	if (st)
		return st->total_ns;
	if (!bpf_map_update_elem(&offcpu, &tid, &zero, BPF_NOEXIST))
		id_bit_set(&offcpu_tids, tid, true);
	return 0;
}

static __always_inline struct conn_state *conn_get(__u64 sk, __u8 role, bool reset)
{
	struct conn_state fresh = { .dir = DIR_NONE, .role = role };
	struct conn_state *st;

	if (!reset) {
		st = bpf_map_lookup_elem(&conns, &sk);
		if (st)
			return st;
	}
	if (bpf_map_update_elem(&conns, &sk, &fresh, BPF_ANY)) {
		count_drop(HELIX_DROP_STATE_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&conns, &sk);
}

/* ---- read/write family --------------------------------------------------------------------------- */

static __always_inline int rw_enter(struct trace_event_raw_sys_enter *ctx, __u8 dir, __u8 file_op,
				    __u8 bufkind)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct sys_call in = {};
	struct inflight *slot;
	struct sock *sk;
	struct file *f;
	__u16 type;

	if (!traced(id >> 32))
		return 0;
	f = fd_file((long)(int)ctx->args[0]);
	if (!f)
		return 0;
	sk = known_stream_sock(f);
	type = sk ? S_IFSOCK : file_type(f);
	if (type == S_IFSOCK) {
		if (!sk)
			sk = stream_sock(f);
		if (!sk || bufkind > BUF_MSG)
			return 0;
		in.kind = IF_SOCK;
		in.obj = (__u64)sk;
		in.op = dir;
	} else if (type == S_IFREG && file_op != FILE_NONE && settings.slow_file_ns != ~0ULL) {
		in.kind = IF_FILE;
		in.obj = (__u64)f;
		in.op = file_op;
	} else {
		return 0;
	}
	in.fd = (int)ctx->args[0];
	/* fsync has one argument: its record ends before args[1], and the kernel refuses to attach a
	 * program that may read past a tracepoint's record (bufkind is a constant, so this folds away). */
	if (bufkind <= BUF_MSG) {
		in.buf = ctx->args[1];
		in.bufkind = bufkind;
		in.iovcnt = bufkind == BUF_IOV ? (__u32)ctx->args[2] : 0;
	}
	in.ts_ns = bpf_ktime_get_ns();
	/* The thread's slot is reused in place: an update allocates an LRU node and a delete frees it, each under
	 * locks, on every traced syscall. sys_exit marks the slot empty; sched_process_exit deletes it. */
	slot = bpf_map_lookup_elem(&inflight, &tid);
	if (slot) {
		slot->sc = in; /* the TLS call and link fields stay: a syscall may run inside a TLS call */
	} else {
		struct inflight fresh = { .sc = in };

		if (bpf_map_update_elem(&inflight, &tid, &fresh, BPF_ANY)) {
			count_drop(HELIX_DROP_STATE_FULL);
			return 0;
		}
	}
	id_bit_set(&busy_tids, tid, true);
	return 0;
}

/* n, at most HELIX_PAYLOAD_MAX, in the very register handed to a helper. From a plain min() clang may compare one copy
 * of n and pass another, refilled from the stack, which verifiers before 6.8 see unbounded (6.1: "R2 unbounded memory
 * access, use 'var &= const' or 'if (var < const)'"); a mask does not help, clang drops it as redundant. */
static __always_inline __u64 payload_bound(__u64 n)
{
	asm volatile("if %[n] <= %[max] goto +1; %[n] = %[max]" : [n] "+r"(n) : [max] "i"(HELIX_PAYLOAD_MAX));
	return n;
}

/* Copy up to `want` (<= HELIX_PAYLOAD_MAX) bytes spread over an iovec array; returns bytes copied. */
static __always_inline __u32 copy_iov(__u8 *dst, struct iovec_user *iov, __u64 cnt, __u32 want)
{
	__u32 got = 0;

#pragma unroll
	for (int i = 0; i < IOV_MAX_COPY; i++) {
		struct iovec_user v;
		__u64 n;

		if (i >= cnt || got >= want)
			break;
		if (bpf_probe_read_user(&v, sizeof(v), &iov[i]))
			break;
		n = want - got;
		if (n > v.iov_len)
			n = v.iov_len;
		n = payload_bound(n);
		if (bpf_probe_read_user(dst + (got & (HELIX_PAYLOAD_MAX - 1)), n, v.iov_base))
			break;
		got += n;
	}
	return got;
}

/* Copies up to `want` bytes of the syscall's buffer (plain, iovec array or msghdr) to dst; returns the count. */
static __always_inline __u32 copy_payload(__u8 *dst, struct sys_call *in, __u64 size, __u32 want)
{
	__u32 got = 0;

	if (want > HELIX_PAYLOAD_MAX)
		want = HELIX_PAYLOAD_MAX;
	if (want > size)
		want = size;
	if (in->bufkind == BUF_PLAIN) {
		/* the mask restates the bound for the verifier, which loses it when clang keeps min() in a copy */
		want &= 2 * HELIX_PAYLOAD_MAX - 1;
		/* and again in the register the call takes: 5.10 and 6.1 lost it across a spill once exit_rw grew */
		asm volatile("%0 &= %1" : "+r"(want) : "i"(2 * HELIX_PAYLOAD_MAX - 1));
		if (bpf_probe_read_user(dst, want, (void *)in->buf) == 0)
			got = want;
	} else if (in->bufkind == BUF_IOV) {
		got = copy_iov(dst, (struct iovec_user *)in->buf, in->iovcnt, want);
	} else {
		struct user_msghdr msg;

		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)in->buf) == 0)
			got = copy_iov(dst, msg.msg_iov, msg.msg_iovlen, want);
	}
	/* 6.1 saw the bound checked on one copy of got and the other passed on (a 32-bit mov links no copies there):
	 * "invalid access to map value, value_size=2192 off=0 size=2352" at bpf_ringbuf_output */
	return payload_bound(got);
}

#include "h2.bpf.h"

/* A later syscall of the message whose first `offset` bytes moved before it (offset < payload_bytes): the
 * bytes that bring the message's snapshot up to payload_bytes. */
static __always_inline void emit_more(struct sys_call *in, struct sock *sk, __u64 size, __u64 offset, __u64 now,
				      __u64 id, __u8 flags)
{
	__u32 zero = 0;
	struct data_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	struct data_more_event *ev;
	__u32 got;

	if (!s)
		return;
	ev = (struct data_more_event *)s->raw;
	ev->type = HELIX_EV_DATA_MORE;
	ev->pid = id >> 32;
	ev->tid = (__u32)id;
	ev->direction = in->op;
	ev->flags = flags;
	ev->ts_ns = in->ts_ns;
	ev->end_ns = now;
	ev->sock = (__u64)sk;
	ev->offset = offset;
	got = copy_payload(ev->payload, in, size, settings.payload_bytes - (__u32)offset);
	ev->payload_len = got;
	if (rb_output(ev, sizeof(*ev) + got))
		count_drop(HELIX_DROP_RINGBUF_FULL);
}

#include "mqtt_in.bpf.h"
#include "pyctx.bpf.h"

/* The first syscall of a message: who, where, the books of the previous message sent, and the first bytes;
 * unless the sampling decision holds the message back. */
static __always_inline void emit_start(struct sys_call *in, struct sock *sk, struct conn_state *st, __u64 size,
				       __u64 prev_bytes, __u64 prev_end_ns, __u64 now, __u64 id, __u16 flags, __u16 tlsv)
{
	__u32 zero = 0;
	struct data_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	bool was_held = st->skip != SKIP_NONE;
	struct data_event *ev;
	__u32 got;

	if (!s)
		return;
	ev = (struct data_event *)s->raw;
	ev->type = HELIX_EV_DATA;
	ev->pid = id >> 32;
	ev->tid = (__u32)id;
	ev->fd = in->fd;
	ev->ts_ns = in->ts_ns;
	ev->end_ns = now;
	ev->sock = (__u64)sk;
	ev->size = size;
	conn_endpoints(sk, st, &ev->ep);
	ev->ep.role = st->role;
	ev->ep.direction = in->op;
	current_comm(ev->comm);
	got = copy_payload(ev->payload, in, size, settings.payload_bytes);
	ev->payload_len = got;
	ev->flags = flags;
	ev->tls_version = tlsv;
	if (!flags && got >= 3 && ev->payload[0] >= 0x14 && ev->payload[0] <= 0x17 && ev->payload[1] == 3 &&
	    ev->payload[2] <= 4)
		st->tls_seen = 1; /* a TLS record header: handshake or ciphertext */
	if (h2_begins(ev, got, st)) {
		h2_walk(in, sk, st, size, now, id, flags, tlsv);
		return;
	}
	if (in->op == DIR_EGRESS && !st->mqtt)
		mqtt_mark(st, ev->payload, got, size);
	ev->prev_end_ns = prev_end_ns; /* for the decision (peer_rv); set again below for what userspace reads */
	if (!message_keeps(ev, got, st, in, size, now, id)) {
		if (!was_held) {
			st->held_bytes = prev_bytes;
			st->held_end_ns = prev_end_ns;
		}
		return;
	}
	if (was_held) {
		/* the messages since the last one sent were held back: userspace never saw them */
		prev_bytes = st->held_bytes;
		prev_end_ns = st->held_end_ns;
	}
	ev->prev_bytes = prev_bytes;
	ev->prev_end_ns = prev_end_ns;
	ev->offcpu_ns = thread_offcpu((__u32)id);
	if (mqtt_defers(ev, st, in, got, size) && mqtt_defer_start(ev, st, got))
		return;
	if (in->op == DIR_EGRESS && !(flags & HELIX_DATA_TLS))
		py_ctx_emit(id, in->ts_ns, (__u64)sk); /* first: userspace reads it with the data_event (TLS: tls_enter) */
	if (rb_output(ev, sizeof(*ev) + got))
		count_drop(HELIX_DROP_RINGBUF_FULL);
}


/* `ret` bytes of a message moved on a connection: by a syscall (the socket's own bytes), or by a TLS library call
 * (its plaintext, flags HELIX_DATA_TLS). */
static __always_inline void conn_bytes(struct sys_call *in, struct sock *sk, struct conn_state *st, __u64 ret, __u64 now,
				       __u64 id, __u16 flags, __u16 tlsv)
{
	__u64 prev_bytes, prev_end, offset;

	if (st->h2 == H2_ON) {
		h2_walk(in, sk, st, ret, now, id, flags, tlsv);
		return;
	}
	if (st->skip == SKIP_DEFER) {
		/* The waiting fixed header owes the rest of its packet: the next read this way is that rest however late
		 * it comes (a reader the scheduler took off the CPU between its reads), not a message after an idle gap. */
		if (st->dir == in->op) {
			offset = st->bytes;
			st->bytes += ret;
			st->end_ns = now;
			mqtt_defer_more(in, sk, st, ret, offset, now, id, flags);
			return;
		}
		mqtt_defer_release((__u64)sk, st); /* a new message: the waiting one was not a PUBLISH to decide */
	}
	/* A held-back MQTT PUBLISH is one syscall: the next one starts a message of its own (and decision). */
	if (st->dir == in->op && !(settings.msg_idle_gap_ns && now - st->end_ns > settings.msg_idle_gap_ns) &&
	    st->skip != SKIP_MQTT) {
		offset = st->bytes;
		st->bytes += ret;
		st->end_ns = now;
		/* Top the message's snapshot up until payload_bytes of it are out; after that, only counting. */
		if (offset < settings.payload_bytes && st->skip == SKIP_NONE)
			emit_more(in, sk, ret, offset, now, id, flags);
		return;
	}
	/* A new message: the direction changed, or the connection was idle longer than msg_idle_gap_ns. Exit to
	 * exit, so that a read that blocked waiting for a delivery counts as idle (start to previous end would
	 * never split the messages of a client blocked in read()). */
	prev_bytes = st->dir == DIR_NONE ? 0 : st->bytes;
	prev_end = st->dir == DIR_NONE ? 0 : st->end_ns;
	st->dir = in->op;
	st->bytes = ret;
	st->end_ns = now;
	emit_start(in, sk, st, ret, prev_bytes, prev_end, now, id, flags, tlsv);
}

#include "tls.bpf.h"
#include "pyctx_probes.bpf.h"

/* A socket syscall returned: its bytes, unless they are the ciphertext of a connection whose plaintext the TLS
 * probes read. `slot` is the thread's inflight entry, `in` the syscall as it was entered. */
static __always_inline void sock_done(struct inflight *slot, struct sys_call *in, long ret, __u64 id)
{
	struct sock *sk = (struct sock *)in->obj;
	struct conn_state *st;
	__u64 now;

	if (ret <= 0)
		return; /* EAGAIN, EOF and errors carry no message bytes (nor need the clock) */
	now = bpf_ktime_get_ns();
	st = conn_get(in->obj, ROLE_UNKNOWN, false);
	if (!st)
		return;
	if (!st->sport)
		st->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (slot->tls_ssl) {
		/* inside a TLS library call: this is the SSL object's own socket, and these bytes its ciphertext */
		slot->tls_sock = in->obj;
		tls_mark(st, slot->tls_ssl);
		return;
	}
	if (!st->tls)
		conn_bytes(in, sk, st, ret, now, id, 0, 0);
	tls_after_syscall(slot, in, st, now);
}
/* Up to HELIX_PATH_DEPTH trailing components, crossing mount points (struct mount is in BTF only). */
static __always_inline void file_path(struct file_io_event *ev, struct file *f)
{
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	struct vfsmount *vm = BPF_CORE_READ(f, f_path.mnt);
	struct mount *mnt = (void *)((char *)vm - bpf_core_field_offset(struct mount, mnt));
	struct dentry *root = BPF_CORE_READ(vm, mnt_root);
	__u16 depth = 0;

	ev->complete = 0;
#pragma unroll
	for (int i = 0; i < HELIX_PATH_DEPTH + 3; i++) {
		struct dentry *parent;
		const unsigned char *name;

		if (d == root) {
			struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

			if (!up || up == mnt) {
				ev->complete = 1;
				break;
			}
			d = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = up;
			root = BPF_CORE_READ(mnt, mnt.mnt_root);
			continue;
		}
		parent = BPF_CORE_READ(d, d_parent);
		if (!parent || parent == d) {
			ev->complete = 1;
			break;
		}
		if (depth >= HELIX_PATH_DEPTH)
			break;
		name = BPF_CORE_READ(d, d_name.name);
		bpf_probe_read_kernel_str(ev->names[depth], HELIX_NAME_LEN, name);
		depth++;
		d = parent;
	}
	ev->depth = depth;
}

static __always_inline void file_done(struct sys_call *in, long ret, __u64 id)
{
	__u64 now = bpf_ktime_get_ns();
	struct file_io_event *ev;

	if (now - in->ts_ns < settings.slow_file_ns)
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(HELIX_DROP_RINGBUF_FULL);
		return;
	}
	ev->type = HELIX_EV_FILE_IO;
	ev->pid = id >> 32;
	ev->tid = (__u32)id;
	ev->fd = in->fd;
	ev->op = in->op;
	ev->ts_ns = in->ts_ns;
	ev->end_ns = now;
	ev->size = (ret > 0 && in->op != FILE_FSYNC) ? ret : 0;
	file_path(ev, (struct file *)in->obj);
	rb_submit(ev, sizeof(*ev));
}

static __always_inline int rw_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct inflight *p;
	struct sys_call in;

	if (!id_bit(&busy_tids, tid))
		return 0; /* nothing stored at sys_enter: every syscall of an untraced process ends here */
	id_bit_set(&busy_tids, tid, false);
	p = bpf_map_lookup_elem(&inflight, &tid);
	if (!p || !p->sc.kind)
		return 0;
	in = p->sc;
	p->sc.kind = 0; /* empty until the thread's next traced syscall (see rw_enter) */
	if (in.kind == IF_SOCK)
		sock_done(p, &in, ctx->ret, id);
	else if (in.kind == IF_FILE)
		file_done(&in, ctx->ret, id);
	return 0;
}

#define RW_PROBES(name, dir, file_op, bufkind)                                     \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                \
	int enter_##name(struct trace_event_raw_sys_enter *ctx)                    \
	{                                                                          \
		return rw_enter(ctx, dir, file_op, bufkind);                       \
	}

RW_PROBES(read, DIR_INGRESS, FILE_READ, BUF_PLAIN)
RW_PROBES(write, DIR_EGRESS, FILE_WRITE, BUF_PLAIN)
RW_PROBES(readv, DIR_INGRESS, FILE_READ, BUF_IOV)
RW_PROBES(writev, DIR_EGRESS, FILE_WRITE, BUF_IOV)
RW_PROBES(recvfrom, DIR_INGRESS, FILE_NONE, BUF_PLAIN)
RW_PROBES(sendto, DIR_EGRESS, FILE_NONE, BUF_PLAIN)
RW_PROBES(recvmsg, DIR_INGRESS, FILE_NONE, BUF_MSG)
RW_PROBES(sendmsg, DIR_EGRESS, FILE_NONE, BUF_MSG)
/* fsync/fdatasync: sockets are not fsync'ed, so bufkind 0xff makes rw_enter ignore them. */
RW_PROBES(fsync, DIR_NONE, FILE_FSYNC, 0xff)
RW_PROBES(fdatasync, DIR_NONE, FILE_FSYNC, 0xff)

/* One program ends every call above: the exits do not depend on the call, and the loader attaches this one to
 * each sys_exit_* of the list in loader.py (_ALSO_ATTACHED), so the kernel verifies its ~6,000 instructions once
 * instead of once per call: most of a start is the verifier. */
SEC("tracepoint/syscalls/sys_exit_read")
int exit_rw(struct trace_event_raw_sys_exit *ctx)
{
	return rw_exit(ctx);
}

/* ---- connection lifecycle ------------------------------------------------------------------------ */

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	struct file *f;
	struct sock *sk;

	if (!traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	f = fd_file((long)(int)ctx->args[0]);
	if (!f || file_type(f) != S_IFSOCK)
		return 0;
	sk = stream_sock(f);
	if (sk)
		conn_get((__u64)sk, ROLE_CLIENT, true);
	return 0;
}

static __always_inline int accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct file *f;
	struct sock *sk;

	if (ctx->ret < 0 || !traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	f = fd_file(ctx->ret);
	if (!f || file_type(f) != S_IFSOCK)
		return 0;
	sk = stream_sock(f);
	if (sk) {
		struct conn_state *st = conn_get((__u64)sk, ROLE_SERVER, true);

		if (st)
			st->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return accept_exit(ctx);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	return accept_exit(ctx);
}

/* close(2): report the message in flight. The state stays until tcp_destroy_sock, so that a reset sent
 * by this very close (SO_LINGER 0, run after sys_exit by the deferred fput) still finds its connection. */
SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct close_event *ev;
	struct conn_state *st;
	struct file *f;
	struct sock *sk;
	__u64 key, now;

	if (!traced(id >> 32))
		return 0;
	f = fd_file((long)(int)ctx->args[0]);
	if (!f)
		return 0;
	sk = known_stream_sock(f);
	if (!sk && file_type(f) == S_IFSOCK)
		sk = stream_sock(f);
	if (!sk)
		return 0;
	key = (__u64)sk;
	st = bpf_map_lookup_elem(&conns, &key);
	if (!st)
		return 0;
	if (st->skip == SKIP_DEFER)
		mqtt_defer_release(key, st);
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(HELIX_DROP_RINGBUF_FULL);
		return 0;
	}
	ev->type = HELIX_EV_CLOSE;
	ev->pid = id >> 32;
	ev->tid = (__u32)id;
	ev->fd = (int)ctx->args[0];
	ev->ts_ns = bpf_ktime_get_ns();
	ev->sock = key;
	ev->last_bytes = st->dir == DIR_NONE ? 0 : st->bytes;
	ev->last_end_ns = st->dir == DIR_NONE ? 0 : st->end_ns;
	if (st->skip != SKIP_NONE) {
		/* the message in flight was held back: the last one userspace saw ended here */
		ev->last_bytes = st->held_bytes;
		ev->last_end_ns = st->held_end_ns;
	}
	ev->offcpu_ns = thread_offcpu((__u32)id);
	now = ev->ts_ns;
	rb_submit(ev, sizeof(*ev));
	red_incomplete(key, now);
	st->dir = DIR_NONE;
	st->bytes = 0;
	st->skip = SKIP_NONE;
	return 0;
}

/* sock:inet_sock_set_state(sk, oldstate, newstate). SYN_SENT is entered inside connect(), in the
 * connecting task; ESTABLISHED or CLOSE usually follow in softirq context, where `current` is anyone. */
SEC("raw_tp/inet_sock_set_state")
int on_sock_state(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int oldstate = (int)ctx->args[1];
	int newstate = (int)ctx->args[2];
	__u64 key = (__u64)sk;
	struct connect_event *ev;
	struct conn_start *start;

	if (newstate == TCP_SYN_SENT) {
		struct conn_start s = {};

		/* only sockets a traced process connect()ed have state (sys_enter_connect made it) */
		if (!bpf_map_lookup_elem(&conns, &key))
			return 0;
		s.ts_ns = bpf_ktime_get_ns();
		s.pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(s.comm, sizeof(s.comm));
		bpf_map_update_elem(&conn_start, &key, &s, BPF_ANY);
		return 0;
	}
	if (oldstate != TCP_SYN_SENT || (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE))
		return 0;
	start = bpf_map_lookup_elem(&conn_start, &key);
	if (!start)
		return 0;
	if (newstate == TCP_ESTABLISHED) {
		struct conn_state *st = bpf_map_lookup_elem(&conns, &key);

		if (st)
			st->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	}
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (ev) {
		ev->type = HELIX_EV_CONNECT;
		ev->pid = start->pid;
		ev->error = 0;
		if (newstate == TCP_CLOSE) {
			ev->error = BPF_CORE_READ(sk, sk_err);
			if (!ev->error)
				ev->error = ECONNABORTED;
		}
		ev->_pad = 0;
		ev->ts_ns = bpf_ktime_get_ns();
		ev->sock = key;
		ev->latency_ns = ev->ts_ns - start->ts_ns;
		__builtin_memset(&ev->ep, 0, sizeof(ev->ep));
		read_endpoints(sk, &ev->ep);
		ev->ep.role = ROLE_CLIENT;
		__builtin_memcpy(ev->comm, start->comm, sizeof(ev->comm));
		rb_submit(ev, sizeof(*ev));
	} else {
		count_drop(HELIX_DROP_RINGBUF_FULL);
	}
	bpf_map_delete_elem(&conn_start, &key);
	return 0;
}

static __always_inline int tcp_fault(struct sock *sk, __u32 kind)
{
	__u64 key = (__u64)sk;
	struct tcp_fault_event *ev;
	struct conn_state *st;

	if (!sk)
		return 0; /* a reset answering a segment for no socket */
	st = bpf_map_lookup_elem(&conns, &key);
	if (!st)
		return 0; /* not a connection of a traced process */
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(HELIX_DROP_RINGBUF_FULL);
		return 0;
	}
	ev->type = HELIX_EV_TCP_FAULT;
	ev->kind = kind;
	ev->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	ev->_pad = 0;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->sock = key;
	__builtin_memset(&ev->ep, 0, sizeof(ev->ep));
	read_endpoints(sk, &ev->ep);
	if (!ev->ep.sport)
		ev->ep.sport = st->sport;
	ev->ep.role = st->role;
	rb_submit(ev, sizeof(*ev));
	return 0;
}

/* The first argument of all three tcp: tracepoints has been the sock since they were added; later
 * kernels appended arguments (skb, reset reason), which we do not read. */
SEC("raw_tp/tcp_retransmit_skb")
int on_tcp_retransmit(struct bpf_raw_tracepoint_args *ctx)
{
	return tcp_fault((struct sock *)ctx->args[0], 0);
}

SEC("raw_tp/tcp_send_reset")
int on_tcp_send_reset(struct bpf_raw_tracepoint_args *ctx)
{
	return tcp_fault((struct sock *)ctx->args[0], 1);
}

SEC("raw_tp/tcp_receive_reset")
int on_tcp_receive_reset(struct bpf_raw_tracepoint_args *ctx)
{
	return tcp_fault((struct sock *)ctx->args[0], 2);
}

/* The sock is about to be freed: forget it, so its address can be reused by a new connection. */
SEC("raw_tp/tcp_destroy_sock")
int on_tcp_destroy_sock(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 key = ctx->args[0];

	red_incomplete(key, bpf_ktime_get_ns());
	bpf_map_delete_elem(&conns, &key);
	bpf_map_delete_elem(&conn_start, &key);
	return 0;
}
