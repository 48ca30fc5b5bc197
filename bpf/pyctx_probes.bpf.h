/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The uprobe pair on PyContext_CopyCurrent (pyctx.bpf.h explains; included by io.bpf.c after tls.bpf.h, whose register
 * helpers it uses). */
#ifndef HELIX_PYCTX_PROBES_BPF_H
#define HELIX_PYCTX_PROBES_BPF_H

#include "pyctx.bpf.h"

static __always_inline __u64 uret0(void *ctx)
{
	return regs_x86() ? BPF_CORE_READ((struct pt_regs___x86 *)ctx, ax) : BPF_CORE_READ((struct pt_regs___arm64 *)ctx, regs[0]);
}

/* PyObject *PyContext_CopyCurrent(void): the GIL is held, so the runtime's field names this thread's state (3.11: the
 * current thread state; 3.12 on: the GIL's last holder, the holder now). A state whose native thread id is not this
 * thread's (a subinterpreter with a GIL of its own holds another) is not learned. */
SEC("uprobe")
int py_copy_enter(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32, tid = (__u32)id;
	struct py_proc *p = bpf_map_lookup_elem(&py_procs, &pid);
	__u64 tstate = 0, cur = 0, owner = 0;

	if (!p)
		return 0;
	if (bpf_probe_read_user(&tstate, sizeof(tstate), (void *)p->tstate_current) || !tstate)
		return 0;
	if (bpf_probe_read_user(&owner, sizeof(owner), (void *)(tstate + p->tid_off)) || owner != tid) {
		py_count(HELIX_PYCTX_OTHER_THREAD);
		return 0;
	}
	bpf_map_update_elem(&py_tstates, &id, &tstate, BPF_ANY);
	if (bpf_probe_read_user(&cur, sizeof(cur), (void *)(tstate + p->ctx_off)) || !cur)
		return 0; /* no context yet: the copy is of a fresh empty one, a root */
	bpf_map_update_elem(&py_copying, &tid, &cur, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int py_copy_return(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__u64 *parent = bpf_map_lookup_elem(&py_copying, &tid);
	struct py_edge_key key = {.pid = id >> 32};
	__u64 up;

	if (!parent)
		return 0;
	up = *parent;
	bpf_map_delete_elem(&py_copying, &tid);
	key.child = uret0(ctx);
	if (!key.child)
		return 0;
	bpf_map_update_elem(&py_edges, &key, &up, BPF_ANY);
	py_count(HELIX_PYCTX_EDGES);
	return 0;
}

#endif /* HELIX_PYCTX_PROBES_BPF_H */
