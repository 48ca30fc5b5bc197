/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Records written by io.bpf.c (socket messages and their top-ups, closes, connects, TCP faults, slow
 * file I/O).
 * Python mirror: edge/sources/ebpf/decode.py, one struct.Struct per record, each naming this header.
 */
#ifndef HELIX_IO_H
#define HELIX_IO_H

#include "helix.h"

/* The first syscall of a message, then `payload_len` bytes. A message starts when the direction of traffic on
 * the connection changes, or when the connection was idle in the same direction for more than
 * settings.msg_idle_gap_ns (exit to exit). prev_* close the books on the message before it.
 * rv: for a request the kernel judged on randomness it chose itself, R | HELIX_RV_KERNEL (helix.h), else 0.
 * flags: HELIX_DATA_TLS when the bytes are TLS plaintext (tls_version: the negotiated version as OpenSSL numbers it,
 * 0x0304 for TLS 1.3; 0 when unknown).
 * 144 bytes + payload; Python: "=IIIi QQQQQQQQ 40s 16s IHH". */
struct data_event {
	__u32 type; /* HELIX_EV_DATA */
	__u32 pid;
	__u32 tid;
	__s32 fd;
	__u64 ts_ns;       /* sys_enter of this syscall */
	__u64 end_ns;      /* sys_exit of this syscall */
	__u64 sock;        /* struct sock address: the connection's identity */
	__u64 size;        /* bytes moved by this syscall */
	__u64 prev_bytes;  /* bytes of the previous message on the connection (0 if none) */
	__u64 prev_end_ns; /* sys_exit of the last syscall of the previous message (0 if none) */
	__u64 offcpu_ns;   /* this thread's cumulative off-CPU time (proc.bpf.c accounts it) */
	__u64 rv;          /* kernel-chosen randomness of this request, see above */
	struct helix_endpoints ep;
	char comm[HELIX_COMM_LEN];
	__u32 payload_len;
	__u16 flags;       /* HELIX_DATA_TLS */
	__u16 tls_version;
	__u8 payload[]; /* payload_len bytes */
};

/* A later syscall of the message in flight, while the message's snapshot is short of payload_bytes: its
 * first bytes, so that userspace can complete the snapshot. MQTT clients and brokers read a packet a byte or
 * two at a time; HTTP heads are often written in pieces. Everything else about the connection is in the
 * data_event that started the message, so this record is small. `offset` is where the syscall's bytes
 * start in the message: a record lost to a full ring buffer, or a copy that failed, shows as a hole.
 * 48 bytes + payload; Python: "=IIIHBB QQQQ". */
struct data_more_event {
	__u32 type; /* HELIX_EV_DATA_MORE */
	__u32 pid;
	__u32 tid;
	__u16 payload_len; /* <= payload_bytes - offset */
	__u8 direction;    /* Direction in events.py: 0 egress, 1 ingress */
	__u8 flags;        /* HELIX_DATA_TLS */
	__u64 ts_ns;  /* sys_enter of this syscall */
	__u64 end_ns; /* sys_exit of this syscall */
	__u64 sock;
	__u64 offset; /* bytes of the message moved before this syscall */
	__u8 payload[]; /* payload_len bytes */
};

/* The HTTP/2 frames one call moved on a connection in frame mode (h2.bpf.h): every frame header, and the payload of
 * every frame but DATA (and but frames longer than HELIX_H2_KEEP_MAX or of unknown type), in stream order. A frame
 * header or payload that straddles calls continues in the next record. A call with more to keep than one record holds
 * sends several, with the same times. flags: HELIX_DATA_TLS, HELIX_H2_START, HELIX_H2_GAP.
 * 112 bytes + payload; Python: "=IIIHH QQQQ 40s 16s II". */
#define HELIX_H2_REC_MAX 2048 /* payload bytes per record */
#define HELIX_H2_KEEP_MAX 16384 /* frames longer than this keep only their header (the default SETTINGS_MAX_FRAME_SIZE) */

struct h2_event {
	__u32 type; /* HELIX_EV_H2 */
	__u32 pid;
	__u32 tid;
	__u16 flags;
	__u16 tls_version;
	__u64 ts_ns;  /* entry of the syscall or TLS call */
	__u64 end_ns; /* its return */
	__u64 sock;
	__u64 size;   /* bytes the call moved */
	struct helix_endpoints ep;
	char comm[HELIX_COMM_LEN];
	__u32 payload_len;
	__u32 _pad;
	__u8 payload[];
};

/* close(2) of a tracked socket fd. 56 bytes; Python: "=IIIi QQQQ". */
struct close_event {
	__u32 type; /* HELIX_EV_CLOSE */
	__u32 pid;
	__u32 tid;
	__s32 fd;
	__u64 ts_ns;
	__u64 sock;
	__u64 last_bytes;  /* bytes of the message in flight */
	__u64 last_end_ns; /* sys_exit of its last syscall */
	__u64 offcpu_ns;
};

/* SYN_SENT -> ESTABLISHED (error 0) or SYN_SENT -> CLOSE (error = sk_err or ECONNABORTED).
 * 96 bytes; Python: "=IIiI QQQ 40s 16s". */
struct connect_event {
	__u32 type; /* HELIX_EV_CONNECT */
	__u32 pid;  /* the task that called connect() */
	__s32 error;
	__u32 _pad;
	__u64 ts_ns;
	__u64 sock;
	__u64 latency_ns;
	struct helix_endpoints ep;
	char comm[HELIX_COMM_LEN];
};

/* tcp:tcp_retransmit_skb / tcp_send_reset / tcp_receive_reset on a tracked connection.
 * 72 bytes; Python: "=IIiI QQ 40s". */
struct tcp_fault_event {
	__u32 type; /* HELIX_EV_TCP_FAULT */
	__u32 kind; /* FaultKind in events.py: 0 retransmit, 1 send reset, 2 receive reset */
	__s32 state; /* TCP state number (include/net/tcp_states.h) */
	__u32 _pad;
	__u64 ts_ns;
	__u64 sock;
	struct helix_endpoints ep;
};

/* The context a Python thread wrote a message's first bytes in, nearest first: its own, then the contexts each was
 * copied from (bpf/pyctx.bpf.h), `depth` of them valid. Sent just before the message's data_event (same ts_ns).
 * 96 bytes; Python: "=IIII QQ 8Q". */
#define HELIX_PYCTX_DEPTH 8

struct py_ctx_event {
	__u32 type; /* HELIX_EV_PYCTX */
	__u32 pid;
	__u32 tid;
	__u32 depth;
	__u64 ts_ns; /* sys_enter of the syscall, as its data_event's */
	__u64 sock;
	__u64 ctx[HELIX_PYCTX_DEPTH];
};

/* Per interpreter process, written by userspace (py_attach.py; Python: "=QII"). */
struct py_proc {
	__u64 tstate_current; /* address of the runtime's field naming the thread state holding the GIL, in that process */
	__u32 ctx_off;        /* offsetof(PyThreadState, context) */
	__u32 tid_off;        /* offsetof(PyThreadState, native_thread_id) */
};

/* Indexes of the per-CPU `py_counts` counters (Python mirror: _PYCTX_COUNTS in loader.py). */
enum helix_pyctx_count {
	HELIX_PYCTX_EDGES = 0,      /* parent -> child context edges recorded */
	HELIX_PYCTX_CHAINS = 1,     /* messages sent with their writer's contexts */
	HELIX_PYCTX_NO_TSTATE = 2,  /* a message of a known interpreter's thread whose thread state is not learned yet */
	HELIX_PYCTX_OTHER_THREAD = 3, /* a context copy where the runtime named another thread's state (not learned) */
	HELIX_PYCTX_MAX = 4,
};

#define HELIX_PATH_DEPTH 6  /* trailing path components kept */
#define HELIX_NAME_LEN 48   /* bytes kept of each component (NUL included) */

/* A slow read/write/fsync on a regular file. names[0] is the basename, names[1] its parent, ...;
 * `depth` names are valid; `complete` is 1 when the walk reached the root of the mount namespace.
 * 48 + 6*48 = 336 bytes; Python: "=IIIi II QQQ" + "48s"*6. */
struct file_io_event {
	__u32 type; /* HELIX_EV_FILE_IO */
	__u32 pid;
	__u32 tid;
	__s32 fd;
	__u32 op; /* FileOp in events.py: 0 read, 1 write, 2 fsync */
	__u16 depth;
	__u16 complete;
	__u64 ts_ns;
	__u64 end_ns;
	__u64 size;
	char names[HELIX_PATH_DEPTH][HELIX_NAME_LEN];
};


_Static_assert(sizeof(struct helix_endpoints) == 40, "mirrored in decode.py");
_Static_assert(sizeof(struct data_event) == 144, "mirrored in decode.py");
_Static_assert(sizeof(struct data_more_event) == 48, "mirrored in decode.py");
_Static_assert(sizeof(struct close_event) == 56, "mirrored in decode.py");
_Static_assert(sizeof(struct h2_event) == 112, "mirrored in decode.py");
_Static_assert(sizeof(struct connect_event) == 96, "mirrored in decode.py");
_Static_assert(sizeof(struct tcp_fault_event) == 72, "mirrored in decode.py");
_Static_assert(sizeof(struct py_ctx_event) == 96, "mirrored in decode.py");
_Static_assert(sizeof(struct py_proc) == 16, "mirrored in py_attach.py");
_Static_assert(sizeof(struct file_io_event) == 336, "mirrored in decode.py");
#endif /* HELIX_IO_H */
