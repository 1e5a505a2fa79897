/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The few kernel structures socktrace reads, declared by hand for CO-RE.
 *
 * preserve_access_index makes clang record every field access as a relocation; libbpf
 * resolves it against the running kernel's BTF (/sys/kernel/btf/vmlinux) at load time.
 * So only the fields named here matter, their order and offsets here are irrelevant, and
 * no kernel headers (which do not exist for this kernel) are needed.
 */
#ifndef MSTACK_CORE_H
#define MSTACK_CORE_H

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct pt_regs {
	unsigned long bx, cx, dx, si, di, r8, r9, r10, orig_ax;
};

struct thread_info {
	__u32 status;
};

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct nsproxy {
	struct net *net_ns;
};

struct inode {
	unsigned short i_mode;
};

struct file {
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

struct sock_common {
	unsigned short skc_family;
	possible_net_t skc_net;
};

struct sock {
	struct sock_common __sk_common;
	__u16 sk_type;
	__u16 sk_protocol;
};

struct socket {
	struct sock *sk;
};

typedef struct {
	int counter;
} atomic_t;

struct signal_struct {
	atomic_t live;
};

struct task_struct {
	struct thread_info thread_info;
	int pid;
	int tgid;
	struct task_struct *real_parent;
	char comm[16];
	struct files_struct *files;
	struct nsproxy *nsproxy;
	struct signal_struct *signal;
};

#pragma clang attribute pop

#endif
