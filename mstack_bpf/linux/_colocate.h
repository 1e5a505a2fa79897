/*
 * Injecting a socket into a caller, shared by _colocate.c and _fastpath.c: plainly (ADDFD
 * with SEND), or narrowed to the supervisor's CPU for the length of the install
 * (supervisor/colocate.py says why and decides when). Failures are returned as errno values.
 * sched_setaffinity(2), seccomp_unotify(2): SECCOMP_IOCTL_NOTIF_ADDFD, _SEND.
 */
#ifndef MSTACK_COLOCATE_H
#define MSTACK_COLOCATE_H

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/seccomp.h>

/* 8192 CPUs, the largest NR_CPUS on x86_64: as an affinity, "every CPU" (the kernel
 * intersects it with the cpuset and the online CPUs, now and as they change) */
#define MASK_BYTES 1024

/* The fd number in the caller (-1: not installed), and the errno (0: none) of ADDFD, of
 * giving the caller its CPUs back, and of SEND. */
struct injected {
	int fd, addfd_err, restore_err, send_err;
};

/* Whether thread tid may run on exactly the CPUs in `online` (trailing zero bytes trimmed,
 * as sched.CpuSet keeps them). Unreadable (gone, or not ours to read): no. */
static inline int runs_on_exactly(int tid, const char *online, Py_ssize_t online_len)
{
	unsigned char mask[MASK_BYTES];
	long size = syscall(SYS_sched_getaffinity, tid, sizeof mask, mask);

	if (size <= 0)
		return 0;
	while (size > 0 && mask[size - 1] == 0)
		size--;
	return size == online_len && memcmp(mask, online, (size_t)size) == 0;
}

/* SEND the installed fd: the call must succeed. SEND takes the listener's lock
 * interruptibly (EINTR: again); ENOENT: the caller was killed. */
static inline int send_fd(int listener, unsigned long long notif_id, int fd)
{
	struct seccomp_notif_resp resp = { .id = notif_id, .val = fd };

	while (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0) {
		if (errno != EINTR)
			return errno;
	}
	return 0;
}

/* ADDFD with SEND: installs and completes at once. EINTR: nothing was installed, again. */
static inline struct injected inject(int listener, unsigned long long notif_id, int srcfd,
				     int cloexec)
{
	struct seccomp_notif_addfd addfd = {
		.id = notif_id,
		.flags = SECCOMP_ADDFD_FLAG_SEND,
		.srcfd = (__u32)srcfd,
		.newfd_flags = cloexec ? O_CLOEXEC : 0,
	};
	struct injected done = { -1, 0, 0, 0 };

	do
		done.fd = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
	while (done.fd < 0 && errno == EINTR);
	if (done.fd < 0)
		done.addfd_err = errno;
	return done;
}

/* If thread tid may run on exactly the CPUs `online` and lets us narrow it to `cpus`: ADDFD
 * without SEND, give it every CPU back, then SEND the installed fd. Returns 0 if the thread
 * was not narrowed (nothing done: inject as usual), else 1 with *done filled in. Call without
 * the GIL. */
static inline int inject_narrowed(int listener, unsigned long long notif_id, int tid, int srcfd,
				  int cloexec, const char *cpus, Py_ssize_t cpus_len,
				  const char *online, Py_ssize_t online_len, struct injected *done)
{
	static unsigned char every_cpu[MASK_BYTES];
	struct seccomp_notif_addfd addfd = {
		.id = notif_id,
		.srcfd = (__u32)srcfd,
		.newfd_flags = cloexec ? O_CLOEXEC : 0,
	};

	if (!runs_on_exactly(tid, online, online_len) ||
	    syscall(SYS_sched_setaffinity, tid, (size_t)cpus_len, cpus) != 0)
		return 0;
	if (every_cpu[0] == 0)
		memset(every_cpu, 0xff, sizeof every_cpu);
	*done = (struct injected){ -1, 0, 0, 0 };
	/* EINTR (the listener's lock, or the wait, interrupted): nothing was installed */
	do
		done->fd = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
	while (done->fd < 0 && errno == EINTR);
	if (done->fd < 0)
		done->addfd_err = errno;
	if (syscall(SYS_sched_setaffinity, tid, sizeof every_cpu, every_cpu) != 0)
		done->restore_err = errno;
	if (done->fd >= 0)
		done->send_err = send_fd(listener, notif_id, done->fd);
	return 1;
}

#endif
