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
};

#define HELIX_COMM_LEN 16
#define HELIX_PAYLOAD_MAX 1024 /* hard cap on payload bytes per record (settings.payload_bytes <= this) */

/*
 * Load-time settings: the object's whole .rodata section is exactly one `const volatile struct
 * helix_settings settings`. The loader overwrites it before bpf_object__load (Python mirror: "=IIQQ").
 */
struct helix_settings {
	__u32 payload_bytes; /* bytes of each message sent to userspace, 0..HELIX_PAYLOAD_MAX */
	__u32 self_pid;      /* the agent's own tgid: never traced (0 = none) */
	__u64 slow_file_ns;  /* file read/write/fsync slower than this becomes an event; ~0 disables */
	__u64 msg_idle_gap_ns; /* same-direction syscalls further apart than this (exit to exit) start a new
				* message: server-pushed messages (MQTT deliveries) have no direction change; 0 disables */
};

/* Live settings: the single entry of the `config` array map (Python mirror: "=QII"). */
#define HELIX_FILTER_PIDS (1u << 0)    /* only tgids present in `allowed_pids` are traced */
#define HELIX_FILTER_CGROUPS (1u << 1) /* only cgroup ids present in `allowed_cgroups` are traced */

struct helix_config {
	__u64 sample_threshold; /* 56-bit OTel rejection threshold; 0 keeps all, non-zero: no message starts for now */
	__u32 flags;            /* HELIX_FILTER_* */
	__u32 _pad;
};

/* Indexes of the per-CPU `drops` counters (Python mirror: DropReason in loader.py). */
enum helix_drop {
	HELIX_DROP_RINGBUF_FULL = 0, /* bpf_ringbuf_output/reserve failed: userspace too slow */
	HELIX_DROP_STATE_FULL = 1,   /* a state map was full (per-connection or in-flight syscall) */
	HELIX_DROP_MAX = 4,
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


_Static_assert(sizeof(struct helix_settings) == 24, "mirrored in loader.py");
_Static_assert(sizeof(struct helix_config) == 16, "mirrored in loader.py");
#endif /* HELIX_H */
