/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The few kernel-internal types the probes read, declared by hand.
 *
 * Every struct carries preserve_access_index, so clang records each field access as a CO-RE relocation
 * and libbpf rewrites the offsets against the running kernel's BTF (/sys/kernel/btf/vmlinux) at load
 * time. Only the fields we touch are declared; their order and the padding here do not matter, names
 * and (roughly) types do. Fields that live inside anonymous unions/structs in the kernel (sock_common,
 * qstr) are declared flat: libbpf searches anonymous members when it matches a field by name.
 *
 * Stable user ABI structs (iovec, user_msghdr) and the fixed syscall tracepoint records are plain C:
 * they are part of the kernel's user-facing contract and never move.
 *
 * Why not a bpftool-generated vmlinux.h: see README.md.
 */
#ifndef HELIX_VMLINUX_MIN_H
#define HELIX_VMLINUX_MIN_H

#include <linux/types.h>
#include <linux/bpf.h>

typedef _Bool bool;
enum { false = 0, true = 1 };

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct qstr {
	__u32 hash;
	__u32 len;
	const unsigned char *name;
};

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
};

struct vfsmount {
	struct dentry *mnt_root;
};

/* fs/mount.h: not in any public header, but in BTF; `mnt` is embedded, so container_of needs its offset. */
struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
};

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct inode {
	unsigned short i_mode;
};

struct file {
	struct path f_path;
	struct inode *f_inode;
	void *private_data;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
};

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct socket;

struct sock {
	struct sock_common __sk_common;
	struct socket *sk_socket;
	int sk_err;
};

struct socket {
	short type;
	struct sock *sk;
};

typedef struct {
	int counter;
} atomic_t;

struct signal_struct {
	atomic_t live;
};

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	char comm[16];
	struct task_struct *real_parent;
	struct files_struct *files;
	struct signal_struct *signal;
};

struct linux_binprm {
	const char *filename;
};

#pragma clang attribute pop

/* Syscall tracepoint records (syscalls:sys_enter_* / sys_exit_*): 8-byte common header, the syscall
 * number, then the arguments as 8-byte slots. Fixed by the kernel's ftrace syscall event format. */
struct trace_event_raw_sys_enter {
	__u64 common;
	long id;
	unsigned long args[6];
};

struct trace_event_raw_sys_exit {
	__u64 common;
	long id;
	long ret;
};

struct iovec_user {
	void *iov_base;
	__u64 iov_len;
};

struct user_msghdr {
	void *msg_name;
	int msg_namelen;
	struct iovec_user *msg_iov;
	__u64 msg_iovlen;
	void *msg_control;
	__u64 msg_controllen;
	unsigned int msg_flags;
};

#endif /* HELIX_VMLINUX_MIN_H */
