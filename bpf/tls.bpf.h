/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * TLS plaintext from uprobes on the TLS library (OpenSSL's API: libssl.so.3, libssl.so.1.1, or a binary that links it
 * statically and keeps the symbols, as Node.js does). The agent attaches these programs per library file
 * (edge/sources/ebpf/tls_attach.py); they fire in every process that maps the file and trace only the traced ones.
 *
 * The plaintext joins the connection the syscall probes know: it goes through the same message books, snapshot,
 * sampling decision and HTTP/2 frame mode as a socket's own bytes, with HELIX_DATA_TLS on its records. Once a
 * connection's plaintext is read here, its ciphertext is no longer sent (only the connection's state is kept).
 *
 * Each SSL object is linked to its socket, most exact first:
 *  1. a socket syscall the thread makes inside SSL_read/SSL_write/a handshake (socket BIOs: nginx, curl, Python,
 *     mosquitto): the SSL's own socket, with certainty;
 *  2. SSL_set_fd/SSL_set_rfd/SSL_set_wfd: the fd's socket, with certainty;
 *  3. for libraries that hand ciphertext over through memory BIOs and do the socket I/O themselves (Node.js, gRPC
 *     core), the thread's socket I/O around the call: a read just before SSL_read returned plaintext, or the thread's
 *     next socket syscall after a call on an unlinked SSL (the handshake's first flight), within LINK_NS. Such a guess
 *     only goes to a socket that carried TLS records and is linked to no other SSL object; a certain link replaces
 *     it. Plaintext of an SSL that is linked to nothing is counted (HELIX_DROP_TLS_UNLINKED), never sent.
 */
#ifndef HELIX_TLS_BPF_H
#define HELIX_TLS_BPF_H

#define TLS_HANDSHAKE 0xff /* inflight.tls_dir of a handshake call: no plaintext, only a link */
#define LINK_NS (20ULL * 1000 * 1000)

/* The argument and return registers of both architectures, through CO-RE: the kernel's struct pt_regs has `di`...
 * on x86_64 and `regs[]` on arm64; the relocation of the other one is never reached. */
struct pt_regs___x86 {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long cx;
	unsigned long ax;
} __attribute__((preserve_access_index));

struct pt_regs___arm64 {
	__u64 regs[31];
} __attribute__((preserve_access_index));

static __always_inline bool regs_x86(void)
{
	return bpf_core_field_exists(((struct pt_regs___x86 *)0)->di);
}

static __always_inline __u64 uarg0(void *ctx)
{
	return regs_x86() ? BPF_CORE_READ((struct pt_regs___x86 *)ctx, di) : BPF_CORE_READ((struct pt_regs___arm64 *)ctx, regs[0]);
}

static __always_inline __u64 uarg1(void *ctx)
{
	return regs_x86() ? BPF_CORE_READ((struct pt_regs___x86 *)ctx, si) : BPF_CORE_READ((struct pt_regs___arm64 *)ctx, regs[1]);
}

static __always_inline __u64 uarg3(void *ctx)
{
	return regs_x86() ? BPF_CORE_READ((struct pt_regs___x86 *)ctx, cx) : BPF_CORE_READ((struct pt_regs___arm64 *)ctx, regs[3]);
}

static __always_inline __u64 uret(void *ctx)
{
	return regs_x86() ? BPF_CORE_READ((struct pt_regs___x86 *)ctx, ax) : BPF_CORE_READ((struct pt_regs___arm64 *)ctx, regs[0]);
}

/* SSL object -> its socket. Deleted by SSL_free; LRU bounds whatever a missed free leaves. 16384 x ~80 B. */
struct tls_link {
	__u64 sock;
	__u8 exact; /* 1: from a syscall inside a call or SSL_set_fd; 0: guessed from the thread's socket I/O */
	__u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tls_link);
} tls_links SEC(".maps");

static __always_inline void tls_link_set(__u64 ssl, __u64 sk, __u8 exact)
{
	struct tls_link *l = bpf_map_lookup_elem(&tls_links, &ssl);
	struct tls_link v = { .sock = sk, .exact = exact };

	if (l) {
		if (l->exact && !exact)
			return; /* a guess never replaces a certainty */
		l->sock = sk;
		l->exact = exact;
		return;
	}
	if (bpf_map_update_elem(&tls_links, &ssl, &v, BPF_ANY))
		count_drop(HELIX_DROP_STATE_FULL);
}

/* The connection's messages are the TLS library's plaintext from now on: the books start afresh. */
static __always_inline void tls_mark(struct conn_state *st, __u64 ssl)
{
	if (!st->tls) {
		st->tls = 1;
		st->dir = DIR_NONE;
		st->bytes = 0;
		st->skip = SKIP_NONE;
	}
	st->ssl = ssl;
}

/* May a guessed link give `ssl` this connection? Only one that carried TLS records and is no other SSL's. */
static __always_inline bool tls_guess_ok(struct conn_state *st, __u64 ssl)
{
	return (st->tls_seen || st->tls) && (!st->ssl || st->ssl == ssl);
}

/* After a socket syscall outside any TLS call: remember it, and give it to the SSL the thread just used unlinked. */
static __always_inline void tls_after_syscall(struct inflight *slot, struct sys_call *in, struct conn_state *st,
					      __u64 now)
{
	__u64 ssl = slot->pend_ssl;

	slot->last_sock = in->obj;
	slot->last_ns = now;
	slot->last_dir = in->op;
	if (!ssl)
		return;
	slot->pend_ssl = 0;
	if (now - slot->pend_ns <= LINK_NS && tls_guess_ok(st, ssl)) {
		tls_link_set(ssl, in->obj, 0);
		st->ssl = ssl;
	}
}

static __always_inline int tls_enter(void *ctx, __u8 dir, bool ex)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct inflight *p;
	__u64 ts;

	if (!traced(id >> 32))
		return 0;
	p = bpf_map_lookup_elem(&inflight, &tid);
	if (!p) {
		struct inflight fresh = {};

		bpf_map_update_elem(&inflight, &tid, &fresh, BPF_NOEXIST);
		p = bpf_map_lookup_elem(&inflight, &tid);
		if (!p) {
			count_drop(HELIX_DROP_STATE_FULL);
			return 0;
		}
	}
	ts = bpf_ktime_get_ns();
	p->tls_ssl = uarg0(ctx);
	p->tls_buf = uarg1(ctx);
	p->tls_len_ptr = ex ? uarg3(ctx) : 0;
	p->tls_ts = ts;
	p->tls_sock = 0;
	p->tls_dir = dir;
	/* The writer's task contexts go here, before the write and keyed by the time its record will carry: at the
	 * return, on top of tls_return's frame, they took the combined stack over 6.1's 512 bytes. Every write of an
	 * interpreter's thread sends them (whether it begins a message is known only at the return); userspace takes
	 * those of the writes that begin one. */
	if (dir == DIR_EGRESS)
		py_ctx_emit(id, ts, 0);
	return 0;
}

/* int SSL_read(SSL *ssl, void *buf, int num) and SSL_write(SSL *ssl, const void *buf, int num) */
SEC("uprobe")
int tls_read_enter(void *ctx)
{
	return tls_enter(ctx, DIR_INGRESS, false);
}

SEC("uprobe")
int tls_write_enter(void *ctx)
{
	return tls_enter(ctx, DIR_EGRESS, false);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) and SSL_write_ex(..., size_t *written) */
SEC("uprobe")
int tls_read_ex_enter(void *ctx)
{
	return tls_enter(ctx, DIR_INGRESS, true);
}

SEC("uprobe")
int tls_write_ex_enter(void *ctx)
{
	return tls_enter(ctx, DIR_EGRESS, true);
}

/* int SSL_do_handshake(SSL *s), SSL_connect(SSL *s), SSL_accept(SSL *s): no plaintext, but the handshake's socket I/O
 * links the SSL before its first application data (memory BIOs: through the thread's next socket syscall). */
SEC("uprobe")
int tls_handshake_enter(void *ctx)
{
	return tls_enter(ctx, TLS_HANDSHAKE, false);
}

/* The return of every call above. */
SEC("uretprobe")
int tls_return(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct inflight *p = bpf_map_lookup_elem(&inflight, &tid);
	struct sys_call in = {};
	struct conn_state *st;
	struct tls_link *l;
	__u64 ssl, sk, n = 0, now;
	__s64 rc;
	__u32 ver = 0;
	__u8 dir;

	if (!p || !p->tls_ssl)
		return 0;
	ssl = p->tls_ssl;
	sk = p->tls_sock;
	dir = p->tls_dir;
	in.ts_ns = p->tls_ts;
	in.buf = p->tls_buf;
	p->tls_ssl = 0; /* a nested call (SSL_connect runs SSL_do_handshake) returns first: the outer one finds nothing */
	now = bpf_ktime_get_ns();
	rc = (int)uret(ctx);
	if (dir != TLS_HANDSHAKE) {
		if (p->tls_len_ptr) {
			if (rc == 1)
				bpf_probe_read_user(&n, sizeof(n), (void *)p->tls_len_ptr);
		} else if (rc > 0) {
			n = rc;
		}
	}
	if (sk) {
		tls_link_set(ssl, sk, 1);
	} else {
		l = bpf_map_lookup_elem(&tls_links, &ssl);
		if (l)
			sk = l->sock;
	}
	if (!sk && n && dir == DIR_INGRESS && p->last_sock && p->last_dir == DIR_INGRESS && now - p->last_ns <= LINK_NS) {
		/* memory BIO: the thread read the ciphertext just before */
		__u64 last = p->last_sock;

		st = bpf_map_lookup_elem(&conns, &last);
		if (st && tls_guess_ok(st, ssl)) {
			sk = last;
			tls_link_set(ssl, sk, 0);
			st->ssl = ssl;
		}
	}
	if (!sk) {
		/* memory BIO: the thread's next socket syscall carries this SSL's ciphertext */
		p->pend_ssl = ssl;
		p->pend_ns = now;
		if (n)
			count_drop(HELIX_DROP_TLS_UNLINKED);
		return 0;
	}
	if (!n)
		return 0;
	st = conn_get(sk, ROLE_UNKNOWN, false);
	if (!st)
		return 0;
	tls_mark(st, ssl);
	/* OpenSSL 1.1 and 3.0/3.1 keep the negotiated version in the SSL's first int; later layouts do not: only a
	 * value that is a TLS version is taken */
	bpf_probe_read_user(&ver, sizeof(ver), (void *)ssl);
	if (ver < 0x0301 || ver > 0x0304)
		ver = 0;
	in.kind = IF_SOCK;
	in.obj = sk;
	in.fd = -1;
	in.op = dir & 1;
	in.bufkind = BUF_PLAIN;
	conn_bytes(&in, (struct sock *)sk, st, n, now, id, HELIX_DATA_TLS, ver);
	return 0;
}

/* int SSL_set_fd(SSL *s, int fd), and SSL_set_rfd/SSL_set_wfd: the SSL's socket, with certainty. */
SEC("uprobe")
int tls_set_fd(void *ctx)
{
	struct conn_state *st;
	struct file *f;
	struct sock *sk;
	__u64 ssl;

	if (!traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	ssl = uarg0(ctx);
	f = fd_file((long)(int)uarg1(ctx));
	if (!f || file_type(f) != S_IFSOCK)
		return 0;
	sk = stream_sock(f);
	if (!sk)
		return 0;
	tls_link_set(ssl, (__u64)sk, 1);
	st = conn_get((__u64)sk, ROLE_UNKNOWN, false);
	if (st)
		tls_mark(st, ssl);
	return 0;
}

/* void SSL_free(SSL *s): the address may be the next SSL's. */
SEC("uprobe")
int tls_free(void *ctx)
{
	__u64 ssl = uarg0(ctx);

	bpf_map_delete_elem(&tls_links, &ssl);
	return 0;
}

#endif /* HELIX_TLS_BPF_H */
