/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The per-exchange sampling decision of io.bpf.c and the RED aggregates of what it holds back.
 *
 * A decision is made only where the kernel can make it soundly, from the first syscall of a message:
 * - an HTTP/1.x request message (server read / client write starting with a method and a space) whose whole
 *   head is in the snapshot: R = the traceparent's trace id (low 56 bits) or the `ot` tracestate member's `rv`;
 *   without a traceparent the kernel borrows the R of the request the thread is serving (client) or of the client on
 *   the other end of the connection (server, `peer_rv`), else draws it, and tells userspace (data_event.rv) so that
 *   the agent's sampler agrees;
 * - an MQTT PUBLISH written by a client in one syscall, carrying a `traceparent` user property (v5); on a connection
 *   known to speak MQTT, also one a broker writes and one a subscriber or a broker reads (mqtt_in.bpf.h).
 * Kept when R >= config.sample_threshold, as the OpenTelemetry specification (and edge/sampler/consistent.py)
 * decides. A held-back exchange sends nothing to the ring buffer: it is counted into `red_agg` instead, with the
 * same series fields and timing model as the span path (edge/sources/ebpf/spans/). Whatever cannot be judged
 * or counted is sent as before.
 *
 * The scans store what they find in the per-CPU `work` map rather than on the stack: the verifier tracks stack
 * values exactly, so a position found in iteration k would make every iteration a separate path to verify.
 */
#ifndef HELIX_SAMPLING_BPF_H
#define HELIX_SAMPLING_BPF_H

#define SKIP_NONE 0
#define SKIP_HTTP 1 /* held back until the next request message on the connection */
#define SKIP_MQTT 2 /* held back for this syscall's PUBLISH only */
#define SKIP_DEFER 3 /* a PUBLISH being read: its first records wait for its decision (mqtt_in.bpf.h) */
#define SKIP_BROKER 4 /* a broker's message starting with a PUBLISH: held back until the next message */

#define SCAN_MAX HELIX_PAYLOAD_MAX
#define POS_MASK (HELIX_PAYLOAD_MAX - 1)

/* A held-back HTTP request waiting for its response, keyed by sock. 4096 x ~200 B = 0.8 MiB. */
struct red_pending {
	struct helix_red_key key;
	__u64 start_ns; /* server: the request's first syscall exit; client: its first syscall entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct red_pending);
} red_pending SEC(".maps");

/* Cumulative RED counts per series of held-back exchanges; read (and for ended processes deleted) by the agent.
 * A hash, not LRU: a series must not vanish with counts in it. Full: exchanges are sent instead (counted).
 * 4096 x ~350 B = 1.4 MiB. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct helix_red_key);
	__type(value, struct helix_red_val);
} red_agg SEC(".maps");

/* The agent's histogram bounds (struct helix_red_bounds). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct helix_red_bounds);
} red_bounds SEC(".maps");

/* tid -> the randomness of the request the thread is serving, so that the context-less calls it makes meanwhile
 * are kept or held back with it. Replaced at each server request, dropped when the thread starts the response,
 * and trusted only for settings.thread_rv_ttl_ns. 16384 x ~80 B = 1.3 MiB. */
struct thread_rv {
	__u64 rv;
	__u64 ts_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct thread_rv);
} thread_rv SEC(".maps");

/* The randomness a context-less client request was decided with, keyed by its connection as the client sees it. The
 * server on the other end, when it is traced on this node, reads that request without context too: it decides with
 * the client's R instead of drawing its own, so that both halves of the hop (and the caller's request the client's R
 * was lent by) are kept or held back together, as the agent later joins them into one trace. Written when the
 * client's request is decided (its write's return); a server that read the request before that (the bytes reach it
 * inside the client's syscall) still draws its own. 8192 x ~80 B = 0.6 MiB. */
struct peer_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct peer_key);
	__type(value, struct thread_rv);
} peer_rv SEC(".maps");

/* The key of ep's connection as its client sees it (`mirror`: ep is the server's view). False: ports not known. */
static __always_inline bool peer_key_of(const struct helix_endpoints *ep, bool mirror, struct peer_key *k)
{
	if (!ep->sport || !ep->dport)
		return false;
	if (mirror) {
		__builtin_memcpy(k->saddr, ep->daddr, 16);
		__builtin_memcpy(k->daddr, ep->saddr, 16);
		k->sport = ep->dport;
		k->dport = ep->sport;
	} else {
		__builtin_memcpy(k->saddr, ep->saddr, 16);
		__builtin_memcpy(k->daddr, ep->daddr, 16);
		k->sport = ep->sport;
		k->dport = ep->dport;
	}
	k->_pad = 0;
	return true;
}

/* Decisions by outcome (enum helix_decision), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HELIX_DEC_MAX);
	__type(key, __u32);
	__type(value, __u64);
} decisions SEC(".maps");

/* Per-CPU working memory of one decision (see the top of this file). */
struct sample_work {
	__s32 tp;       /* where the traceparent value starts, -1: none */
	__s32 ts_rv;    /* where an `rv:` of the ot tracestate member starts, -1: none */
	__s32 host;     /* where the Host value starts, -1: none */
	__s32 head_end; /* bytes of the request head, -1: not in the snapshot */
	__s32 other;    /* a B3 or Jaeger header: the agent would judge another trace id */
	__s32 path_len; /* bytes of the path, -1: longer than HELIX_RED_PATH_LEN - 1 */
	__s32 host_len;
	__s32 mlen;     /* bytes of the request method */
	__u32 server;   /* the request was read by a server (else written by a client) */
	__u32 pos;      /* where the HTTP head scan goes on */
	struct red_pending pend;
	struct helix_red_val zero; /* never written: what a new series starts from */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sample_work);
} work SEC(".maps");

/* Read back what a scan stored: a volatile load, so that the compiler cannot forward the stored constant (the
 * loop iteration that found it) and the verifier sees one unknown value instead of one path per iteration. */
#define LOADV(x) (*(volatile typeof(x) *)&(x))

static __always_inline void count_decision(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&decisions, &what);

	if (n)
		*n += 1;
}

static __always_inline __u8 lower(__u8 c)
{
	return (c >= 'A' && c <= 'Z') ? c | 0x20 : c;
}

/* Whether p starts with the string literal s (case-insensitively for MATCH_CI, s in lower case). Macros, so
 * that the loop unrolls over a constant length and every character becomes an immediate. */
#define MATCH_CI(p, s)                                                                   \
	({                                                                               \
		bool _ok = true;                                                         \
		_Pragma("unroll") for (int _i = 0; _i < (int)sizeof(s) - 1; _i++)        \
			if (lower((p)[_i]) != (__u8)(s)[_i]) {                           \
				_ok = false;                                             \
				break;                                                   \
			}                                                                \
		_ok;                                                                     \
	})
#define MATCH(p, s)                                                                      \
	({                                                                               \
		bool _ok = true;                                                         \
		_Pragma("unroll") for (int _i = 0; _i < (int)sizeof(s) - 1; _i++)        \
			if ((p)[_i] != (__u8)(s)[_i]) {                                  \
				_ok = false;                                             \
				break;                                                   \
			}                                                                \
		_ok;                                                                     \
	})

/* Length of the request method when p starts with one and a space (the methods the kernel judges), else 0. */
static __always_inline int http_method_len(const __u8 *p, __u32 got)
{
	if (got < 16)
		return 0; /* no whole request head is that short */
	if (MATCH(p, "GET ") || MATCH(p, "PUT "))
		return 3;
	if (MATCH(p, "POST ") || MATCH(p, "HEAD "))
		return 4;
	if (MATCH(p, "PATCH "))
		return 5;
	if (MATCH(p, "DELETE "))
		return 6;
	if (MATCH(p, "OPTIONS "))
		return 7;
	return 0;
}

static __always_inline int hexval(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10; /* W3C: lower case only, as edge/propagation.py */
	return -1;
}

/* What a bpf_loop callback scans: the snapshot, its length and where to put what it finds. */
struct scan_ctx {
	const __u8 *p;
	__u32 len;
	__u32 _pad;
	struct sample_work *w;
};

/* The high bit of each byte of x that is c (bytes above the first such byte may be flagged wrongly: only the lowest
 * flag is exact, and it is the only one used). */
static __always_inline __u64 byte_flags(__u64 x, __u8 c)
{
	__u64 v = x ^ (0x0101010101010101ULL * c);

	return (v - 0x0101010101010101ULL) & ~v & 0x8080808080808080ULL;
}

/* The head's byte at j when it is a line's '\n' or the ':' of an `rv:` (whose 'r' is at j - 2): where the traceparent,
 * tracestate `rv`, Host and the head's end are. A byte-by-byte walk over i = 1.. would look at i for both; here a '\n'
 * is taken at i = j and an `rv:` at i = j - 2, which visits them in the walk's order wherever the order matters (a
 * line end cannot sit inside an `rv:`), within the same bounds (i + 3 <= len, i <= SCAN_MAX - 16). Returns 1 at the
 * head's end. */
static __always_inline long http_head_byte(struct scan_ctx *c, struct sample_work *w, const __u8 *p, __u32 j)
{
	__u8 a;

	/* Indexes below j are masked although the checks before them bound them: older verifiers (6.1) lose the
	 * lower bound of j when the compiler tests a copy of it, and refuse p[j - 1] as unbounded. */
	if (p[j] == ':') {
		__u32 i = (j - 2) & (SCAN_MAX - 1);

		if (j >= 3 && i + 3 <= c->len && i <= SCAN_MAX - 16 && p[i] == 'r' && p[i + 1] == 'v' &&
		    (p[(i - 1) & (SCAN_MAX - 1)] == '=' || p[(i - 1) & (SCAN_MAX - 1)] == ';'))
			w->ts_rv = i + 3;
		return 0;
	}
	if (j < 1 || j + 3 > c->len || j > SCAN_MAX - 16)
		return 0;
	if (p[(j - 1) & (SCAN_MAX - 1)] == '\r' && p[j + 1] == '\r' && p[j + 2] == '\n') {
		w->head_end = j + 3;
		return 1;
	}
	a = lower(p[j + 1]);
	if (a == 't' && MATCH_CI(p + j + 1, "traceparent:")) {
		if (w->tp < 0)
			w->tp = j + 13;
	} else if (a == 'h' && MATCH_CI(p + j + 1, "host:")) {
		w->host = j + 6;
	} else if ((a == 'b' && MATCH_CI(p + j + 1, "b3:")) || (a == 'x' && MATCH_CI(p + j + 1, "x-b3-")) ||
		   (a == 'u' && MATCH_CI(p + j + 1, "uber-trace-id:"))) {
		w->other = 1;
	}
	return 0;
}

/* One step of the head scan from w->pos: the eight bytes there are tested as a word for a '\n' or a ':'; without one
 * the scan moves on by eight, else the first such byte goes through http_head_byte and the scan resumes after it.
 * Most of a head is neither, so a step costs a load and a few word operations, and the callback keeps one copy of
 * the byte rules (each copy multiplies what the verifier walks). The position lives in map memory, as the scans'
 * findings do (see the top of this file). */
static long scan_http_step(__u64 idx, void *data)
{
	struct scan_ctx *c = data;
	struct sample_work *w = c->w;
	const __u8 *p = c->p;
	__u32 pos = LOADV(w->pos);
	__u64 x, m;
	__u32 j;

	if (pos >= c->len || pos >= SCAN_MAX)
		return 1; /* no byte from here on can be a candidate (a ':' needs j + 1 <= len) */
	pos &= SCAN_MAX - 1;
	/* one 8-byte load, at any alignment: the verifier allows it on map values where the CPU does (x86_64, arm64) */
	x = *(const __u64 *)(p + pos);
	m = byte_flags(x, '\n') | byte_flags(x, ':');
	if (!m) {
		w->pos = pos + 8;
		return 0;
	}
	/* the lowest flag is the first such byte in memory (little-endian; the probes run on x86_64 and arm64) */
	m = (m & -m) >> 7; /* 1 << (8 * b) */
	j = pos + 7 - (__u32)((0x0706050403020100ULL * m) >> 56);
	w->pos = j + 1;
	return http_head_byte(c, w, p, j & (SCAN_MAX - 1));
}

/* One byte of an MQTT PUBLISH: a `traceparent` user property (name and value lengths included in the match),
 * or a `tracestate` one. */
static long scan_mqtt_byte(__u64 idx, void *data)
{
	struct scan_ctx *c = data;
	struct sample_work *w = c->w;
	const __u8 *p = c->p;
	__u32 i = (idx & (SCAN_MAX - 1)) + 2;

	if (i + 16 > c->len)
		return 1;
	if (p[i] == 0x0b && p[i - 1] == 0 && MATCH_CI(p + i + 1, "traceparent") && p[i + 12] == 0 && p[i + 13] == 55) {
		w->tp = i + 14;
		return 1;
	}
	if (p[i] == 0x0a && p[i - 1] == 0 && MATCH_CI(p + i + 1, "tracestate"))
		w->other = 1; /* may carry an rv the agent would use */
	return 0;
}

/* Scan the snapshot with bpf_loop (5.17+): the verifier checks the callback once instead of every iteration of
 * a bounded loop, whose branches multiply its paths. io_compat.bpf.o (HELIX_NO_BPF_LOOP, for older kernels, which
 * refuse a program that merely names a callback) finds nothing, so it holds no exchange back. */
static __always_inline void scan(struct data_event *ev, struct sample_work *w, bool mqtt)
{
	struct scan_ctx c = { .p = ev->payload, .len = LOADV(ev->payload_len), .w = w };

	w->tp = -1;
	w->ts_rv = -1;
	w->host = -1;
	w->head_end = -1;
	w->other = 0;
	w->pos = 0;
#ifndef HELIX_NO_BPF_LOOP
	if (mqtt)
		bpf_loop(SCAN_MAX - 16, scan_mqtt_byte, &c, 0);
	else
		bpf_loop(SCAN_MAX, scan_http_step, &c, 0);
#else
	(void)c;
	(void)mqtt;
#endif
}

/* A run of lower-case hex digits (W3C: lower case only, as edge/propagation.py), one bpf_loop step per digit. */
struct hex_ctx {
	const __u8 *p;
	__u32 pos;
	__u32 bad;
	__u64 r; /* the last 16 digits' value: the low 56 bits are the last 14 */
	__u64 any; /* OR of the digits: 0 for all zeros */
};

static long hex_digit(__u64 i, void *data)
{
	struct hex_ctx *c = data;
	int v = hexval(c->p[(c->pos + (__u32)i) & (2 * HELIX_PAYLOAD_MAX - 1)]);

	if (v < 0) {
		c->bad = 1;
		return 1;
	}
	c->r = (c->r << 4) | v;
	c->any |= v;
	return 0;
}

/* n hex digits at p[pos..] (pos + n within the snapshot, checked by the caller): their value, or -1. */
static __always_inline __s64 hex_run(const __u8 *p, __u32 pos, __u32 n, __u64 *any)
{
	struct hex_ctx c = { .p = p, .pos = pos, .bad = 1 };

#ifndef HELIX_NO_BPF_LOOP
	c.bad = 0;
	bpf_loop(n, hex_digit, &c, 0);
#endif
	if (c.bad)
		return -1;
	if (any)
		*any = c.any;
	return c.r & HELIX_RV_MASK;
}

/* The trace id's low 56 bits from a traceparent value at p[pos..] (HTTP: after optional spaces), -1 when it is
 * invalid in any way edge/propagation.py would refuse it (then the agent sees no W3C context). */
static __always_inline __s64 traceparent_r(const __u8 *p, __u32 pos, __u32 got, bool http)
{
	__u64 tid_any = 0, sid_any = 0;
	__u32 at = pos & POS_MASK;
	__s64 r;

	if (http) {
		if (at < got && (p[at] == ' ' || p[at] == '\t'))
			at++;
		at &= POS_MASK;
	}
	if (at + 55 > got)
		return -1;
	if (p[at] != '0' || p[at + 1] != '0' || p[at + 2] != '-' || p[at + 35] != '-' || p[at + 52] != '-')
		return -1;
	r = hex_run(p, at + 3, 32, &tid_any);
	if (r < 0 || hex_run(p, at + 36, 16, &sid_any) < 0 || hex_run(p, at + 53, 2, NULL) < 0 || !tid_any || !sid_any)
		return -1;
	/* version 00 has nothing after the flags: the header value ends there */
	if (http && at + 55 < got && p[at + 55] != '\r' && p[at + 55] != ' ' && p[at + 55] != '\t')
		return -1;
	return r;
}

/* 14 hex digits of an `rv` (the agent takes rv only when it is exactly 14 digits). */
static __always_inline __s64 tracestate_rv(const __u8 *p, __u32 pos, __u32 got)
{
	__s64 r;

	pos &= POS_MASK;
	if (pos + 15 > got)
		return -1;
	r = hex_run(p, pos, 14, NULL);
	if (r < 0)
		return -1;
	if (p[pos + 14] != ';' && p[pos + 14] != ',' && p[pos + 14] != '\r' && p[pos + 14] != ' ' && p[pos + 14] != '\t')
		return -1;
	return r;
}

static __always_inline __u64 draw_r(void)
{
	return (((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32()) & HELIX_RV_MASK;
}

/* Make sure the series has an entry (so the exchange's count has room when its response comes), and that the
 * agent takes kernel counts at all. */
static __always_inline bool red_reserve(struct helix_red_key *key, struct sample_work *w)
{
	__u32 zero = 0;
	struct helix_red_bounds *b = bpf_map_lookup_elem(&red_bounds, &zero);

	if (!b || !b->enabled) {
		count_decision(HELIX_DEC_UNDECIDABLE); /* the agent cannot take kernel counts */
		return false;
	}
	if (bpf_map_lookup_elem(&red_agg, key))
		return true;
	bpf_map_update_elem(&red_agg, key, &w->zero, BPF_NOEXIST);
	if (bpf_map_lookup_elem(&red_agg, key))
		return true;
	count_decision(HELIX_DEC_AGG_FULL);
	return false;
}

/* The bucket of a duration: how many bounds are below it (bisect_left in edge/aggregator/red.py), so bucket i
 * counts bound[i-1] < d <= bound[i]. */
struct bucket_ctx {
	struct helix_red_bounds *b;
	__u64 d;
	__u32 idx;
	__u32 _pad;
};

static long bucket_step(__u64 i, void *data)
{
	struct bucket_ctx *c = data;

	if (i >= c->b->n)
		return 1;
	if (c->d > c->b->ns[i & (HELIX_RED_BOUNDS_MAX - 1)])
		c->idx = i + 1;
	return 0;
}

/* Count one exchange of duration d into its series. */
static __always_inline void red_add(struct helix_red_key *key, __u64 d, bool error)
{
	__u32 zero = 0;
	struct helix_red_bounds *b = bpf_map_lookup_elem(&red_bounds, &zero);
	struct helix_red_val *v = bpf_map_lookup_elem(&red_agg, key);
	struct bucket_ctx c = { .d = d };
	__u32 idx;

	if (!v || !b) {
		count_decision(HELIX_DEC_AGG_FULL);
		return;
	}
	c.b = b;
#ifndef HELIX_NO_BPF_LOOP
	bpf_loop(HELIX_RED_BOUNDS_MAX, bucket_step, &c, 0);
#endif
	idx = c.idx;
	if (idx > HELIX_RED_BOUNDS_MAX)
		idx = HELIX_RED_BOUNDS_MAX;
	__sync_fetch_and_add(&v->count, 1);
	if (error)
		__sync_fetch_and_add(&v->errors, 1);
	__sync_fetch_and_add(&v->sum_ns, d);
	__sync_fetch_and_add(&v->buckets[idx], 1);
}

/* A held-back request that never got a response: the span path would make it an incomplete (error) span. */
static __always_inline void red_incomplete(__u64 sk, __u64 now)
{
	struct red_pending *pend = bpf_map_lookup_elem(&red_pending, &sk);

	if (!pend)
		return;
	red_add(&pend->key, now > pend->start_ns ? now - pend->start_ns : 0, true);
	count_decision(HELIX_DEC_INCOMPLETE);
	bpf_map_delete_elem(&red_pending, &sk);
}

/* The response of a held-back request starts: its status, then the count. Error as spans.py's status rule:
 * >= 500 for a server, >= 400 for a client. Duration to the response's first syscall exit. */
static __always_inline void red_response(struct data_event *ev, __u32 got, __u64 now)
{
	__u64 sk = ev->sock;
	struct red_pending *pend = bpf_map_lookup_elem(&red_pending, &sk);
	const __u8 *p = ev->payload;
	int status = 0;

	if (!pend)
		return;
	if (got >= 12 && MATCH(p, "HTTP/1.") && p[8] == ' ' && p[9] >= '1' && p[9] <= '5' && p[10] >= '0' &&
	    p[10] <= '9' && p[11] >= '0' && p[11] <= '9')
		status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
	if (status >= 100 && status < 200 && status != 101)
		return; /* interim: the final response is still to come */
	if (!status)
		count_decision(HELIX_DEC_NO_STATUS);
	red_add(&pend->key, now > pend->start_ns ? now - pend->start_ns : 0,
		status >= 500 || (pend->key.kind == HELIX_RED_CLIENT && status >= 400));
	bpf_map_delete_elem(&red_pending, &sk);
}

/* Where a field ends: the path at ' ' or '?' (a line end first means no HTTP/1 request line), the Host value at
 * CR, space or tab. One bpf_loop step per byte. */
struct field_ctx {
	const __u8 *p;
	__u32 start;
	__u32 len;
	__s32 found;
	__u32 path;
};

static long field_byte(__u64 i, void *data)
{
	struct field_ctx *c = data;
	__u32 at = (c->start + (__u32)i) & (2 * HELIX_PAYLOAD_MAX - 1);
	__u8 ch;

	if (at >= c->len)
		return 1;
	ch = c->p[at];
	if (c->path) {
		if (ch == ' ' || ch == '?') {
			c->found = i;
			return 1;
		}
		if (ch == '\r' || ch == '\n')
			return 1;
	} else if (ch == '\r' || ch == ' ' || ch == '\t') {
		c->found = i;
		return 1;
	}
	return 0;
}

/* Bytes of the field at p[start..] when it ends within max - 1 bytes (room for the NUL), else -1. */
static __always_inline __s32 field_len(const __u8 *p, __u32 start, __u32 max, __u32 len, bool path)
{
	struct field_ctx c = { .p = p, .start = start, .len = len, .found = -1, .path = path };

#ifndef HELIX_NO_BPF_LOOP
	bpf_loop(max - 1, field_byte, &c, 0);
#endif
	return c.found;
}

/* The series of an HTTP request about to be held back; false when it cannot be counted exactly as the span path
 * would (then the request is sent instead). */
static __always_inline bool red_request(struct data_event *ev, int mlen, bool server, struct sys_call *in, __u64 now,
					struct sample_work *w)
{
	const __u8 *p = ev->payload;
	struct helix_red_key *key = &w->pend.key;
	__u64 sk = ev->sock;
	__u32 m = mlen & 7, start, hlen;

	__builtin_memset(key, 0, sizeof(*key));
	key->tgid = ev->pid;
	key->kind = server ? HELIX_RED_SERVER : HELIX_RED_CLIENT;
	__builtin_memcpy(key->comm, ev->comm, sizeof(key->comm));
	bpf_probe_read_kernel(key->method, m, p);
	/* origin-form target only: the path runs to '?' or ' ' (edge/protocols/http1.py) */
	start = m + 1;
	if (p[start] != '/')
		goto undecidable;
	w->path_len = field_len(p, start, HELIX_RED_PATH_LEN, LOADV(ev->payload_len), true);
	if (LOADV(w->path_len) <= 0)
		goto undecidable;
	bpf_probe_read_kernel(key->path, LOADV(w->path_len) & (HELIX_RED_PATH_LEN - 1), p + start);
	if (!server) {
		/* the peer of a client span is the Host header's host (spans.py); without one it would be the
		 * remote address, which this key does not hold */
		if (LOADV(w->host) < 0)
			goto undecidable;
		start = LOADV(w->host) & POS_MASK;
		for (int i = 0; i < 2; i++)
			if (p[start] == ' ' || p[start] == '\t')
				start++;
		start &= POS_MASK;
		w->host_len = field_len(p, start, HELIX_RED_HOST_LEN, LOADV(ev->payload_len), false);
		if (LOADV(w->host_len) <= 0)
			goto undecidable;
		hlen = LOADV(w->host_len);
		if (hlen >= HELIX_RED_HOST_LEN) /* 40 is no power of two: a bound, not a mask */
			goto undecidable;
		bpf_probe_read_kernel(key->host, hlen, p + start);
	}
	w->pend.start_ns = server ? now : in->ts_ns;
	if (!red_reserve(key, w))
		return false;
	red_incomplete(sk, now); /* a previous held-back request on this connection that was never answered */
	if (bpf_map_update_elem(&red_pending, &sk, &w->pend, BPF_ANY)) {
		count_drop(HELIX_DROP_STATE_FULL);
		return false;
	}
	return true;
undecidable:
	count_decision(HELIX_DEC_UNDECIDABLE);
	return false;
}

/* Decide an HTTP request message; true: send it (and its exchange), false: hold the exchange back. */
static __always_inline bool http_decide(struct data_event *ev, __u32 got, int mlen, struct conn_state *st,
					struct sys_call *in, __u64 size, __u64 threshold, __u64 now, __u64 id)
{
	__u32 zero = 0, tid = (__u32)id;
	struct sample_work *w = bpf_map_lookup_elem(&work, &zero);
	const __u8 *p = ev->payload;
	bool server = st->role == ROLE_SERVER;
	struct thread_rv trv = {};
	bool kernel_r = false;
	__s64 r = -1;

	if (!w)
		return true;
	/* reloaded from map memory: a constant per method would make each method a separate path to verify */
	w->mlen = mlen;
	mlen = LOADV(w->mlen);
	scan(ev, w, false);
	if (LOADV(w->head_end) < 0 || LOADV(w->other) ||
	    /* bytes after a body-less request's head: maybe pipelined requests, which one count cannot stand for */
	    (size > (__u64)LOADV(w->head_end) && (mlen == 3 && p[0] == 'G')) || (size > (__u64)LOADV(w->head_end) && mlen >= 4 &&
	    (p[0] == 'H' || p[0] == 'O' || p[0] == 'D'))) {
		count_decision(HELIX_DEC_UNDECIDABLE);
		if (server) {
			/* the agent keeps this one: so must the calls made while serving it */
			trv.rv = HELIX_RV_MASK;
			trv.ts_ns = now;
			bpf_map_update_elem(&thread_rv, &tid, &trv, BPF_ANY);
		}
		return true;
	}
	if (LOADV(w->tp) >= 0) {
		r = traceparent_r(p, LOADV(w->tp), LOADV(ev->payload_len), true);
		if (r >= 0 && LOADV(w->ts_rv) >= 0) {
			__s64 rv = tracestate_rv(p, LOADV(w->ts_rv), LOADV(ev->payload_len));

			if (rv >= 0)
				r = rv;
		}
	}
	if (r < 0) {
		struct peer_key pk = {};
		bool keyed = peer_key_of(&ev->ep, server, &pk);

		kernel_r = true;
		if (!server) {
			struct thread_rv *t = bpf_map_lookup_elem(&thread_rv, &tid);

			if (t && now - t->ts_ns <= settings.thread_rv_ttl_ns) {
				r = t->rv;
				count_decision(HELIX_DEC_THREAD_RV);
			}
		} else if (keyed) {
			struct thread_rv *p = bpf_map_lookup_elem(&peer_rv, &pk);

			/* decided after this connection's previous message (the last response) ended: this request's,
			 * not the one before it, whose decision a server that read first left unread */
			if (p && p->ts_ns >= LOADV(ev->prev_end_ns) && now - p->ts_ns <= settings.thread_rv_ttl_ns) {
				r = p->rv;
				count_decision(HELIX_DEC_PEER_RV);
			}
			if (p)
				bpf_map_delete_elem(&peer_rv, &pk);
		}
		if (r < 0)
			r = draw_r();
		if (!server && keyed) {
			struct thread_rv pv = { .rv = (__u64)r, .ts_ns = now };

			bpf_map_update_elem(&peer_rv, &pk, &pv, BPF_ANY);
		}
	}
	if (server) {
		trv.rv = r;
		trv.ts_ns = now;
		bpf_map_update_elem(&thread_rv, &tid, &trv, BPF_ANY);
	}
	if ((__u64)r >= threshold) {
		count_decision(HELIX_DEC_KEPT);
		if (kernel_r)
			ev->rv = (__u64)r | HELIX_RV_KERNEL;
		return true;
	}
	/* Every path here ends in the same red_request: handing it its inputs through memory makes them one path
	 * for the verifier (the decision above refines registers differently on each). */
	w->server = server;
	if (!red_request(ev, LOADV(w->mlen), LOADV(w->server), in, now, w))
		return true;
	count_decision(HELIX_DEC_SAMPLED_OUT);
	st->skip = SKIP_HTTP;
	return false;
}

/* Whether the properties of a PUBLISH, whose length varint is at p[at..], are in the snapshot and name no Topic Alias
 * (0x23): an alias set by a packet names the topic of later ones, which then need it. A 0x23 inside a property's
 * value (a '#' in a user property) counts too: such a packet is merely sent. */
struct alias_ctx {
	const __u8 *p;
	__u32 pos;
	__u32 end;
	__u32 found;
};

static long alias_byte(__u64 i, void *data)
{
	struct alias_ctx *c = data;
	__u32 at = (c->pos + (__u32)i) & (2 * HELIX_PAYLOAD_MAX - 1);

	if (at >= c->end)
		return 1;
	if (c->p[at] == 0x23) {
		c->found = 1;
		return 1;
	}
	return 0;
}

static __always_inline bool mqtt_props_ok(const __u8 *p, __u32 at, __u32 got)
{
	struct alias_ctx c = { .p = p, .found = 1 };
	__u32 plen;

	at &= POS_MASK;
	if (at + 2 > got)
		return false;
	plen = p[at] & 0x7f;
	c.pos = at + 1;
	if (p[at] & 0x80) {
		if (p[at + 1] & 0x80)
			return false;
		plen |= (__u32)p[at + 1] << 7;
		c.pos = at + 2;
	}
	c.end = c.pos + plen;
	if (c.end > got)
		return false;
#ifndef HELIX_NO_BPF_LOOP
	c.found = 0;
	bpf_loop(plen, alias_byte, &c, 0);
#endif
	return !c.found;
}

/* The length of the fixed header when p, the first bytes of a syscall that moved `size`, is exactly one MQTT packet;
 * else 0. A remaining length running past the bytes copied cannot add up to `size`. */
static __always_inline __u32 one_packet(const __u8 *p, __u64 size)
{
	__u32 rl = 0, hdr = 0;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		rl |= (__u32)(p[1 + i] & 0x7f) << (7 * i);
		if (!(p[1 + i] & 0x80)) {
			hdr = 2 + i;
			break;
		}
	}
	return hdr && hdr + rl == size ? hdr : 0;
}

/* Decide an MQTT PUBLISH written whole by this syscall with a traceparent user property. */
static __always_inline bool mqtt_decide(struct data_event *ev, __u32 got, __u64 size, struct sys_call *in,
					struct conn_state *st, __u64 threshold, __u64 now)
{
	__u32 zero = 0, hdr, tlen;
	struct sample_work *w = bpf_map_lookup_elem(&work, &zero);
	const __u8 *p = ev->payload;
	struct helix_red_key *key;
	__s64 r = -1;

	if (!w || got < 8 || (p[0] >> 4) != 3)
		return true;
	hdr = one_packet(p, size);
	if (!hdr)
		return true; /* not exactly one packet: holding it back could hide another one */
	scan(ev, w, true);
	if (LOADV(w->tp) < 0)
		return true;
	/* through memory, so that the varint's lengths are one path from here on (see red_request's call) */
	w->mlen = hdr;
	hdr = LOADV(w->mlen) & 7;
	r = traceparent_r(p, LOADV(w->tp), LOADV(ev->payload_len), false);
	tlen = ((__u32)p[hdr] << 8) | p[(hdr + 1) & 7];
	if (r < 0 || LOADV(w->other) || tlen == 0 || tlen >= HELIX_RED_PATH_LEN || hdr + 2 + tlen > LOADV(ev->payload_len) ||
	    ((p[0] >> 1) & 3) == 3 || !mqtt_props_ok(p, hdr + 2 + tlen + ((p[0] & 6) ? 2 : 0), LOADV(ev->payload_len))) {
		count_decision(HELIX_DEC_UNDECIDABLE);
		return true;
	}
	if ((__u64)r >= threshold) {
		count_decision(HELIX_DEC_KEPT);
		return true;
	}
	key = &w->pend.key;
	__builtin_memset(key, 0, sizeof(*key));
	key->tgid = ev->pid;
	key->kind = HELIX_RED_PRODUCER;
	key->family = ev->ep.family;
	__builtin_memcpy(key->comm, ev->comm, sizeof(key->comm));
	bpf_probe_read_kernel(key->path, tlen & (HELIX_RED_PATH_LEN - 1), p + ((hdr + 2) & 7));
	__builtin_memcpy(key->host, ev->ep.daddr, sizeof(ev->ep.daddr));
	if (!red_reserve(key, w))
		return true;
	/* a publish span runs from the write of its first byte to that of its last: this one syscall */
	red_add(key, now - in->ts_ns, false);
	count_decision(HELIX_DEC_SAMPLED_OUT);
	st->skip = SKIP_MQTT;
	return false;
}

/* A broker's connections make no spans (spans/mqtt.py: its clients' do, and on a broker's the builder only counts what
 * it reads): a message of one that starts with a PUBLISH, read or written, is never sent, whatever the sampling, with
 * whatever packets follow it in the message. */
static __always_inline bool broker_publish(struct conn_state *st, const __u8 *p, __u32 got)
{
	if (!st->mqtt || st->role != ROLE_SERVER || got < 1 || (p[0] >> 4) != 3)
		return false;
	count_decision(HELIX_DEC_BROKER);
	return true;
}

/* The decision for a message starting with this syscall (its data_event is built in `ev`): true to send it. */
static __always_inline bool message_keeps(struct data_event *ev, __u32 got, struct conn_state *st, struct sys_call *in,
					  __u64 size, __u64 now, __u64 id)
{
	/* The snapshot's length reloaded from memory, and reloaded again by every loop's bound check: a bound checked
	 * against a register narrows it in each iteration, so each exit of the loop would be a path of its own. */
	__u32 lim = LOADV(ev->payload_len);
	__u64 threshold = sample_threshold();
	bool server = st->role == ROLE_SERVER;
	bool req_dir = (server && in->op == DIR_INGRESS) || (st->role == ROLE_CLIENT && in->op == DIR_EGRESS);
	int mlen = req_dir ? http_method_len(ev->payload, lim) : 0;

	ev->rv = 0;
	if (st->skip == SKIP_HTTP && !mlen) {
		/* a later message of a held-back exchange: its response (status and count), or more of the request */
		if (!req_dir) {
			red_response(ev, lim, now);
			if (server) {
				__u32 tid = (__u32)id;

				bpf_map_delete_elem(&thread_rv, &tid); /* done serving: no more calls on its behalf */
			}
		}
		return false;
	}
	st->skip = SKIP_NONE;
	if (broker_publish(st, ev->payload, lim)) {
		st->skip = SKIP_BROKER;
		return false;
	}
	if (!threshold)
		return true;
	if (mlen)
		return http_decide(ev, lim, mlen, st, in, size, threshold, now, id);
	if (server && in->op == DIR_EGRESS) {
		__u32 tid = (__u32)id;

		bpf_map_delete_elem(&thread_rv, &tid);
	}
	if (st->role == ROLE_CLIENT && in->op == DIR_EGRESS)
		return mqtt_decide(ev, lim, size, in, st, threshold, now);
	return true;
}

#endif /* HELIX_SAMPLING_BPF_H */
