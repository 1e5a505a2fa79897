/*
 * A socket made in a caller's cgroup (v2) without a fork: supervisor/visitor.py says why a
 * process of that cgroup must create it, and decides everything; this module only runs the
 * child.
 *
 * The child is born in the caller's cgroup (clone3 CLONE_INTO_CGROUP: no migration, which
 * takes cgroup_threadgroup_rwsem for writing) and shares our memory (CLONE_VM: no page
 * tables copied). Measured here: a fork of the supervisor and a write to cgroup.procs cost
 * about 1.9 ms per socket; this child about 30 us. It has its own copy of our descriptors
 * (no CLONE_FILES), so what it makes is ours only once it has sent it (SCM_RIGHTS): a child
 * stopped half-way (a frozen cgroup) and killed takes its sockets with it. It starts with
 * every signal blocked, runs on a stack of its own and only makes raw system calls (no libc:
 * errno and every other thread-local lives in the memory of the thread that called us), and
 * it never returns to Python. The calling thread waits for its answer up to `timeout_ms`,
 * then kills it and reaps it in every case before its stack is unmapped.
 *
 * x86_64 only (the clone3 trampoline); elsewhere, and on kernels without clone3 or
 * CLONE_INTO_CGROUP (5.7), `make` fails with ENOSYS or EINVAL and visitor.py forks.
 *
 * clone(2) (clone3, CLONE_INTO_CGROUP), setns(2), capset(2), unix(7) (SCM_RIGHTS).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/capability.h>
#include <linux/sched.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* Where the child stopped: visitor.py names the step in its error. */
enum step {
	STEP_CLONE = 1, STEP_NETNS, STEP_SETGROUPS, STEP_SETRESGID, STEP_SETRESUID,
	STEP_CAPSET, STEP_SOCKET, STEP_SEND, STEP_TIMEOUT, STEP_ANSWER,
};

enum mode { AS_US, AS_FS_USER, AS_TARGET };

struct visit {
	int channel;  /* the child's end of the socketpair */
	int netns;  /* -1: stay */
	int family, type, protocol, pair;
	int mode;
	unsigned int ids[6];  /* AS_FS_USER: fsuid, fsgid; AS_TARGET: gids r, e, s, uids r, e, s */
	const unsigned int *groups;
	size_t ngroups;
	uint64_t cap_eff, cap_prm;
};

#if defined(__x86_64__)
#define CHILD_STACK (64 * 1024)
#define GUARD 4096

static long raw(long nr, long a, long b, long c, long d, long e)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			 : "rcx", "r11", "memory");
	return ret;
}

/* What the child sends: {errno, step} and, on success, the sockets (SCM_RIGHTS). */
struct message {
	int msg[2];
	struct iovec iov;
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(2 * sizeof(int))];
	} ctl;
	struct msghdr mh;
};

static void message_init(struct message *m)
{
	memset(m, 0, sizeof *m);
	m->iov.iov_base = m->msg;
	m->iov.iov_len = sizeof m->msg;
	m->mh.msg_iov = &m->iov;
	m->mh.msg_iovlen = 1;
	m->mh.msg_control = m->ctl.buf;
	m->mh.msg_controllen = sizeof m->ctl.buf;
}

static void answer(const struct visit *v, int err, int step, const int *fds, int nfds)
{
	struct message m;

	message_init(&m);
	m.msg[0] = err;
	m.msg[1] = step;
	if (nfds) {
		m.mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		m.ctl.h.cmsg_level = SOL_SOCKET;
		m.ctl.h.cmsg_type = SCM_RIGHTS;
		m.ctl.h.cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(&m.ctl.h), fds, nfds * sizeof(int));
	} else {
		m.mh.msg_control = NULL;
		m.mh.msg_controllen = 0;
	}
	raw(SYS_sendmsg, v->channel, (long)&m.mh, MSG_NOSIGNAL, 0, 0);
}

static int failed(const struct visit *v, long ret, int step)
{
	answer(v, (int)-ret, step, NULL, 0);
	return 0;
}

/* The child, on its own stack: enter the stack, take the caller's ids, make, send. */
static int child(void *arg)
{
	const struct visit *v = arg;
	struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct caps[2];
	int fds[2] = { -1, -1 };
	long r;

	if (v->netns >= 0 && (r = raw(SYS_setns, v->netns, CLONE_NEWNET, 0, 0, 0)) < 0)
		return failed(v, r, STEP_NETNS);
	if (v->mode == AS_FS_USER) {  /* they return the old ids, never an error */
		raw(SYS_setfsuid, v->ids[0], 0, 0, 0, 0);
		raw(SYS_setfsgid, v->ids[1], 0, 0, 0, 0);
	} else if (v->mode == AS_TARGET) {
		if ((r = raw(SYS_setgroups, (long)v->ngroups, (long)v->groups, 0, 0, 0)) < 0)
			return failed(v, r, STEP_SETGROUPS);
		if ((r = raw(SYS_setresgid, v->ids[0], v->ids[1], v->ids[2], 0, 0)) < 0)
			return failed(v, r, STEP_SETRESGID);
		if ((r = raw(SYS_setresuid, v->ids[3], v->ids[4], v->ids[5], 0, 0)) < 0)
			return failed(v, r, STEP_SETRESUID);
		memset(caps, 0, sizeof caps);
		caps[0].effective = (uint32_t)v->cap_eff;
		caps[1].effective = (uint32_t)(v->cap_eff >> 32);
		caps[0].permitted = (uint32_t)v->cap_prm;
		caps[1].permitted = (uint32_t)(v->cap_prm >> 32);
		if ((r = raw(SYS_capset, (long)&header, (long)caps, 0, 0, 0)) < 0)
			return failed(v, r, STEP_CAPSET);
	}
	if (v->pair)
		r = raw(SYS_socketpair, v->family, v->type, v->protocol, (long)fds, 0);
	else
		r = fds[0] = (int)raw(SYS_socket, v->family, v->type, v->protocol, 0, 0);
	if (r < 0)
		return failed(v, r, STEP_SOCKET);
	answer(v, 0, 0, fds, v->pair ? 2 : 1);
	return 0;
}

/* clone3 with a function to run on the new stack: the child never returns from here. */
static long clone3_run(struct clone_args *args, int (*fn)(void *), void *arg)
{
	register long rax __asm__("rax") = SYS_clone3;
	register long rdi __asm__("rdi") = (long)args;
	register long rsi __asm__("rsi") = sizeof *args;
	register long r12 __asm__("r12") = (long)fn;
	register long r13 __asm__("r13") = (long)arg;

	__asm__ volatile("syscall\n\t"
			 "test %%rax, %%rax\n\t"
			 "jnz 1f\n\t"
			 "xor %%ebp, %%ebp\n\t"  /* the child: on its own, 16-byte aligned stack */
			 "mov %%r13, %%rdi\n\t"
			 "call *%%r12\n\t"
			 "mov %%eax, %%edi\n\t"
			 "mov %[exit], %%eax\n\t"
			 "syscall\n\t"
			 "hlt\n\t"
			 "1:\n\t"
			 : "+r"(rax)
			 : "r"(rdi), "r"(rsi), "r"(r12), "r"(r13), [exit] "i"(SYS_exit)
			 : "rcx", "r11", "memory");
	return rax;
}

/* Receive the child's answer on `ours` within timeout_ms; the sockets go to fds. */
static void receive(int ours, int timeout_ms, int *err, int *step, int *fds)
{
	struct message m;
	struct pollfd p = { ours, POLLIN, 0 };
	struct cmsghdr *c;
	struct timespec now, end;
	ssize_t n;
	size_t len;
	int got, left = timeout_ms;

	clock_gettime(CLOCK_MONOTONIC, &end);
	end.tv_sec += timeout_ms / 1000;
	end.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	while ((got = poll(&p, 1, left)) < 0 && errno == EINTR) {  /* a signal for this thread */
		clock_gettime(CLOCK_MONOTONIC, &now);
		left = (int)((end.tv_sec - now.tv_sec) * 1000 + (end.tv_nsec - now.tv_nsec) / 1000000L);
		if (left < 0)
			left = 0;
	}
	if (got <= 0) {
		*err = got < 0 ? errno : EAGAIN;
		*step = STEP_TIMEOUT;
		return;
	}
	message_init(&m);
	n = recvmsg(ours, &m.mh, MSG_CMSG_CLOEXEC);
	for (c = n >= 0 ? CMSG_FIRSTHDR(&m.mh) : NULL; c; c = CMSG_NXTHDR(&m.mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			len = c->cmsg_len - CMSG_LEN(0);
			memcpy(fds, CMSG_DATA(c), len < 2 * sizeof(int) ? len : 2 * sizeof(int));
		}
	if (n != (ssize_t)sizeof m.msg || (m.mh.msg_flags & MSG_CTRUNC)) {
		*err = n < 0 ? errno : EPROTO;  /* 0: the child died without a word */
		*step = STEP_ANSWER;
		return;
	}
	*err = m.msg[0];
	*step = m.msg[1];
}

/* This thread's child stack (one child at a time, reaped before we return), with a guard
 * page below it; unmapped when the thread ends. */
static pthread_key_t stack_key;
static pthread_once_t stack_once = PTHREAD_ONCE_INIT;

static void stack_free(void *stack)
{
	munmap(stack, GUARD + CHILD_STACK);
}

static void stack_key_make(void)
{
	pthread_key_create(&stack_key, stack_free);
}

static char *thread_stack(void)
{
	char *stack;

	pthread_once(&stack_once, stack_key_make);
	stack = pthread_getspecific(stack_key);
	if (stack)
		return stack;
	stack = mmap(NULL, GUARD + CHILD_STACK, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (stack == MAP_FAILED)
		return NULL;
	if (mprotect(stack, GUARD, PROT_NONE) < 0 || pthread_setspecific(stack_key, stack) != 0) {
		munmap(stack, GUARD + CHILD_STACK);
		return NULL;
	}
	return stack;
}

/* Narrow this thread to the CPU it runs on (what it may run on is kept in `was`): a child
 * then starts here instead of waking an idle CPU. 0: not narrowed. */
static int pin_here(cpu_set_t *was)
{
	cpu_set_t here;
	int cpu = sched_getcpu();

	if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof *was, was) < 0 ||
	    !CPU_ISSET(cpu, was) || CPU_COUNT(was) < 2)
		return 0;
	CPU_ZERO(&here);
	CPU_SET(cpu, &here);
	return sched_setaffinity(0, sizeof here, &here) == 0;
}

static void visit(struct visit *v, int cgroup, int timeout_ms, int *err, int *step, int *fds)
{
	int pair[2], pidfd = -1;
	sigset_t all, old;
	cpu_set_t was;
	char *stack;
	long pid;
	int pinned;
	siginfo_t info;
	struct clone_args args;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
		*err = errno;
		*step = STEP_CLONE;
		return;
	}
	stack = thread_stack();
	if (!stack) {
		*err = errno;
		*step = STEP_CLONE;
		close(pair[0]);
		close(pair[1]);
		return;
	}
	v->channel = pair[1];
	memset(&args, 0, sizeof args);
	args.flags = CLONE_VM | CLONE_PIDFD | CLONE_INTO_CGROUP;
	args.pidfd = (uint64_t)(uintptr_t)&pidfd;
	args.exit_signal = 0;  /* no SIGCHLD: nobody else waits for it */
	args.stack = (uint64_t)(uintptr_t)(stack + GUARD);
	args.stack_size = CHILD_STACK;
	args.cgroup = (uint64_t)cgroup;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);  /* the child starts with every signal blocked */
	pinned = pin_here(&was);  /* the child starts on our CPU, where we then sleep */
	pid = clone3_run(&args, child, v);
	if (pinned)
		sched_setaffinity(0, sizeof was, &was);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	close(pair[1]);  /* the child's copy stays open in the child only */
	if (pid < 0) {
		*err = (int)-pid;
		*step = STEP_CLONE;
	} else {
		receive(pair[0], timeout_ms, err, step, fds);
		/* done or stuck (a frozen task dies too); reaped before its stack goes */
		syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
		while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED | __WALL) < 0 &&
		       errno == EINTR)
			;
		close(pidfd);
	}
	close(pair[0]);
}
#endif

PyDoc_STRVAR(make_doc,
"make(cgroup, netns, family, type, protocol, pair, mode, ids, groups, cap_eff, cap_prm,\n"
"     timeout_ms) -> (errno, step, fd, fd)\n"
"\n"
"A socket (or pair) made by a child born in cgroup directory `cgroup`, in network\n"
"namespace `netns` (-1: ours; never one owned by another user namespace: setns(2) does not\n"
"let a process that shares its memory join one) and with the credentials `mode` says\n"
"(0 ours, 1 filesystem ids `ids`[:2], 2 `ids` = gids r, e, s, uids r, e, s, `groups` as\n"
"u32 array, the capability sets). errno 0: the fds (-1 where none); else where it failed.");

static PyObject *make(PyObject *self, PyObject *args)
{
	struct visit v;
	int cgroup, timeout_ms, err = ENOSYS, step = STEP_CLONE, fds[2] = { -1, -1 };
	const char *groups;
	Py_ssize_t groups_len;
	unsigned long long cap_eff, cap_prm;

	(void)self;
	memset(&v, 0, sizeof v);
	if (!PyArg_ParseTuple(args, "iiiiipi(IIIIII)y#KKi", &cgroup, &v.netns,
			      &v.family, &v.type, &v.protocol, &v.pair, &v.mode, &v.ids[0],
			      &v.ids[1], &v.ids[2], &v.ids[3], &v.ids[4], &v.ids[5], &groups,
			      &groups_len, &cap_eff, &cap_prm, &timeout_ms))
		return NULL;
	v.groups = (const unsigned int *)groups;
	v.ngroups = (size_t)groups_len / sizeof(unsigned int);
	v.cap_eff = cap_eff;
	v.cap_prm = cap_prm;
#if defined(__x86_64__)
	Py_BEGIN_ALLOW_THREADS
	visit(&v, cgroup, timeout_ms, &err, &step, fds);
	Py_END_ALLOW_THREADS
#else
	(void)cgroup;
	(void)timeout_ms;
#endif
	return Py_BuildValue("(iiii)", err, step, fds[0], fds[1]);
}

static PyMethodDef methods[] = {
	{ "make", make, METH_VARARGS, make_doc },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_visit",
	"Sockets made in a caller's cgroup by a child that shares our memory (visitor.py).", -1,
	methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__visit(void)
{
	return PyModule_Create(&module);
}
