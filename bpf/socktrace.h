/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The record socktrace.bpf.c sends through its ring buffer, shared with user space.
 * mstack_bpf/trace/events.py mirrors it with ctypes; a test compares that mirror with
 * this layout as recorded in the compiled object's BTF, field by field.
 */
#ifndef MSTACK_SOCKTRACE_H
#define MSTACK_SOCKTRACE_H

#define SOCKTRACE_COMM_LEN 16
#define SOCKTRACE_EVENT_SIZE 80

/* The call that made (or failed to make) the socket. */
enum socktrace_call {
	SOCKTRACE_SOCKET = 1,
	SOCKTRACE_SOCKETPAIR = 2,
	SOCKTRACE_ACCEPT = 3,
	SOCKTRACE_ACCEPT4 = 4,
	SOCKTRACE_MSOCKET = 5, /* VUOS virtual syscall -5: msocket(path, domain, type, proto) */
};

/* Event flags. */
#define SOCKTRACE_F_IA32 0x1   /* i386 ABI (int 0x80), socket/socketcall */
#define SOCKTRACE_F_MSTACK 0x2 /* made by mstack itself (its launcher, supervisor, helpers) */
#define SOCKTRACE_F_PATH 0x4   /* msocket named a stack (path != NULL) */

struct socktrace_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 pid;          /* tgid, in the initial pid namespace */
	__u32 tid;
	__u32 ppid;         /* real parent's tgid */
	__u32 call;         /* enum socktrace_call */
	__s32 family;       /* -1 when unknown (a failed accept on a closed fd) */
	__s32 type;         /* as passed, SOCK_CLOEXEC/SOCK_NONBLOCK flags included */
	__s32 protocol;
	__s32 ret;          /* the syscall's return value: fd, 0 or -errno */
	__s32 fd[2];        /* fds made: socket/accept: fd[0]; socketpair: both; else -1 */
	__u32 sock_netns;   /* inode of the netns fd[0]'s socket lives in; 0 if none */
	__u32 caller_netns; /* inode of the calling task's netns */
	__u32 flags;        /* SOCKTRACE_F_* */
	__u32 _pad;
	char comm[SOCKTRACE_COMM_LEN];
};

/* Map `config`, key 0: set by user space after loading, before attaching. */
struct socktrace_config {
	__u32 filter;       /* 1: trace only the tgids in map `traced`; 0: every process */
	__u32 wakeup_bytes; /* wake the reader once this much is queued; 0: at every event */
	/* mstack's launcher marks itself with msocket (-5) carrying these two values in its
	 * 5th and 6th arguments (mstack_bpf/core/abi.py, SELF_MARK); 0, 0: no marking */
	__u64 self_mark[2];
};

_Static_assert(sizeof(struct socktrace_event) == SOCKTRACE_EVENT_SIZE,
	       "SOCKTRACE_EVENT_SIZE is stale");

#endif
