// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * socktrace: one event per socket-making system call, with the network namespace the
 * new socket lives in.
 *
 * Everything is read at sys_exit: a notified syscall never passes sys_enter (seccomp
 * answers it first), but it does pass sys_exit, in the caller's context, after the
 * supervisor installed its fd. So sockets injected by mstack's supervisor are seen as the
 * target's, in the namespace they were really made in.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "core.h"
#include "socktrace.h"

char LICENSE[] SEC("license") = "GPL";

/* x86_64 syscall numbers. */
#define NR_SOCKET 41
#define NR_ACCEPT 43
#define NR_SOCKETPAIR 53
#define NR_ACCEPT4 288
#define NR_MSOCKET (-5L)
/* i386 numbers, reached from any process through int 0x80. */
#define NR32_SOCKETCALL 102
#define NR32_SOCKET 359
#define NR32_SOCKETPAIR 360
#define NR32_ACCEPT4 364
/* socketcall(2) call numbers (linux/net.h). */
#define SYS_SOCKET 1
#define SYS_ACCEPT 5
#define SYS_SOCKETPAIR 8
#define SYS_ACCEPT4 18

#define TS_COMPAT 0x0002 /* arch/x86/include/asm/thread_info.h */
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SOCK_TYPE_MASK 0xf

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct socktrace_config);
} config SEC(".maps");

/* The process tree being traced: tgid -> 1. Filled by user space with the root, then by
 * sched_process_fork with every descendant. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, __u32);
} traced SEC(".maps");

/* mstack's own processes: tgid -> 1. A launcher that marked itself (see
 * socktrace_config.self_mark), and every process it forks (its supervisor, the supervisor's
 * helpers); an exec ends it (the launcher becomes the user's COMMAND). User space may add
 * tgids it knows are mstack's. Their events carry SOCKTRACE_F_MSTACK. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} own SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Events lost because the ring buffer was full (user space too slow). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* Keep the event type in the object's BTF so user space can check its mirror. */
struct socktrace_event _event_btf_anchor __attribute__((unused));

static __always_inline struct socktrace_config *get_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline int filter_on(void)
{
	struct socktrace_config *c = get_config();

	return c && c->filter;
}

static __always_inline int is_traced(__u32 tgid)
{
	return !filter_on() || bpf_map_lookup_elem(&traced, &tgid) != NULL;
}

/* Waking the reader costs the traced call an irq_work and a wake-up: measured, a traced
 * socket()+close() took 2.4x as long with a wake-up per event, 1.3x with one per 4 KiB.
 * So wake only once a batch is queued; the reader also polls with a timeout. */
static __always_inline __u64 wakeup_flag(void)
{
	struct socktrace_config *c = get_config();

	if (!c || !c->wakeup_bytes)
		return 0;
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= c->wakeup_bytes
		       ? BPF_RB_FORCE_WAKEUP
		       : BPF_RB_NO_WAKEUP;
}

/* The struct sock behind fd in task's fd table, or NULL if fd is not a socket. */
static __always_inline struct sock *fd_sock(struct task_struct *task, int fd)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **arr;
	struct file *file = NULL;
	struct socket *sock;
	unsigned short mode;

	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	arr = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &arr[fd]) || !file)
		return NULL;
	/* Another thread may have closed and reused the fd since the call returned. */
	mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	return BPF_CORE_READ(sock, sk);
}

static __always_inline __u32 sock_netns(struct sock *sk)
{
	return sk ? BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) : 0;
}

/* Fill family/type/protocol from a socket the kernel made (accept knows no arguments). */
static __always_inline void fill_from_sock(struct socktrace_event *e, struct sock *sk)
{
	if (!sk)
		return;
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->type = BPF_CORE_READ(sk, sk_type);
	e->protocol = BPF_CORE_READ(sk, sk_protocol);
}

/* Decoded arguments of one socket-making call, whatever ABI it came through. */
struct call_args {
	__u32 call;
	__u32 flags;
	long family, type, protocol;
	long listen_fd;      /* accept, accept4 */
	unsigned long sv;    /* socketpair: user address of int sv[2] */
};

static __always_inline int decode_socketcall(struct pt_regs *regs, struct call_args *a)
{
	__u32 u[4] = {};
	long call = BPF_CORE_READ(regs, bx);
	unsigned long uargs = BPF_CORE_READ(regs, cx) & 0xffffffffUL;

	/* The arguments are in user memory; the call has returned, they are still there. */
	if (bpf_probe_read_user(u, sizeof(u), (void *)uargs))
		__builtin_memset(u, 0xff, sizeof(u));
	a->flags = SOCKTRACE_F_IA32;
	switch (call) {
	case SYS_SOCKET:
		a->call = SOCKTRACE_SOCKET;
		break;
	case SYS_SOCKETPAIR:
		a->call = SOCKTRACE_SOCKETPAIR;
		a->sv = u[3];
		break;
	case SYS_ACCEPT:
		a->call = SOCKTRACE_ACCEPT;
		a->listen_fd = (int)u[0];
		return 0;
	case SYS_ACCEPT4:
		a->call = SOCKTRACE_ACCEPT4;
		a->listen_fd = (int)u[0];
		return 0;
	default:
		return -1;
	}
	a->family = (int)u[0];
	a->type = (int)u[1];
	a->protocol = (int)u[2];
	return 0;
}

/* Which call this is, and its arguments; -1 for every other syscall (the common case,
 * so the cheap test on the number comes first). */
static __always_inline int decode(struct pt_regs *regs, long nr, struct task_struct *task,
				  struct call_args *a)
{
	int compat;

	switch (nr) {
	case NR_SOCKET:
	case NR_SOCKETPAIR:
	case NR_ACCEPT:
	case NR_ACCEPT4:
	case NR_MSOCKET:
	case NR32_SOCKETCALL:
	case NR32_SOCKET:
	case NR32_SOCKETPAIR:
	case NR32_ACCEPT4:
		break;
	default:
		return -1;
	}
	/* 102 is getuid on x86_64 and 359.. are unused there: only an int 0x80 call is i386. */
	compat = BPF_CORE_READ(task, thread_info.status) & TS_COMPAT;
	if (compat) {
		if (nr == NR32_SOCKETCALL)
			return decode_socketcall(regs, a);
		a->flags = SOCKTRACE_F_IA32;
		a->family = (int)BPF_CORE_READ(regs, bx);
		a->type = (int)BPF_CORE_READ(regs, cx);
		a->protocol = (int)BPF_CORE_READ(regs, dx);
		switch (nr) {
		case NR32_SOCKET:
			a->call = SOCKTRACE_SOCKET;
			return 0;
		case NR32_SOCKETPAIR:
			a->call = SOCKTRACE_SOCKETPAIR;
			a->sv = BPF_CORE_READ(regs, si) & 0xffffffffUL;
			return 0;
		case NR32_ACCEPT4:
			a->call = SOCKTRACE_ACCEPT4;
			a->listen_fd = a->family;
			return 0;
		}
		return -1;
	}
	switch (nr) {
	case NR_SOCKET:
		a->call = SOCKTRACE_SOCKET;
		break;
	case NR_SOCKETPAIR:
		a->call = SOCKTRACE_SOCKETPAIR;
		a->sv = BPF_CORE_READ(regs, r10);
		break;
	case NR_ACCEPT:
	case NR_ACCEPT4:
		a->call = nr == NR_ACCEPT ? SOCKTRACE_ACCEPT : SOCKTRACE_ACCEPT4;
		a->listen_fd = (int)BPF_CORE_READ(regs, di);
		return 0;
	case NR_MSOCKET:
		/* msocket(path, domain, type, protocol): one register further along. */
		a->call = SOCKTRACE_MSOCKET;
		if (BPF_CORE_READ(regs, di))
			a->flags |= SOCKTRACE_F_PATH;
		a->family = (int)BPF_CORE_READ(regs, si);
		a->type = (int)BPF_CORE_READ(regs, dx);
		a->protocol = (int)BPF_CORE_READ(regs, r10);
		return 0;
	default:
		return -1;
	}
	a->family = (int)BPF_CORE_READ(regs, di);
	a->type = (int)BPF_CORE_READ(regs, si);
	a->protocol = (int)BPF_CORE_READ(regs, dx);
	return 0;
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&drops, &zero);

	if (n)
		*n += 1;
}

/* An mstack launcher marking itself: msocket with the configured two values in its 5th
 * and 6th arguments (which the call itself ignores). */
static __always_inline void check_self_mark(struct pt_regs *regs, __u32 tgid)
{
	struct socktrace_config *c = get_config();
	__u32 one = 1;

	if (!c || !(c->self_mark[0] | c->self_mark[1]))
		return;
	if ((__u64)BPF_CORE_READ(regs, r8) == c->self_mark[0] &&
	    (__u64)BPF_CORE_READ(regs, r9) == c->self_mark[1])
		bpf_map_update_elem(&own, &tgid, &one, BPF_ANY);
}

static __always_inline int on_sys_exit(struct pt_regs *regs, long nr, long ret)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct call_args a = {};
	struct socktrace_event *e;
	struct sock *sk = NULL;
	__u64 pid_tgid;
	__u32 tgid;

	if (decode(regs, nr, task, &a))
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	tgid = pid_tgid >> 32;
	if (a.call == SOCKTRACE_MSOCKET && !(a.flags & SOCKTRACE_F_IA32))
		check_self_mark(regs, tgid);
	if (!is_traced(tgid))
		return 0;
	if (bpf_map_lookup_elem(&own, &tgid))
		a.flags |= SOCKTRACE_F_MSTACK;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->call = a.call;
	e->flags = a.flags;
	e->family = a.family;
	e->type = a.type;
	e->protocol = a.protocol;
	e->ret = ret;
	e->fd[0] = -1;
	e->fd[1] = -1;
	e->_pad = 0;
	e->caller_netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	bpf_get_current_comm(e->comm, sizeof(e->comm));

	if (a.call == SOCKTRACE_SOCKETPAIR) {
		if (ret == 0 && bpf_probe_read_user(e->fd, sizeof(e->fd), (void *)a.sv)) {
			e->fd[0] = -1;
			e->fd[1] = -1;
		}
		sk = fd_sock(task, e->fd[0]);
	} else if (a.call == SOCKTRACE_ACCEPT || a.call == SOCKTRACE_ACCEPT4) {
		e->family = -1;
		if (ret >= 0) {
			e->fd[0] = ret;
			sk = fd_sock(task, ret);
		}
		/* A failed accept: describe the listening socket it was called on. */
		fill_from_sock(e, sk ? sk : fd_sock(task, a.listen_fd));
	} else if (ret >= 0 && (a.call != SOCKTRACE_MSOCKET || (a.type & SOCK_TYPE_MASK))) {
		/* msocket with SOCK_DEFAULT (type 0) returns 0, which is not a new fd. */
		e->fd[0] = ret;
		sk = fd_sock(task, ret);
	}
	e->sock_netns = sock_netns(sk);
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

/* The process tree: a traced parent's children are traced. Threads share the tgid. */
static __always_inline int on_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	__u32 one = 1;

	if (ptgid == ctgid)
		return 0;
	if (filter_on() && bpf_map_lookup_elem(&traced, &ptgid))
		bpf_map_update_elem(&traced, &ctgid, &one, BPF_ANY);
	if (bpf_map_lookup_elem(&own, &ptgid))
		bpf_map_update_elem(&own, &ctgid, &one, BPF_ANY);
	return 0;
}

/* A process that execs is no longer mstack's: the launcher has become COMMAND. */
static __always_inline int on_exec(struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	bpf_map_delete_elem(&own, &tgid);
	return 0;
}

/* Forget a process once its last thread exits, so a reused pid is not traced. */
static __always_inline int on_exit(struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	/* do_exit() drops signal->live before this tracepoint: 0 means the group is dead. */
	if (BPF_CORE_READ(task, signal, live.counter) == 0) {
		bpf_map_delete_elem(&traced, &tgid);
		bpf_map_delete_elem(&own, &tgid);
	}
	return 0;
}

/* Every syscall of every process passes here: keep the path to "not ours" short. tp_btf
 * arguments are typed kernel pointers, so orig_ax is a plain load, not a helper call. */
SEC("tp_btf/sys_exit")
int BPF_PROG(btf_sys_exit, struct pt_regs *regs, long ret)
{
	return on_sys_exit(regs, regs->orig_ax, ret);
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
int BPF_PROG(btf_exec, struct task_struct *task, int old_pid, void *bprm)
{
	return on_exec(task);
}

/* The same four through raw tracepoints, for kernels whose tp_btf attach fails. */
SEC("raw_tp/sys_exit")
int BPF_PROG(raw_sys_exit, struct pt_regs *regs, long ret)
{
	return on_sys_exit(regs, BPF_CORE_READ(regs, orig_ax), ret);
}

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
int BPF_PROG(raw_exec, struct task_struct *task, int old_pid, void *bprm)
{
	return on_exec(task);
}
