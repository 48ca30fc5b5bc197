/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Records written by proc.bpf.c (exec, exit, wakeups between the threads of a process, event-loop turns). Off-CPU time is not a record: it accumulates in the shared
 * `offcpu` map and rides on io.bpf.c's data/close records.
 * Python mirror: edge/sources/ebpf/decode.py, one struct.Struct per record, each naming this header.
 */
#ifndef HELIX_PROC_H
#define HELIX_PROC_H

#include "helix.h"

#define HELIX_FILENAME_LEN 256

/* sched:sched_process_exec. 296 bytes; Python: "=IIIi Q 16s 256s". */
struct exec_event {
	__u32 type; /* HELIX_EV_EXEC */
	__u32 pid;
	__u32 ppid;
	__u32 _pad;
	__u64 ts_ns;
	char comm[HELIX_COMM_LEN];
	char filename[HELIX_FILENAME_LEN];
};

/* sched:sched_process_exit of the last thread of a process. 40 bytes; Python: "=IIiI Q 16s".
 * exit_code is the kernel's wait status: (code << 8) | termsig. */
struct exit_event {
	__u32 type; /* HELIX_EV_EXIT */
	__u32 pid;
	__s32 exit_code;
	__u32 _pad;
	__u64 ts_ns;
	char comm[HELIX_COMM_LEN];
};

/* sched:sched_waking (or sched_wakeup_new: a thread created, wakee_since_ns 0) between two threads of one traced
 * process, one of which did traced socket I/O: the waker hands work (or a result) to the wakee. wakee_since_ns is when the wakee was switched out (its sleep began), 0 when it
 * never did traced socket I/O. 32 bytes; Python: "=IIII QQ". */
struct wakeup_event {
	__u32 type; /* HELIX_EV_WAKEUP */
	__u32 pid;  /* tgid of both threads */
	__u32 waker_tid;
	__u32 wakee_tid;
	__u64 ts_ns;
	__u64 wakee_since_ns;
};

/* sys_exit of epoll_wait/epoll_pwait/epoll_pwait2 in a thread of a traced process that did traced socket I/O: an
 * event loop's turn begins (whatever it runs until its next wait belongs to this turn). ready is the syscall's
 * return value (ready descriptors, 0 on timeout, -errno). 24 bytes; Python: "=IIIi Q". */
struct turn_event {
	__u32 type; /* HELIX_EV_TURN */
	__u32 pid;
	__u32 tid;
	__s32 ready;
	__u64 ts_ns;
};

_Static_assert(sizeof(struct exec_event) == 296, "mirrored in decode.py");
_Static_assert(sizeof(struct exit_event) == 40, "mirrored in decode.py");
_Static_assert(sizeof(struct wakeup_event) == 32, "mirrored in decode.py");
_Static_assert(sizeof(struct turn_event) == 24, "mirrored in decode.py");
#endif /* HELIX_PROC_H */
