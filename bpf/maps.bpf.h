/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps and helpers shared by io.bpf.c and proc.bpf.c. Both objects declare these maps; the loader
 * creates them with the first object and hands the same fds to the second (bpf_map__reuse_fd), so
 * there is one ring buffer, one config, one set of allow-lists and one off-CPU table.
 * Sizes: each comment gives the kernel memory an entry costs, roughly (key + value + ~50 B overhead).
 */
#ifndef HELIX_MAPS_BPF_H
#define HELIX_MAPS_BPF_H

#include "helix.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define S_IFMT 0170000
#define S_IFSOCK 0140000
#define S_IFREG 0100000

/* The load-time settings; the only thing in each object's .rodata (see helix.h). */
const volatile struct helix_settings settings = {
	.payload_bytes = 256,
	.self_pid = 0,
	.slow_file_ns = 10 * 1000 * 1000,
	.msg_idle_gap_ns = 5 * 1000 * 1000,
	.thread_rv_ttl_ns = 30ULL * 1000 * 1000 * 1000,
};

/* Every record for userspace. 1 MiB by default; the loader may resize it (power of two pages). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Counted losses (enum helix_drop), per CPU so counting never contends. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HELIX_DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* Live settings, one entry (struct helix_config), written by userspace at any time. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct helix_config);
} config SEC(".maps");

/* tgid -> 1 when HELIX_FILTER_PIDS is set. 4096 x ~60 B = 240 KiB at most. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} allowed_pids SEC(".maps");

/* The same allow-list as a bitmap by tgid (bit tgid % 64 of word tgid / 64), which every program checks first: an
 * array lookup the verifier inlines, where a hash lookup is a helper call that costs about as much as the whole early
 * exit should. The loader sizes it to the machine's pid_max before loading (HELIX_PID_WORDS words by default, pids up
 * to 32767); a tgid beyond it is looked up in `allowed_pids`. */
#define HELIX_PID_WORDS 512

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HELIX_PID_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} allowed_bits SEC(".maps");

/* Per thread (bit tid % 64 of word tid / 64): its `inflight` slot holds a syscall between sys_enter and sys_exit. Every
 * sys_exit of every process tests it before it looks the slot up, so a syscall that stored nothing (untraced
 * processes, traced ones' pipes and ttys) costs one inlined array lookup at its exit. Set by sys_enter, cleared by
 * sys_exit and at thread exit. Sized like allowed_bits; a tid beyond it goes to `inflight` directly. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HELIX_PID_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} busy_tids SEC(".maps");

/* Per thread, like busy_tids: the thread has an `offcpu` entry (set when io.bpf.c enrols it, cleared at thread exit).
 * The scheduler programs and the event-loop turn program run for every thread of the machine; they test this bit, an
 * inlined array load, before they look the thread up in `offcpu`. A bit may outlive an entry the LRU evicted (the
 * lookup then misses, as it would without the bit), never the other way round. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HELIX_PID_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} offcpu_tids SEC(".maps");

/* cgroup v2 id -> 1 when HELIX_FILTER_CGROUPS is set. 1024 x ~60 B. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} allowed_cgroups SEC(".maps");

/* Per-thread off-CPU accounting, only for threads that did traced socket I/O (io.bpf.c creates the
 * entry, sched_switch keeps it, sched_process_exit deletes it). LRU so a missed exit cannot leak.
 * 16384 x ~70 B = 1.1 MiB. */
struct offcpu_state {
	__u64 total_ns; /* cumulative time switched out */
	__u64 since_ns; /* when it was last switched out; 0 while on CPU */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct offcpu_state);
} offcpu SEC(".maps");

/* Per thread: the syscall between sys_enter and sys_exit (sc.kind 0 when none is), the TLS library call the thread is
 * in (tls_ssl 0 when none is) and what links an SSL object to its socket. One slot per thread that made a traced
 * syscall or TLS call, written in place by each (io.bpf.c rw_enter, tls.bpf.h) and deleted at thread exit; LRU, so a
 * missed exit cannot leak. 16384 x ~170 B = 2.7 MiB. */
enum { IF_SOCK = 1, IF_FILE = 2 };
enum { BUF_PLAIN = 0, BUF_IOV = 1, BUF_MSG = 2 };

/* One read/write-family call: a syscall, or a TLS library call handing plaintext over (tls.bpf.h fills one in). */
struct sys_call {
	__u64 ts_ns;
	__u64 obj;    /* struct sock * (IF_SOCK) or struct file * (IF_FILE) */
	__u64 buf;    /* user buffer, iovec array or msghdr, per bufkind */
	__s32 fd;
	__u32 iovcnt;
	__u8 kind;    /* IF_* */
	__u8 op;      /* Direction for sockets, FileOp for files */
	__u8 bufkind; /* BUF_* */
	__u8 _pad[5];
};

struct inflight {
	struct sys_call sc; /* what rw_enter writes */
	/* the TLS library call (SSL_read, SSL_write, their _ex forms, a handshake) between its entry and return probes */
	__u64 tls_ssl;     /* SSL * */
	__u64 tls_buf;
	__u64 tls_len_ptr; /* SSL_read_ex/SSL_write_ex: where the call stores the byte count; 0 for SSL_read/SSL_write */
	__u64 tls_ts;
	__u64 tls_sock;    /* the socket the thread did I/O on inside the call: the SSL's own (0: none) */
	__u8 tls_dir;      /* Direction, or 0xff for a handshake */
	__u8 last_dir;     /* direction of last_sock's syscall */
	__u8 _pad[6];
	/* linking SSL objects whose library does no socket I/O inside its calls (memory BIOs: Node.js, gRPC) */
	__u64 last_sock;   /* the thread's last traced socket syscall */
	__u64 last_ns;
	__u64 pend_ssl;    /* an SSL not linked yet that the thread just used: linked to its next socket syscall */
	__u64 pend_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct inflight);
} inflight SEC(".maps");

/* Ring-buffer notification. A wakeup costs more than the record it announces (an irq_work self-IPI, then waking the
 * reader on another CPU, all inside the traced syscall; docs/benchmarks.md has the figures), and the kernel's default
 * wakes the reader for nearly every record when the reader keeps up. So only the record that takes the unread bytes
 * across a sixteenth of the ring wakes it; the reader also polls on a short timer (KernelEventStream), which collects
 * what stays below that mark. */
static __always_inline __u64 rb_wakeup(__u64 unread_before, __u64 size)
{
	__u64 mark = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 16;

	return unread_before < mark && unread_before + size >= mark ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* bpf_ringbuf_output into `events` with the notification above. */
static __always_inline long rb_output(void *data, __u64 size)
{
	return bpf_ringbuf_output(&events, data, size, rb_wakeup(bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA), size));
}

/* bpf_ringbuf_submit of a record reserved in `events`, with the notification above (the reservation already counts
 * as unread). */
static __always_inline void rb_submit(void *rec, __u64 size)
{
	bpf_ringbuf_submit(rec, rb_wakeup(bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) - size, size));
}

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &reason);

	if (n)
		*n += 1;
}

/* Whether this process is one we watch: never the agent itself, then the live allow-lists. */
static __always_inline bool traced(__u32 tgid)
{
	__u32 zero = 0;
	struct helix_config *cfg;

	if (tgid == settings.self_pid)
		return false;
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return false;
	if (cfg->flags & HELIX_FILTER_PIDS) {
		__u32 word = tgid / 64;
		__u64 *bits = bpf_map_lookup_elem(&allowed_bits, &word);

		if (bits ? !(*bits & (1ULL << (tgid % 64))) : !bpf_map_lookup_elem(&allowed_pids, &tgid))
			return false;
	}
	if (cfg->flags & HELIX_FILTER_CGROUPS) {
		__u64 cg = bpf_get_current_cgroup_id();

		if (!bpf_map_lookup_elem(&allowed_cgroups, &cg))
			return false;
	}
	return true;
}

/* A bitmap by pid or tid (busy_tids): whether id's bit is set; true when id is beyond the bitmap (the
 * caller then asks the map the bitmap stands in front of). */
static __always_inline bool id_bit(void *bitmap, __u32 id)
{
	__u32 word = id / 64;
	__u64 *bits = bpf_map_lookup_elem(bitmap, &word);

	return !bits || (*bits & (1ULL << (id % 64)));
}

/* Set or clear id's bit. Only the thread id itself calls this for its bit, so an atomic add of the bit when it is
 * clear (or of its negation when it is set) leaves the word's other bits intact; 5.10 has no atomic or/and. */
static __always_inline void id_bit_set(void *bitmap, __u32 id, bool on)
{
	__u32 word = id / 64;
	__u64 *bits = bpf_map_lookup_elem(bitmap, &word);
	__u64 bit = 1ULL << (id % 64);

	if (!bits || !(*bits & bit) == !on)
		return;
	__sync_fetch_and_add(bits, on ? bit : -bit);
}

/* The thread's `offcpu` entry, or NULL when it has none; the bitmap answers most misses without a hash lookup. */
static __always_inline struct offcpu_state *offcpu_of(__u32 tid)
{
	if (!id_bit(&offcpu_tids, tid))
		return NULL;
	return bpf_map_lookup_elem(&offcpu, &tid);
}

/* The live sampling threshold (0: keep everything). */
static __always_inline __u64 sample_threshold(void)
{
	__u32 zero = 0;
	struct helix_config *cfg = bpf_map_lookup_elem(&config, &zero);

	return cfg ? cfg->sample_threshold : 0;
}

#endif /* HELIX_MAPS_BPF_H */
