/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * CPython's task contexts (included by io.bpf.c before emit_start; its uprobes: pyctx_probes.bpf.h).
 *
 * Every asyncio Task step runs inside the task's own contextvars.Context, which CPython keeps in
 * PyThreadState.context; a Task (and every callback) gets a copy of the context current when it was made, taken by
 * PyContext_CopyCurrent. The uprobe pair on that function records parent -> child edges per process; an egress
 * message's first syscall then carries the writing thread's context and its ancestors (struct py_ctx_event), from
 * which userspace tells which server exchange's handler made a call (edge/sources/ebpf/spans/causes.py, `task`).
 *
 * At a syscall the GIL is released, so _PyRuntime's current thread state is NULL; the thread's own PyThreadState is
 * learned instead at the uprobe (the GIL is held there) and kept per thread. Offsets come from userspace per process
 * (struct py_proc), for interpreter versions whose layout was verified (edge/sources/ebpf/py_attach.py): nothing is
 * read in a process without an entry.
 */
#ifndef HELIX_PYCTX_BPF_H
#define HELIX_PYCTX_BPF_H

#include "io.h"

/* pid -> where to read (written by userspace). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct py_proc);
} py_procs SEC(".maps");

/* (pid << 32 | tid) -> that thread's PyThreadState address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} py_tstates SEC(".maps");

/* tid -> the context current at PyContext_CopyCurrent's entry, until its return. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} py_copying SEC(".maps");

struct py_edge_key {
	__u32 pid;
	__u32 _pad;
	__u64 child;
};

/* (pid, child context) -> the context it was copied from. LRU: the oldest edges go first; a context whose address
 * is reused by a later copy gets the new edge. 16384 x ~80 B = 1.3 MiB. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct py_edge_key);
	__type(value, __u64);
} py_edges SEC(".maps");

/* Counters (enum helix_pyctx_count), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HELIX_PYCTX_MAX);
	__type(key, __u32);
	__type(value, __u64);
} py_counts SEC(".maps");

static __always_inline void py_count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&py_counts, &which);

	if (n)
		*n += 1;
}

/* Before a message's first record: the writing thread's context and its ancestors, when its process is a known
 * interpreter. Written into the ring's reservation; for TLS writes at the write's entry (tls_enter), not in
 * tls_return: with a stack record, or inlined there, its combined call stack went over 6.1's 512 bytes; as a
 * subprogram, 5.10 and 6.1 lost exit_rw's bound on the copy length across the call. */
static __always_inline void py_ctx_emit(__u64 id, __u64 ts_ns, __u64 sock)
{
	__u32 pid = id >> 32;
	struct py_proc *p = bpf_map_lookup_elem(&py_procs, &pid);
	struct py_edge_key key = {.pid = pid};
	struct py_ctx_event *ev;
	__u64 *tstate, *up, ctx;
	__u32 depth = 1;

	if (!p)
		return;
	tstate = bpf_map_lookup_elem(&py_tstates, &id);
	if (!tstate) {
		py_count(HELIX_PYCTX_NO_TSTATE);
		return;
	}
	if (bpf_probe_read_user(&ctx, sizeof(ctx), (void *)(*tstate + p->ctx_off)) || !ctx)
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(HELIX_DROP_RINGBUF_FULL);
		return;
	}
	ev->type = HELIX_EV_PYCTX;
	ev->pid = pid;
	ev->tid = (__u32)id;
	ev->ts_ns = ts_ns;
	ev->sock = sock;
	ev->ctx[0] = ctx;
#pragma unroll
	for (int i = 1; i < HELIX_PYCTX_DEPTH; i++) {
		up = NULL;
		if (depth == i) {
			key.child = ctx;
			up = bpf_map_lookup_elem(&py_edges, &key);
		}
		if (up) {
			ctx = *up;
			depth = i + 1;
		} else {
			ctx = 0;
		}
		ev->ctx[i] = ctx;
	}
	ev->depth = depth;
	rb_submit(ev, sizeof(*ev));
	py_count(HELIX_PYCTX_CHAINS);
}

#endif /* HELIX_PYCTX_BPF_H */
