/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Layouts shared by every probe object and mirrored once in Python (edge/sources/ebpf/decode.py and
 * loader.py, each struct.Struct format next to a comment naming this header).
 *
 * Every ring-buffer record starts with a __u32 `type` (enum helix_event_type). All structs are laid out
 * with explicit padding so C and Python agree without relying on compiler alignment rules; integers are
 * in host byte order (the records never leave the machine).
 */
#ifndef HELIX_H
#define HELIX_H

#include <linux/types.h>

enum helix_event_type {
	HELIX_EV_DATA = 1,
	HELIX_EV_CLOSE = 2,
	HELIX_EV_CONNECT = 3,
	HELIX_EV_TCP_FAULT = 4,
	HELIX_EV_EXEC = 5,
	HELIX_EV_EXIT = 6,
	HELIX_EV_FILE_IO = 7,
	HELIX_EV_DATA_MORE = 8,
	HELIX_EV_WAKEUP = 9,
	HELIX_EV_H2 = 10,
	HELIX_EV_TURN = 11,
	HELIX_EV_PYCTX = 12,
};

/* data_event.flags / data_more_event.flags / h2_event.flags */
#define HELIX_DATA_TLS (1u << 0)  /* plaintext read at the TLS library (tls.bpf.h), not the socket's own bytes */
#define HELIX_H2_START (1u << 1)  /* h2_event: the connection's first frames (after the preface): HPACK tables empty */
#define HELIX_H2_GAP (1u << 2)    /* h2_event: bytes before this record were lost; it begins at a frame header */

#define HELIX_COMM_LEN 16
#define HELIX_PAYLOAD_MAX 1024 /* hard cap on payload bytes per record (settings.payload_bytes <= this) */

/*
 * Load-time settings: the object's whole .rodata section is exactly one `const volatile struct
 * helix_settings settings`. The loader overwrites it before bpf_object__load (Python mirror: "=IIQQQ").
 */
struct helix_settings {
	__u32 payload_bytes; /* bytes of each message sent to userspace, 0..HELIX_PAYLOAD_MAX */
	__u32 self_pid;      /* the agent's own tgid: never traced (0 = none) */
	__u64 slow_file_ns;  /* file read/write/fsync slower than this becomes an event; ~0 disables */
	__u64 msg_idle_gap_ns; /* same-direction syscalls further apart than this (exit to exit) start a new
				* message: server-pushed messages (MQTT deliveries) have no direction change; 0 disables */
	__u64 thread_rv_ttl_ns; /* how long a server request's randomness is lent to context-less client calls
				 * of the thread that read it (the agent's response timeout) */
};

/* Live settings: the single entry of the `config` array map (Python mirror: "=QII"). */
#define HELIX_FILTER_PIDS (1u << 0)    /* only tgids present in `allowed_pids` are traced */
#define HELIX_FILTER_CGROUPS (1u << 1) /* only cgroup ids present in `allowed_cgroups` are traced */

struct helix_config {
	__u64 sample_threshold; /* 56-bit OTel rejection threshold: exchanges whose randomness R < it are held back
				 * (counted in red_agg); 0 keeps everything and skips the decision work */
	__u32 flags;            /* HELIX_FILTER_* */
	__u32 _pad;
};

/* Indexes of the per-CPU `drops` counters (Python mirror: DropReason in loader.py). */
enum helix_drop {
	HELIX_DROP_RINGBUF_FULL = 0, /* bpf_ringbuf_output/reserve failed: userspace too slow */
	HELIX_DROP_STATE_FULL = 1,   /* a state map was full (per-connection or in-flight syscall) */
	HELIX_DROP_TLS_UNLINKED = 2, /* TLS plaintext of an SSL object not (yet) linked to a socket: not sent */
	HELIX_DROP_H2_DESYNC = 3,    /* an HTTP/2 connection whose frame boundaries were lost: back to message mode */
	HELIX_DROP_MAX = 4,
};

/* Indexes of the per-CPU `decisions` counters of io.bpf.c, counted only while sample_threshold != 0 (but BROKER)
 * (Python mirror: _DECISIONS in loader.py). */
enum helix_decision {
	HELIX_DEC_KEPT = 0,         /* decided from R >= threshold: sent as usual */
	HELIX_DEC_SAMPLED_OUT = 1,  /* decided from R < threshold: nothing sent, counted in red_agg */
	HELIX_DEC_UNDECIDABLE = 2,  /* a request the kernel cannot judge soundly (no whole head, other context
				     * formats, pipelining, path or Host too long): sent as usual */
	HELIX_DEC_AGG_FULL = 3,     /* red_agg had no room for its series: sent as usual */
	HELIX_DEC_NO_STATUS = 4,    /* a sampled-out response without a readable status line: counted as status 0 */
	HELIX_DEC_INCOMPLETE = 5,   /* a sampled-out request closed without a response: counted as an error */
	HELIX_DEC_THREAD_RV = 6,    /* a client request that took its randomness from the thread's server request */
	HELIX_DEC_BROKER = 7,       /* a PUBLISH a broker wrote or read: its connections make no spans, never sent */
	HELIX_DEC_PEER_RV = 8,      /* a server request that took its randomness from the client on the other end */
	HELIX_DEC_MAX = 9,
};

/* data_event.rv: the kernel chose the randomness (drawn, or lent by the thread's server request) because the
 * request carried no traceparent; the low 56 bits are R. 0: no kernel randomness (threshold 0, or wire R). */
#define HELIX_RV_KERNEL (1ULL << 63)
#define HELIX_RV_MASK ((1ULL << 56) - 1)

/* RED aggregates of exchanges the kernel sampled out (io.bpf.c `red_agg`, Python mirror in loader.py). */
#define HELIX_RED_BOUNDS_MAX 16
#define HELIX_RED_METHOD_LEN 8
#define HELIX_RED_PATH_LEN 64
#define HELIX_RED_HOST_LEN 40

enum helix_red_kind {
	HELIX_RED_SERVER = 2, /* same values as Role: an HTTP request read by a server */
	HELIX_RED_CLIENT = 1, /* an HTTP request written by a client */
	HELIX_RED_PRODUCER = 3, /* an MQTT PUBLISH written by a client; `path` is its topic, `host` the remote address */
	HELIX_RED_CONSUMER = 4, /* an MQTT PUBLISH read by a client (a subscriber); `path` is its topic */
};

/* The agent's histogram bounds (`red_bounds`, one entry): bucket i counts d <= ns[i] (and > ns[i-1]), the last
 * one everything above ns[n-1], as bisect_left in edge/aggregator/red.py. enabled = 0: never sample out.
 * 136 bytes; Python: "=II16Q". */
struct helix_red_bounds {
	__u32 n;
	__u32 enabled;
	__u64 ns[HELIX_RED_BOUNDS_MAX];
};

/* One series: 136 bytes; Python: "=IHBB 16s 8s 64s 40s". Strings are NUL-padded. */
struct helix_red_key {
	__u32 tgid;
	__u16 family;  /* HELIX_RED_PRODUCER: the address family of `host`; 0 otherwise */
	__u8 kind;     /* enum helix_red_kind */
	__u8 _pad;
	char comm[HELIX_COMM_LEN]; /* the thread's comm, which names the service as in the span path */
	char method[HELIX_RED_METHOD_LEN];
	char path[HELIX_RED_PATH_LEN];  /* the target up to '?' or ' ' (HTTP), the topic (MQTT) */
	char host[HELIX_RED_HOST_LEN];  /* client: the Host header value; producer: the remote address (16 bytes) */
};

/* Cumulative counts of one series: 160 bytes; Python: "=QQQ17Q". */
struct helix_red_val {
	__u64 count;
	__u64 errors;
	__u64 sum_ns;
	__u64 buckets[HELIX_RED_BOUNDS_MAX + 1];
};

/* A TCP connection's endpoints as read from sk->__sk_common (40 bytes; Python: "=16s16sHHHBB"). */
struct helix_endpoints {
	__u8 saddr[16]; /* local address; IPv4 in the first 4 bytes */
	__u8 daddr[16]; /* remote address */
	__u16 sport;    /* local port, host order */
	__u16 dport;    /* remote port, host order */
	__u16 family;   /* AF_INET (2) or AF_INET6 (10) */
	__u8 role;      /* Role in events.py: 0 unknown, 1 client, 2 server */
	__u8 direction; /* Direction in events.py: 0 egress, 1 ingress */
};


_Static_assert(sizeof(struct helix_settings) == 32, "mirrored in loader.py");
_Static_assert(sizeof(struct helix_red_bounds) == 136, "mirrored in loader.py");
_Static_assert(sizeof(struct helix_red_key) == 136, "mirrored in loader.py");
_Static_assert(sizeof(struct helix_red_val) == 160, "mirrored in loader.py");
_Static_assert(sizeof(struct helix_config) == 16, "mirrored in loader.py");
#endif /* HELIX_H */
