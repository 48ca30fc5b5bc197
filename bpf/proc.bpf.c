// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Process lifecycle and scheduling: exec and exit records, per-thread off-CPU time, and the wakeups by which the
 * threads of a traced process hand work and results to each other.
 *
 * sched_switch runs on every context switch of the machine, so it only touches threads already enrolled
 * in `offcpu` (io.bpf.c enrols a thread when it does traced socket I/O): two hash lookups, no filters.
 * sched_waking runs on every wakeup of the machine: a thread of another process, or two threads of which neither
 * did traced socket I/O, costs one field read or two hash lookups and sends nothing.
 * sched_wakeup_new runs once per task created on the machine: the same filters, a new thread's creation counts as a
 * hand-off.
 * The sys_exit of epoll_wait/epoll_pwait/epoll_pwait2 runs on every such return of the machine: a thread that never
 * did traced socket I/O costs one hash lookup and sends nothing; an event loop of a traced process sends one record
 * per turn.
 * sched_process_exit also clears the per-thread state of both objects, so thread churn cannot leak.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "proc.h"
#include "maps.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next[, unsigned int prev_state]), as a BTF
 * tracepoint: the arguments are typed pointers whose fields the JIT loads inline, where a raw tracepoint reads each
 * through a helper call. The clock is read only when one of the two threads is enrolled, so the machine's other
 * switches cost two lookups and nothing more. */
SEC("tp_btf/sched_switch")
int on_sched_switch(__u64 *ctx)
{
	struct task_struct *prev = (struct task_struct *)ctx[1];
	struct task_struct *next = (struct task_struct *)ctx[2];
	struct offcpu_state *st;
	__u64 now = 0;
	__u32 tid;

	tid = prev->pid;
	st = offcpu_of(tid);
	if (st) {
		now = bpf_ktime_get_ns();
		st->since_ns = now;
	}
	tid = next->pid;
	st = offcpu_of(tid);
	if (st && st->since_ns) {
		if (!now)
			now = bpf_ktime_get_ns();
		st->total_ns += now - st->since_ns;
		st->since_ns = 0;
	}
	return 0;
}

static __always_inline void send_wakeup(__u32 tgid, __u32 waker, __u32 wakee, __u64 wakee_since_ns)
{
	struct wakeup_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);

	if (!ev) {
		count_drop(HELIX_DROP_RINGBUF_FULL);
		return;
	}
	ev->type = HELIX_EV_WAKEUP;
	ev->pid = tgid;
	ev->waker_tid = waker;
	ev->wakee_tid = wakee;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->wakee_since_ns = wakee_since_ns;
	rb_submit(ev, sizeof(*ev));
}

/* sched_waking(struct task_struct *p): runs in the waker's context, before p is runnable. A thread that hands a
 * request's work to a pool worker wakes it (a queue, a semaphore); the worker that finished wakes the thread waiting
 * for the result (a future, a condition). Only wakeups inside one process where one of the two threads did traced
 * socket I/O are sent; the span builder decides which of them carry a request (edge/sources/ebpf/spans/causes.py). */
SEC("tp_btf/sched_waking")
int on_sched_waking(__u64 *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx[0];
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	__u32 waker = (__u32)id;
	struct offcpu_state *slept;
	__u32 wakee;

	if ((__u32)p->tgid != tgid)
		return 0; /* another process (or an interrupt on an idle CPU): no hand-off between threads */
	wakee = p->pid;
	if (wakee == waker)
		return 0;
	slept = offcpu_of(wakee);
	if (!slept && !offcpu_of(waker))
		return 0; /* neither thread did traced socket I/O */
	if (!traced(tgid))
		return 0;
	send_wakeup(tgid, waker, wakee, slept ? slept->since_ns : 0);
	return 0;
}

/* sched_wakeup_new(struct task_struct *p): the first wakeup of a new task, in its creator's context. A pool that
 * starts workers lazily (ThreadPoolExecutor on submit) hands the new worker its first work by creating it, not by
 * waking it: sent as a wakeup from the creating thread when it did traced socket I/O and the new task is a thread of
 * the same process (a forked process is not a hand-off). Runs once per thread or process created on the machine. */
SEC("tp_btf/sched_wakeup_new")
int on_sched_wakeup_new(__u64 *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx[0];
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	__u32 creator = (__u32)id;

	if ((__u32)p->tgid != tgid)
		return 0; /* a new process, not a thread of this one */
	if (!offcpu_of(creator) || !traced(tgid))
		return 0;
	send_wakeup(tgid, creator, p->pid, 0); /* it never slept: it waited for nothing */
	return 0;
}

/* An event loop (asyncio, libuv, epoll-based servers) runs one turn per return from its wait: the callbacks of the
 * descriptors it reported and the continuations queued by the turn before. The span builder counts turns to tell
 * which request a loop's call can belong to (edge/sources/ebpf/spans/causes.py). */
static __always_inline int loop_turn(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct turn_event *ev;

	if (!offcpu_of(tid) || !traced(id >> 32))
		return 0; /* a thread that never did traced socket I/O */
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(HELIX_DROP_RINGBUF_FULL);
		return 0;
	}
	ev->type = HELIX_EV_TURN;
	ev->pid = id >> 32;
	ev->tid = tid;
	ev->ready = (__s32)ctx->ret;
	ev->ts_ns = bpf_ktime_get_ns();
	rb_submit(ev, sizeof(*ev));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_epoll_wait")
int exit_epoll_wait(struct trace_event_raw_sys_exit *ctx)
{
	return loop_turn(ctx);
}

SEC("tracepoint/syscalls/sys_exit_epoll_pwait")
int exit_epoll_pwait(struct trace_event_raw_sys_exit *ctx)
{
	return loop_turn(ctx);
}

SEC("tracepoint/syscalls/sys_exit_epoll_pwait2")
int exit_epoll_pwait2(struct trace_event_raw_sys_exit *ctx)
{
	return loop_turn(ctx);
}

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm); runs in the task
 * after the new image is in place, so comm is already the new program's. */
SEC("raw_tp/sched_process_exec")
int on_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	__u32 pid = BPF_CORE_READ(task, tgid);
	struct exec_event *ev;

	if (!traced(pid))
		return 0;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(HELIX_DROP_RINGBUF_FULL);
		return 0;
	}
	ev->type = HELIX_EV_EXEC;
	ev->pid = pid;
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->_pad = 0;
	ev->ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	if (bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), BPF_CORE_READ(bprm, filename)) < 0)
		ev->filename[0] = 0;
	/* woken at once (execs are rare): the agent attaches the TLS probes to a new program that links OpenSSL
	 * statically before it gets far (edge/sources/ebpf/tls_attach.py) */
	bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
	return 0;
}

/* sched_process_exit(struct task_struct *p[, bool group_dead]) fires for every thread. signal->live
 * has already been decremented, so 0 means this is the last thread: the process is gone. */
SEC("raw_tp/sched_process_exit")
int on_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	__u32 tid = BPF_CORE_READ(task, pid);
	__u32 pid = BPF_CORE_READ(task, tgid);
	struct exit_event *ev;

	bpf_map_delete_elem(&offcpu, &tid);
	bpf_map_delete_elem(&inflight, &tid);
	id_bit_set(&busy_tids, tid, false); /* runs in the exiting thread: the bits' owner */
	id_bit_set(&offcpu_tids, tid, false);
	if (BPF_CORE_READ(task, signal, live.counter) != 0 || !traced(pid))
		return 0;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(HELIX_DROP_RINGBUF_FULL);
		return 0;
	}
	ev->type = HELIX_EV_EXIT;
	ev->pid = pid;
	ev->exit_code = BPF_CORE_READ(task, exit_code);
	ev->_pad = 0;
	ev->ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	rb_submit(ev, sizeof(*ev));
	return 0;
}
