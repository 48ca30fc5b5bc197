/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * HTTP/2 frame mode of io.bpf.c: what a connection sends to userspace once it speaks HTTP/2.
 *
 * The message snapshot (the first payload_bytes of each run of syscalls in one direction) does not fit HTTP/2: one
 * write may carry the HEADERS of a hundred streams, and the HPACK decoder on the other side needs every header block
 * of the connection, in order, to know its dynamic table. So a connection switches to frame mode when a message starts
 * with the client preface (both ends see it: the client writes it, the server reads it), or, for connections older
 * than the probes, when userspace recognised HTTP/2 in a snapshot and put the socket in `h2_hint`. From then on every
 * call (syscall, or TLS library call for the plaintext) is walked frame by frame, following the frame lengths across
 * calls, and an h2_event carries every frame header and the payload of every frame but DATA (headers, settings, resets,
 * GOAWAY; HELIX_H2_KEEP_MAX bounds them): a DATA payload is never copied, whatever its size. Userspace applies the same
 * rule to know which payloads the records hold.
 *
 * A record lost to a full ring buffer makes the direction keep nothing until the next frame header, whose record says
 * HELIX_H2_GAP (userspace then knows its HPACK table is incomplete). Bytes the walk cannot account for (more than
 * H2_STEPS_MAX steps in one call, an iovec that cannot be read) lose the frame boundaries: the connection goes back to
 * message mode (counted as HELIX_DROP_H2_DESYNC) until userspace hints it again.
 *
 * Walking needs bpf_loop (5.17+): io_compat.bpf.o never enters frame mode, and userspace decodes what the message
 * snapshots hold.
 */
#ifndef HELIX_H2_BPF_H
#define HELIX_H2_BPF_H

#define H2_OFF 0
#define H2_ON 1
#define H2_LOST 2 /* was in frame mode, lost the boundaries: message mode until userspace hints it again */

#define H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_PREFACE_LEN 24
#define H2_STEPS_MAX 8192 /* a step is one frame header, one payload piece or one iovec */

/* One call being walked. In map memory, not on the stack: the verifier tracks stack values exactly, so every
 * iteration of the walk would be new states to it (see sample_work in sampling.bpf.h). */
struct h2_ctx {
	__u64 iov;      /* user iovec array; 0: one plain buffer */
	__u64 base;     /* the current segment */
	__u64 seg_len;
	__u64 seg_off;
	__u64 left;     /* bytes of the call not walked yet */
	__u32 iov_idx;
	__u32 iov_cnt;
	__u32 out;      /* payload bytes in the record */
	__u32 _pad;
};

/* Where an h2_event is assembled; twice the record's payload so that every partial copy is simply in bounds. */
struct h2_scratch {
	struct h2_ctx c;
	__u8 raw[sizeof(struct h2_event) + 2 * HELIX_H2_REC_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct h2_scratch);
} h2_scratch SEC(".maps");

/* Sockets userspace found speaking HTTP/2 without the probes having seen the preface (connections older than the
 * probes, or whose boundaries were lost): frame mode starts at the next message. 1024 x ~70 B. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} h2_hint SEC(".maps");

#ifndef HELIX_NO_BPF_LOOP

/* What the bpf_loop callback gets: pointers only. */
struct h2_loop {
	struct h2_scratch *s; /* the walk and the record being filled */
	struct h2_dir *d;     /* the direction's boundaries (conns) */
};

/* n, at most HELIX_H2_REC_MAX, in the register handed to a helper (see payload_bound). */
static __always_inline __u64 h2_bound(__u64 n)
{
	asm volatile("if %[n] <= %[max] goto +1; %[n] = %[max]" : [n] "+r"(n) : [max] "i"(HELIX_H2_REC_MAX));
	return n;
}

/* Send the record filled so far (if any) and start the next one with the same call. */
static __always_inline void h2_flush(struct h2_scratch *s, struct h2_dir *d)
{
	struct h2_event *ev = (struct h2_event *)s->raw;
	__u64 n = h2_bound(s->c.out);

	if (!n)
		return;
	ev->payload_len = n;
	if (rb_output(ev, sizeof(*ev) + n)) {
		count_drop(HELIX_DROP_RINGBUF_FULL);
		d->resync = 1;
	} else {
		ev->flags &= ~(HELIX_H2_START | HELIX_H2_GAP);
		d->fresh = 0;
	}
	s->c.out = 0;
}

/* Append n (<= 9) header bytes, already in kernel memory, to the record. */
static __always_inline void h2_keep_header(struct h2_scratch *s, struct h2_dir *d, const __u8 *src, __u64 n)
{
	struct h2_event *ev = (struct h2_event *)s->raw;

	if (s->c.out + n > HELIX_H2_REC_MAX)
		h2_flush(s, d);
	if (d->resync)
		return; /* the flush failed: nothing until the next frame header */
	bpf_probe_read_kernel(ev->payload + (s->c.out & (HELIX_H2_REC_MAX - 1)), n & 15, src);
	s->c.out += n;
}

/* One step of the walk: the next iovec, a header (or the part of it in this segment), or a piece of a payload. */
static long h2_step(__u64 i, void *data)
{
	struct h2_loop *lp = data;
	struct h2_scratch *s = lp->s;
	struct h2_ctx *c = &s->c;
	struct h2_dir *d = lp->d;
	struct h2_event *ev = (struct h2_event *)s->raw;
	__u64 avail, n;

	if (!c->left)
		return 1;
	if (c->seg_off >= c->seg_len) {
		struct iovec_user v;

		if (c->iov_idx >= c->iov_cnt ||
		    bpf_probe_read_user(&v, sizeof(v), (void *)(c->iov + (__u64)c->iov_idx * sizeof(v))))
			return 1;
		c->iov_idx++;
		c->base = (__u64)v.iov_base;
		c->seg_len = v.iov_len;
		c->seg_off = 0;
		return 0;
	}
	avail = c->seg_len - c->seg_off;
	if (avail > c->left)
		avail = c->left;
	if (!d->rem) {
		__u32 have = d->have & 15;

		if (!have && d->resync) {
			d->resync = 0; /* a frame header: keeping resumes here, after a hole */
			ev->flags |= HELIX_H2_GAP;
		}
		n = 9 - have;
		if (n > avail)
			n = avail;
		if (bpf_probe_read_user(d->hdr + have, n & 15, (void *)(c->base + c->seg_off)))
			return 1;
		h2_keep_header(s, d, d->hdr + have, n);
		have += n;
		d->have = have;
		if (have >= 9) {
			__u32 len = ((__u32)d->hdr[0] << 16) | ((__u32)d->hdr[1] << 8) | d->hdr[2];
			__u8 type = d->hdr[3];

			d->have = 0;
			d->rem = len;
			/* DATA (0) never; known control frames up to HELIX_H2_KEEP_MAX (decode.py applies the same rule) */
			d->copy = type >= 1 && type <= 9 && len <= HELIX_H2_KEEP_MAX;
		}
	} else {
		n = d->rem;
		if (n > avail)
			n = avail;
		if (d->copy && !d->resync) {
			if (c->out >= HELIX_H2_REC_MAX)
				h2_flush(s, d);
			if (!d->resync) {
				__u64 room = HELIX_H2_REC_MAX - (c->out & (HELIX_H2_REC_MAX - 1));

				if (n > room)
					n = room;
				if (bpf_probe_read_user(ev->payload + (c->out & (HELIX_H2_REC_MAX - 1)), h2_bound(n),
							(void *)(c->base + c->seg_off)))
					return 1;
				c->out += n;
			}
		}
		d->rem -= n;
	}
	c->seg_off += n;
	c->left -= n;
	return 0;
}

/* Walk `size` bytes of one call on a connection in frame mode and send what they hold. */
static __always_inline void h2_walk(struct sys_call *in, struct sock *sk, struct conn_state *st, __u64 size, __u64 now,
				    __u64 id, __u16 flags, __u16 tlsv)
{
	__u32 zero = 0;
	struct h2_scratch *s = bpf_map_lookup_elem(&h2_scratch, &zero);
	struct h2_loop lp;
	struct h2_event *ev;
	struct h2_ctx *c;
	struct h2_dir *d;

	if (!s)
		return;
	c = &s->c;
	d = &st->h2d[in->op & 1];
	ev = (struct h2_event *)s->raw;
	ev->type = HELIX_EV_H2;
	ev->pid = id >> 32;
	ev->tid = (__u32)id;
	ev->flags = flags | (d->fresh ? HELIX_H2_START : 0);
	ev->tls_version = tlsv;
	ev->ts_ns = in->ts_ns;
	ev->end_ns = now;
	ev->sock = (__u64)sk;
	ev->size = size;
	conn_endpoints(sk, st, &ev->ep);
	ev->ep.role = st->role;
	ev->ep.direction = in->op;
	current_comm(ev->comm);
	ev->payload_len = 0;
	ev->_pad = 0;
	__builtin_memset(c, 0, sizeof(*c));
	c->left = size;
	if (in->bufkind == BUF_PLAIN) {
		c->base = in->buf;
		c->seg_len = size;
	} else if (in->bufkind == BUF_IOV) {
		c->iov = in->buf;
		c->iov_cnt = in->iovcnt;
	} else {
		struct user_msghdr msg;

		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)in->buf) == 0) {
			c->iov = (__u64)msg.msg_iov;
			c->iov_cnt = msg.msg_iovlen;
		}
	}
	lp.s = s;
	lp.d = d;
	bpf_loop(H2_STEPS_MAX, h2_step, &lp, 0);
	h2_flush(s, d);
	if (LOADV(c->left)) {
		st->h2 = H2_LOST;
		count_drop(HELIX_DROP_H2_DESYNC);
	}
}

static __always_inline void h2_dir_reset(struct h2_dir *d, __u8 fresh)
{
	d->rem = 0;
	d->have = 0;
	d->copy = 0;
	d->resync = !fresh; /* without the preface the tables are unknown: the first record says HELIX_H2_GAP */
	d->fresh = fresh;
}

/* Whether the message starting in `ev` (a data_event being built) switches its connection to frame mode: it starts
 * with the client preface, or userspace hinted the socket (connections whose start the probes did not see). */
static __always_inline bool h2_begins(struct data_event *ev, __u32 got, struct conn_state *st)
{
	__u64 sk = ev->sock;

	if (got >= H2_PREFACE_LEN && ev->payload[0] == 'P' && MATCH(ev->payload, H2_PREFACE)) {
		h2_dir_reset(&st->h2d[0], 1);
		h2_dir_reset(&st->h2d[1], 1);
		/* the preface is skipped as if it were a frame of 24 bytes that keeps nothing */
		st->h2d[ev->ep.direction & 1].rem = H2_PREFACE_LEN;
		st->h2 = H2_ON;
		return true;
	}
	if ((st->role == ROLE_UNKNOWN || st->h2 == H2_LOST) && bpf_map_lookup_elem(&h2_hint, &sk)) {
		bpf_map_delete_elem(&h2_hint, &sk);
		h2_dir_reset(&st->h2d[0], 0);
		h2_dir_reset(&st->h2d[1], 0);
		st->h2 = H2_ON;
		return true;
	}
	return false;
}

#else /* io_compat.bpf.o: no frame mode; userspace decodes what the message snapshots hold */

static __always_inline bool h2_begins(struct data_event *ev, __u32 got, struct conn_state *st)
{
	return false;
}

static __always_inline void h2_walk(struct sys_call *in, struct sock *sk, struct conn_state *st, __u64 size, __u64 now,
				    __u64 id, __u16 flags, __u16 tlsv)
{
}

#endif /* HELIX_NO_BPF_LOOP */
#endif /* HELIX_H2_BPF_H */
