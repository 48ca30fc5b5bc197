/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The sampling decision for an MQTT PUBLISH a subscriber reads from its broker.
 *
 * Readers take a packet in pieces: one byte of type, the remaining length a byte at a time, then the rest in one
 * read (libmosquitto, paho), so the trace id arrives with the last syscall. On a client connection known
 * to speak MQTT (it carried a CONNECT or a CONNACK written whole), the records of a PUBLISH's fixed-header reads are
 * not sent at once: they wait in `mqtt_defer`, exactly as they would have been sent, until the read of the rest.
 * That read decides, as mqtt_decide does for a written PUBLISH: kept (or not decidable) sends the waiting records and
 * then this read's, in order and unchanged; sampled out sends nothing, counts the receive into `red_agg` (kind
 * consumer) and ends the message there. (A broker's PUBLISHes are never sent: broker_publish in sampling.bpf.h.)
 * Anything else that comes first (another syscall shape, the next message, a close) sends the waiting records first.
 * The rest is waited for however late it comes: the idle gap that ends a message (msg_idle_gap_ns) does not apply to
 * a fixed header that owes bytes (a reader descheduled between its reads would otherwise lose the whole receive).
 */
#ifndef HELIX_MQTT_IN_BPF_H
#define HELIX_MQTT_IN_BPF_H

#define DEFER_HEAD 8   /* a fixed header has at most 5 bytes */
#define DEFER_PIECES 5 /* syscalls it may take: the type byte and up to four length bytes */
#define DEFER_SLOTS 8  /* room for them: a power of two, so that an index masked with it stays in the array (the 5.10
			* and 6.1 verifiers lose the bound a comparison put on a copy of the index) */

/* The waiting records of one connection. `ev` is the message's first record as it would have been sent; its payload
 * follows it in `head`, which holds every byte read so far, so the first record is output straight from here. */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wgnu-variable-sized-type-not-at-end"
struct mqtt_defer {
	struct data_event ev; /* its flexible payload is `head` */
	__u8 head[DEFER_HEAD];
	__u64 ts[DEFER_SLOTS];
	__u64 end[DEFER_SLOTS];
	__u8 len[DEFER_SLOTS];
	__u8 n;     /* syscalls so far */
	__u8 bytes; /* bytes so far */
	__u8 flags; /* HELIX_DATA_TLS */
};
#pragma clang diagnostic pop
_Static_assert(__builtin_offsetof(struct mqtt_defer, head) == sizeof(struct data_event), "head follows the record");

/* 4096 x ~300 B = 1.2 MiB; LRU: a connection's entry lives from a PUBLISH's first read to its last. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct mqtt_defer);
} mqtt_defer SEC(".maps");

/* A whole CONNECT or CONNACK written in one syscall marks the connection as MQTT (a client's, a broker's). */
static __always_inline void mqtt_mark(struct conn_state *st, const __u8 *p, __u32 got, __u64 size)
{
	if (got < 8 || got != size)
		return;
	if (p[0] == 0x10 && p[1] + 2u == size && p[2] == 0 && ((p[3] == 4 && p[4] == 'M' && p[5] == 'Q') ||
							       (p[3] == 6 && p[4] == 'M' && p[5] == 'Q')))
		st->mqtt = 1;
	else if (p[0] == 0x10 && (p[1] & 0x80) && p[3] == 0 && (p[4] == 4 || p[4] == 6) && p[5] == 'M' && p[6] == 'Q')
		st->mqtt = 1;
	else if (p[0] == 0x20 && p[1] + 2u == size && p[2] <= 1)
		st->mqtt = 1;
}

/* The remaining length in a fixed header of `n` bytes at h: its value, and the header's length in *hdr (0: not
 * whole yet, or not a header). */
static __always_inline __u32 fixed_header(const __u8 *h, __u32 n, __u32 *hdr)
{
	__u32 rl = 0;

	*hdr = 0;
	/* written out: the loop form, with its early exits, does not unroll */
#define FH_STEP(i)                                                       \
	if (n <= i)                                                      \
		return 0;                                                \
	rl |= (__u32)(h[i] & 0x7f) << (7 * (i - 1));                     \
	if (!(h[i] & 0x80)) {                                            \
		*hdr = i + 1;                                            \
		return rl;                                               \
	}
	FH_STEP(1)
	FH_STEP(2)
	FH_STEP(3)
	FH_STEP(4)
#undef FH_STEP
	return 0;
}

/* Whether the first syscall of an ingress message (its record built in `ev`) should wait: a piece of a PUBLISH's
 * fixed header on an MQTT connection, with the kernel deciding. */
static __always_inline bool mqtt_defers(struct data_event *ev, struct conn_state *st, struct sys_call *in, __u32 got,
					__u64 size)
{
#ifndef HELIX_NO_BPF_LOOP
	__u32 hdr;

	if (!st->mqtt || in->op != DIR_INGRESS || got != size || got > 4 || (ev->payload[0] >> 4) != 3 ||
	    st->role != ROLE_CLIENT || !sample_threshold())
		return false;
	fixed_header(ev->payload, got, &hdr);
	return hdr == 0 || hdr == got; /* the header not whole yet, or whole with the rest still to read */
#else
	return false;
#endif
}

/* Keep the message's first record (`ev`, with `got` payload bytes) back; false when there is no room (send it). */
static __always_inline bool mqtt_defer_start(struct data_event *ev, struct conn_state *st, __u32 got)
{
	__u64 sk = ev->sock;
	struct mqtt_defer *d;

	/* the map value is written whole from the scratch record: its head is the record's payload */
	if (bpf_map_update_elem(&mqtt_defer, &sk, ev, BPF_ANY))
		return false;
	d = bpf_map_lookup_elem(&mqtt_defer, &sk);
	if (!d)
		return false;
	d->ts[0] = ev->ts_ns;
	d->end[0] = ev->end_ns;
	d->len[0] = got;
	d->n = 1;
	d->bytes = got;
	d->flags = ev->flags;
	st->skip = SKIP_DEFER;
	return true;
}

/* Send the waiting records, in order, as they would have been sent. */
static __always_inline void mqtt_defer_send(struct mqtt_defer *d)
{
	__u32 zero = 0, off;
	struct data_scratch *s;
	struct data_more_event *m;

	if (rb_output(&d->ev, sizeof(d->ev) + (d->len[0] & 7)))
		count_drop(HELIX_DROP_RINGBUF_FULL);
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return;
	m = (struct data_more_event *)s->raw;
	off = d->len[0] & 7;
#pragma unroll
	for (int i = 1; i < DEFER_PIECES; i++) {
		__u32 len = d->len[i] & 7;

		if (i >= d->n)
			break;
		m->type = HELIX_EV_DATA_MORE;
		m->pid = d->ev.pid;
		m->tid = d->ev.tid;
		m->payload_len = len;
		m->direction = DIR_INGRESS;
		m->flags = d->flags;
		m->ts_ns = d->ts[i];
		m->end_ns = d->end[i];
		m->sock = d->ev.sock;
		m->offset = off;
#pragma unroll
		for (int k = 0; k < 4; k++)
			m->payload[k] = d->head[(off + k) & (DEFER_HEAD - 1)];
		if (rb_output(m, sizeof(*m) + (len & 7)))
			count_drop(HELIX_DROP_RINGBUF_FULL);
		off += len;
	}
}

/* The message's waiting records go out now (something other than its decision came). */
static __always_inline void mqtt_defer_release(__u64 sk, struct conn_state *st)
{
	struct mqtt_defer *d = bpf_map_lookup_elem(&mqtt_defer, &sk);

	st->skip = SKIP_NONE;
	if (!d)
		return;
	mqtt_defer_send(d);
	bpf_map_delete_elem(&mqtt_defer, &sk);
}

/* A subscriber's receive held back: counted as the span path would (start: the return of the read of the first byte;
 * end: this read's return), in the series of the topic. False when it cannot be counted (then it is sent). */
static __always_inline bool red_consumer(struct data_event *ev, struct mqtt_defer *d, __u32 tlen, __u64 now,
					 struct sample_work *w)
{
	struct helix_red_key *key = &w->pend.key;

	__builtin_memset(key, 0, sizeof(*key));
	key->tgid = d->ev.pid;
	key->kind = HELIX_RED_CONSUMER;
	__builtin_memcpy(key->comm, d->ev.comm, sizeof(key->comm));
	bpf_probe_read_kernel(key->path, tlen & (HELIX_RED_PATH_LEN - 1), ev->payload + 2);
	if (!red_reserve(key, w))
		return false;
	red_add(key, now > d->ev.end_ns ? now - d->ev.end_ns : 0, false);
	return true;
}

/* The verdict on a PUBLISH whose fixed header waits in `d`, from the read of its rest (built in `ev` with `got`
 * bytes, `size` moved): true to send it. Sampled out: its books are closed as a held-back message's. */
static __always_inline bool mqtt_in_keeps(struct data_event *ev, struct mqtt_defer *d, struct conn_state *st,
					  __u32 got, __u64 size, __u64 now)
{
	__u32 zero = 0, hdr, rl, tlen;
	struct sample_work *w = bpf_map_lookup_elem(&work, &zero);
	const __u8 *p = ev->payload;
	__u8 qos = (d->head[0] >> 1) & 3;
	__s64 r;

	if (!w)
		return true;
	rl = fixed_header(d->head, d->bytes, &hdr);
	if (!hdr || hdr != d->bytes || rl != size || got < 8)
		return true; /* not the rest of one packet exactly: holding it back could hide another one */
	scan(ev, w, true);
	if (LOADV(w->tp) < 0)
		return true;
	r = traceparent_r(p, LOADV(w->tp), LOADV(ev->payload_len), false);
	tlen = ((__u32)p[0] << 8) | p[1];
	if (r < 0 || LOADV(w->other) || qos == 3 || tlen == 0 || tlen >= HELIX_RED_PATH_LEN ||
	    !mqtt_props_ok(p, 2 + tlen + (qos ? 2 : 0), got)) {
		count_decision(HELIX_DEC_UNDECIDABLE);
		return true;
	}
	if ((__u64)r >= sample_threshold()) {
		count_decision(HELIX_DEC_KEPT);
		return true;
	}
	if (!red_consumer(ev, d, tlen, now, w))
		return true;
	count_decision(HELIX_DEC_SAMPLED_OUT);
	st->skip = SKIP_MQTT;
	st->held_bytes = d->ev.prev_bytes;
	st->held_end_ns = d->ev.prev_end_ns;
	return false;
}

/* A later syscall of a message whose first records wait (`offset`: the message's bytes before it): one more piece of
 * the fixed header keeps waiting, the rest of the packet is decided on, anything else sends what waits and then this
 * syscall's bytes as usual. */
static __always_inline void mqtt_defer_more(struct sys_call *in, struct sock *sk, struct conn_state *st, __u64 ret,
					    __u64 offset, __u64 now, __u64 id, __u8 flags)
{
	__u64 key = (__u64)sk;
	__u32 zero = 0, hdr, got, n, at;
	__u64 slot;
	struct mqtt_defer *d = bpf_map_lookup_elem(&mqtt_defer, &key);
	struct data_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	struct data_event *ev;

	if (!d) {
		st->skip = SKIP_NONE; /* evicted: its first records are lost, as a full ring buffer would lose them */
		goto send;
	}
	if (!s)
		goto release;
	fixed_header(d->head, d->bytes, &hdr);
	if (!hdr) {
		n = d->n;
		at = d->bytes;
		if (ret > 4 || at + ret > 5 || n >= DEFER_PIECES)
			goto release;
		got = copy_payload(s->raw, in, ret, 4);
		if (got != ret)
			goto release;
#pragma unroll
		for (int k = 0; k < 4; k++)
			if (k < got)
				d->head[(at + k) & (DEFER_HEAD - 1)] = s->raw[k];
		slot = n;
		/* the mask in an asm statement: clang drops a C mask it can prove redundant after the check above */
		asm volatile("%[s] &= %[m]" : [s] "+r"(slot) : [m] "i"(DEFER_SLOTS - 1));
		d->ts[slot] = in->ts_ns;
		d->end[slot] = now;
		d->len[slot] = got;
		d->n = n + 1;
		d->bytes = at + got;
		fixed_header(d->head, at + got, &hdr);
		if (hdr && hdr != at + got)
			mqtt_defer_release(key, st); /* the piece held bytes after the header: no longer one decision */
		return;
	}
	ev = (struct data_event *)s->raw;
	got = copy_payload(ev->payload, in, ret, settings.payload_bytes - (__u32)offset);
	ev->payload_len = got;
	if (!mqtt_in_keeps(ev, d, st, got, ret, now)) {
		bpf_map_delete_elem(&mqtt_defer, &key);
		return;
	}
release:
	mqtt_defer_release(key, st);
send:
	if (offset < settings.payload_bytes)
		emit_more(in, sk, ret, offset, now, id, flags);
}

#endif /* HELIX_MQTT_IN_BPF_H */
