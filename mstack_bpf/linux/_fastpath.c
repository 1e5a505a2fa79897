/*
 * The supervisor's loop for calls whose answer is already known, in C.
 *
 * A socket call that stays in the caller's own stack (CONTINUE) or is refused (an errno) is
 * answered from its registers alone, and the supervisor remembers such answers
 * (supervisor/loop.py, `_decided`). Answering them through the Python loop costs about
 * 5 us per call on top of the kernel's round trip (`make bench`, rows "CONTINUE" and "C
 * supervisor (the bound)"): poll, RECV, the lookup, SEND, each through the interpreter.
 * Here the loop waits, receives and answers such calls without going back to Python, and
 * returns as soon as something needs it: a call it has no answer for (left in the caller's
 * notification buffer, as RECV left it), another descriptor ready, a timeout, a hang-up.
 *
 * The answers are what Python decided, handed over as a packed array (struct answer); Python
 * hands none where they could depend on more than the registers (per-process tables,
 * observers). Nothing is decided here. seccomp_unotify(2).
 *
 * A third kind of answer makes the socket: a redirect to the namespace the loop's thread is
 * in already, for the thread Python served last (struct context). It is made here only when
 * the caller carries nothing that would make it another socket than ours: its fsuid and
 * fsgid (PIDFD_GET_INFO on a pidfd of that thread, whose task must still be alive) are ours,
 * or ours make the same socket (an unprivileged supervisor), and it is in our cgroup; else
 * Python gets the call, before anything is made. The injection is the one of _colocate.c:
 * narrowed to our CPU when Python has pinned us for this caller, else ADDFD with SEND.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/seccomp.h>

#include "_colocate.h"

enum action { CONTINUE = 0, FAIL = 1, CREATE = 2 };

/* One remembered answer; mirrored by linux/seccomp.py (_ANSWER). */
struct answer {
	uint32_t arch;
	int32_t nr;
	uint64_t args[3];
	int32_t action;
	int32_t error;		/* FAIL: the errno */
	uint64_t ns;		/* CREATE: the inode of the namespace to make it in */
	int32_t family, type, protocol;	/* CREATE: the socket to make */
	int32_t pad;
};

/* What Python knows of the loop and its last caller, for CREATE; parsed from a tuple. */
struct context {
	unsigned long long ns;	/* the namespace the loop's thread is in */
	int tid, pidfd;		/* the caller Python served last, and a pidfd of it */
	int check_ids;		/* a privileged supervisor: fsuid and fsgid must be ours */
	unsigned int fsuid, fsgid;
	unsigned long long cgroup;	/* ours (0: no cgroup v2) */
	int narrow;		/* pinned for this caller: inject narrowed to `cpus` */
	const char *cpus, *online;
	Py_ssize_t cpus_len, online_len;
};

/* include/uapi/linux/pidfd.h, as of Linux 6.13 (PIDFD_INFO_SIZE_VER0) */
struct pidfd_info {
	uint64_t mask;
	uint64_t cgroupid;
	uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
	int32_t exit_code;
};
#define PIDFD_INFO_CREDS (1UL << 1)
#define PIDFD_INFO_CGROUPID (1UL << 2)
#define PIDFD_GET_INFO _IOWR(0xFF, 11, struct pidfd_info)

#define MAX_FDS 16

enum outcome {
	NOTIFICATION = 0,	/* a call for Python, in the buffer */
	OTHER_READY = 1,	/* one of the other descriptors is ready */
	TIMED_OUT = 2,
	HUNG_UP = 3,		/* the listener: every caller is gone */
	BOTH = 4,		/* a call for Python, and another descriptor is ready too */
};

static const struct answer *lookup(const struct answer *answers, Py_ssize_t count,
				   const struct seccomp_notif *notif)
{
	for (Py_ssize_t i = 0; i < count; i++) {
		const struct answer *a = &answers[i];

		if (a->nr == notif->data.nr && a->arch == notif->data.arch &&
		    a->args[0] == notif->data.args[0] && a->args[1] == notif->data.args[1] &&
		    a->args[2] == notif->data.args[2])
			return a;
	}
	return NULL;
}

/* Whether the caller's socket would be ours: the thread behind ctx->pidfd is alive, is the
 * caller (no two live threads share a tid), and carries our ids and cgroup. */
static int as_ours(const struct context *ctx, int tid)
{
	struct pidfd_info info = { .mask = PIDFD_INFO_CREDS | PIDFD_INFO_CGROUPID };

	if (tid != ctx->tid || ctx->pidfd < 0 || ioctl(ctx->pidfd, PIDFD_GET_INFO, &info) != 0 ||
	    !(info.mask & PIDFD_INFO_CREDS))
		return 0;
	if (ctx->check_ids && (info.fsuid != ctx->fsuid || info.fsgid != ctx->fsgid))
		return 0;
	/* in our cgroup v2, or neither of us in one */
	if ((info.mask & PIDFD_INFO_CGROUPID) ? info.cgroupid != ctx->cgroup : ctx->cgroup != 0)
		return 0;
	return 1;
}

/* Make the socket and install it as the call's result, or fail the call with the errno;
 * 0, or the errno of a SEND that failed otherwise than the caller being gone.
 * *restore_err: giving a narrowed caller its CPUs back failed (for Python to report). */
static int create(int listener, const struct context *ctx, const struct seccomp_notif *notif,
		  const struct answer *a, int *restore_err)
{
	struct seccomp_notif_resp resp = { .id = notif->id };
	int fd = socket(a->family, a->type | SOCK_CLOEXEC, a->protocol);

	if (fd >= 0) {
		int cloexec = (a->type & SOCK_CLOEXEC) != 0;
		struct injected done = { -1, 0, 0, 0 };

		if (!(ctx->narrow && inject_narrowed(listener, notif->id, notif->pid, fd, cloexec,
						      ctx->cpus, ctx->cpus_len, ctx->online,
						      ctx->online_len, &done)))
			done = inject(listener, notif->id, fd, cloexec);
		close(fd);
		if (done.restore_err && done.restore_err != ESRCH)
			*restore_err = done.restore_err;
		if (done.fd >= 0)	/* in, and the call completed (or the caller killed) */
			return done.send_err == ENOENT ? 0 : done.send_err;
		if (done.addfd_err == ENOENT)
			return 0;	/* the caller died or was interrupted meanwhile */
		resp.error = -(done.addfd_err ? done.addfd_err : EIO);
	} else {
		resp.error = -errno;
	}
	while (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0) {
		if (errno != EINTR)
			return errno == ENOENT ? 0 : errno;
	}
	return 0;
}

PyDoc_STRVAR(serve_doc,
"serve(listener, notif_address, others, timeout_ms, answers, context)\n"
"    -> (outcome, errno, answered, restore_errno)\n"
"\n"
"Wait on the listener and the descriptors `others`; answer every call found in `answers`\n"
"(packed struct answer), until a call without an answer is received into the struct\n"
"seccomp_notif at notif_address (outcome 0; 4: and another descriptor is ready too),\n"
"another descriptor is ready (1), timeout_ms passed with nothing (2; negative: no timeout),\n"
"or the listener hung up (3). At most one call is taken between two looks at the other\n"
"descriptors. errno is\n"
"non-zero (outcome -1) for a RECV or SEND that failed otherwise than the caller being\n"
"gone; `answered` counts the calls answered here; restore_errno is the last failure to give\n"
"a narrowed caller its CPUs back. `context`: (ns, tid, pidfd, check_ids, fsuid, fsgid,\n"
"cgroup, narrow, cpus, online), struct context.");

static PyObject *serve(PyObject *self, PyObject *args)
{
	int listener, timeout_ms, outcome = -1, err = 0, restore_err = 0;
	unsigned long long notif_address;
	PyObject *others, *context;
	Py_buffer answers;
	struct pollfd fds[MAX_FDS + 1];
	struct context ctx;
	Py_ssize_t nfds, count;
	long answered = 0;

	(void)self;
	if (!PyArg_ParseTuple(args, "iKO!iy*O!", &listener, &notif_address, &PyTuple_Type, &others,
			      &timeout_ms, &answers, &PyTuple_Type, &context))
		return NULL;
	if (!PyArg_ParseTuple(context, "KiipIIKpy#y#", &ctx.ns, &ctx.tid, &ctx.pidfd,
			      &ctx.check_ids, &ctx.fsuid, &ctx.fsgid, &ctx.cgroup, &ctx.narrow,
			      &ctx.cpus, &ctx.cpus_len, &ctx.online, &ctx.online_len)) {
		PyBuffer_Release(&answers);
		return NULL;
	}
	nfds = PyTuple_GET_SIZE(others);
	if (nfds > MAX_FDS || answers.len % (Py_ssize_t)sizeof(struct answer)) {
		PyBuffer_Release(&answers);
		PyErr_SetString(PyExc_ValueError, "too many descriptors, or a torn answer array");
		return NULL;
	}
	count = answers.len / (Py_ssize_t)sizeof(struct answer);
	fds[0] = (struct pollfd){ .fd = listener, .events = POLLIN };
	for (Py_ssize_t i = 0; i < nfds; i++) {
		int fd = (int)PyLong_AsLong(PyTuple_GET_ITEM(others, i));

		if (fd == -1 && PyErr_Occurred()) {
			PyBuffer_Release(&answers);
			return NULL;
		}
		fds[i + 1] = (struct pollfd){ .fd = fd, .events = POLLIN };
	}
	struct seccomp_notif *notif = (struct seccomp_notif *)(uintptr_t)notif_address;

	for (;;) {
		int ready;

		Py_BEGIN_ALLOW_THREADS
		for (;;) {
			int others = 0;

			ready = poll(fds, (nfds_t)nfds + 1, timeout_ms);
			if (ready <= 0)
				break;	/* timeout, or EINTR: signals are Python's */
			for (Py_ssize_t i = 1; i <= nfds; i++)
				if (fds[i].revents)
					others = 1;
			/* At most one call between two looks at the others, either way: a stream of
			 * calls must not starve them, nor a stream of events (the -v report's ring
			 * buffer, filled by calls no filter sees) the callers. */
			if (fds[0].revents & POLLIN) {
				const struct answer *a;
				struct seccomp_notif_resp resp;

				memset(notif, 0, sizeof *notif);
				if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, notif) != 0) {
					if (errno == ENOENT || errno == EINTR)
						goto next;	/* the caller went before we looked */
					err = errno;
					break;
				}
				a = lookup((const struct answer *)answers.buf, count, notif);
				if (a != NULL && a->action == CREATE) {
					if (a->ns != ctx.ns || !as_ours(&ctx, (int)notif->pid)) {
						outcome = others ? BOTH : NOTIFICATION;	/* not ours: Python's */
						break;
					}
					err = create(listener, &ctx, notif, a, &restore_err);
					if (err)
						break;
					answered++;
					goto next;
				}
				if (a == NULL) {
					outcome = others ? BOTH : NOTIFICATION;
					break;
				}
				memset(&resp, 0, sizeof resp);
				resp.id = notif->id;
				if (a->action == FAIL)
					resp.error = -a->error;
				else
					resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
				while (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0) {
					if (errno == EINTR)
						continue;
					if (errno != ENOENT)	/* ENOENT: the caller was killed */
						err = errno;
					break;
				}
				if (err)
					break;
				answered++;
			} else if (!others) {
				if (fds[0].revents & (POLLHUP | POLLERR | POLLNVAL))
					outcome = HUNG_UP;
				else
					outcome = OTHER_READY;	/* nothing we know of: Python looks */
				break;
			}
next:
			if (others) {
				outcome = OTHER_READY;
				break;
			}
		}
		if (ready < 0 && errno != EINTR)
			err = errno;
		Py_END_ALLOW_THREADS
		if (ready == 0)
			outcome = TIMED_OUT;
		if (ready < 0 && !err) {	/* a signal: let its Python handler run */
			if (PyErr_CheckSignals() < 0) {
				PyBuffer_Release(&answers);
				return NULL;
			}
			continue;
		}
		break;
	}
	PyBuffer_Release(&answers);
	return Py_BuildValue("(iili)", err ? -1 : outcome, err, answered, restore_err);
}

static PyMethodDef methods[] = {
	{ "serve", serve, METH_VARARGS, serve_doc },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_fastpath",
	"The supervisor's loop for calls whose answer is known, in C.", -1, methods,
	NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
	return PyModule_Create(&module);
}
