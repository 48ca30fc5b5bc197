/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Records written by proc.bpf.c (exec, exit). Off-CPU time is not a record: it accumulates in the shared
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


_Static_assert(sizeof(struct exec_event) == 296, "mirrored in decode.py");
_Static_assert(sizeof(struct exit_event) == 40, "mirrored in decode.py");
#endif /* HELIX_PROC_H */
