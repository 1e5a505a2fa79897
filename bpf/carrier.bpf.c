// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * carrier: per-process default tables (msocket SOCK_DEFAULT, a nested mstack) carried by the
 * kernel's own fork, not by a descriptor a child may close.
 *
 * The supervisor writes thread -> table number into `tables` when a process sets a table
 * of its own; every thread or process that task creates gets the entry its creator had at
 * that moment, which is the inheritance msocket(2) defines (a child keeps the table its
 * parent had at the fork). An exiting task's entry is removed, so a reused tid never finds
 * one. The marker descriptor (supervisor/tables.py) stays the carrier where eBPF cannot
 * run; with this map, closefrom(), close_fds and sudo no longer lose the table.
 * Keys are tids as the initial pid namespace numbers them (task->pid).
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "core.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} tables SEC(".maps");

static __always_inline int on_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 from = BPF_CORE_READ(parent, pid);
	__u32 to = BPF_CORE_READ(child, pid);
	__u32 *table = bpf_map_lookup_elem(&tables, &from);

	if (table) {
		__u32 copy = *table;

		bpf_map_update_elem(&tables, &to, &copy, BPF_ANY);
	}
	return 0;
}

static __always_inline int on_exit(struct task_struct *task)
{
	__u32 tid = BPF_CORE_READ(task, pid);

	bpf_map_delete_elem(&tables, &tid);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(btf_fork, struct task_struct *parent, struct task_struct *child)
{
	return on_fork(parent, child);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(btf_exit, struct task_struct *task)
{
	return on_exit(task);
}

/* The same two through raw tracepoints, for kernels whose tp_btf attach fails. */
SEC("raw_tp/sched_process_fork")
int BPF_PROG(raw_fork, struct task_struct *parent, struct task_struct *child)
{
	return on_fork(parent, child);
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(raw_exit, struct task_struct *task)
{
	return on_exit(task);
}
