// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * carrier: per-process default tables (msocket SOCK_DEFAULT, a nested mstack) carried by the
 * kernel's own fork, not by a descriptor a child may close.
 *
 * The supervisor writes thread -> table number into `tables` when a process sets a table
 * of its own; every thread or process that task creates gets the entry its creator had at
 * that moment, which is the inheritance msocket(2) defines (a child keeps the table its
 * parent had at the fork), and one created by a task without an entry gets none. An exiting
 * task's entry is removed; a thread that execs and so takes its process's pid takes its
 * entry along. The marker descriptor (supervisor/tables.py) stays the carrier where eBPF cannot
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
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* entries as tables are set: not 5 MB per tree */
	__type(key, __u32);
	__type(value, __u32);
} tables SEC(".maps");

/*
 * Every fork decides the child's entry, also when its creator has none: an entry left at a
 * tid whose task is gone (the supervisor gave the table to a thread that was exiting, or a
 * leader already a zombie) must not reach the next task that gets that tid.
 */
static __always_inline int on_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 from = BPF_CORE_READ(parent, pid);
	__u32 to = BPF_CORE_READ(child, pid);
	__u32 *table = bpf_map_lookup_elem(&tables, &from);

	if (table) {
		__u32 copy = *table;

		bpf_map_update_elem(&tables, &to, &copy, BPF_ANY);
	} else {
		bpf_map_delete_elem(&tables, &to);
	}
	return 0;
}

/*
 * A thread other than the leader that execs takes the process's pid (de_thread): the
 * leader's entry went with the leader's exit, and the thread's old tid, now free, would
 * keep one. The entry moves with the thread.
 */
static __always_inline int on_exec(struct task_struct *task, __u32 old)
{
	__u32 tid = BPF_CORE_READ(task, pid);
	__u32 *table;

	if (tid == old)
		return 0;
	table = bpf_map_lookup_elem(&tables, &old);
	if (table) {
		__u32 copy = *table;

		bpf_map_update_elem(&tables, &tid, &copy, BPF_ANY);
		bpf_map_delete_elem(&tables, &old);
	} else {
		bpf_map_delete_elem(&tables, &tid);
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

SEC("tp_btf/sched_process_exec")
int BPF_PROG(btf_exec, struct task_struct *task, int old_pid)
{
	return on_exec(task, old_pid);
}

/* The same three through raw tracepoints, for kernels whose tp_btf attach fails. */
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

SEC("raw_tp/sched_process_exec")
int BPF_PROG(raw_exec, struct task_struct *task, int old_pid)
{
	return on_exec(task, old_pid);
}
