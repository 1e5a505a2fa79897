/*
 * The supervisor's hottest sequence in one call: install a socket in a caller whose
 * affinity is narrowed to the supervisor's CPU for the length of the install only.
 *
 * mstack_bpf/colocate.py says why (an ADDFD wake-up lands on an idle CPU otherwise) and
 * decides when; this module only runs the five system calls back to back. Done from Python
 * through ctypes they cost about 3 us more per socket() than the kernel work itself, an
 * eighth of a redirected call (bench/run.py measures both). Failures are returned as
 * errno values for the Python side to raise or log: nothing here decides or reports.
 *
 * sched_setaffinity(2), seccomp_unotify(2): SECCOMP_IOCTL_NOTIF_ADDFD, _SEND.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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
static unsigned char every_cpu[MASK_BYTES];

/* Whether thread tid may run on exactly the CPUs in `online` (trailing zero bytes trimmed,
 * as sched.CpuSet keeps them). Unreadable (gone, or not ours to read): no. */
static int runs_on_exactly(int tid, const char *online, Py_ssize_t online_len)
{
	unsigned char mask[MASK_BYTES];
	long size = syscall(SYS_sched_getaffinity, tid, sizeof mask, mask);

	if (size <= 0)
		return 0;
	while (size > 0 && mask[size - 1] == 0)
		size--;
	return size == online_len && memcmp(mask, online, (size_t)size) == 0;
}

PyDoc_STRVAR(narrowed_addfd_doc,
"narrowed_addfd(listener, notif_id, tid, srcfd, cloexec, cpus, online)\n"
"\n"
"If thread tid may run on exactly the CPUs `online` and lets us narrow it to `cpus`:\n"
"ADDFD without SEND, give it every CPU back, then SEND the installed fd (again after\n"
"EINTR, as is ADDFD). Returns (fd or -1, errno of ADDFD, of the restore, of SEND), 0\n"
"for success; None if the thread was not narrowed (nothing done: inject as usual).");

static PyObject *narrowed_addfd(PyObject *self, PyObject *args)
{
	int listener, tid, srcfd, cloexec, fd = -1, addfd_err = 0, restore_err = 0, send_err = 0;
	unsigned long long notif_id;
	const char *cpus, *online;
	Py_ssize_t cpus_len, online_len;
	int narrowed = 0;

	(void)self;
	if (!PyArg_ParseTuple(args, "iKiipy#y#", &listener, &notif_id, &tid, &srcfd, &cloexec,
			      &cpus, &cpus_len, &online, &online_len))
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	if (runs_on_exactly(tid, online, online_len) &&
	    syscall(SYS_sched_setaffinity, tid, (size_t)cpus_len, cpus) == 0) {
		struct seccomp_notif_addfd addfd = {
			.id = notif_id,
			.srcfd = (__u32)srcfd,
			.newfd_flags = cloexec ? O_CLOEXEC : 0,
		};
		narrowed = 1;
		/* EINTR (the listener's lock, or the wait, interrupted): nothing was installed */
		do
			fd = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
		while (fd < 0 && errno == EINTR);
		if (fd < 0)
			addfd_err = errno;
		if (syscall(SYS_sched_setaffinity, tid, sizeof every_cpu, every_cpu) != 0)
			restore_err = errno;
		if (fd >= 0) {
			/* The fd is in: the call must succeed. SEND takes the listener's lock
			 * interruptibly (EINTR: again); ENOENT: the caller was killed. */
			struct seccomp_notif_resp resp = { .id = notif_id, .val = fd };

			while (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0) {
				if (errno != EINTR) {
					send_err = errno;
					break;
				}
			}
		}
	}
	Py_END_ALLOW_THREADS
	if (!narrowed)
		Py_RETURN_NONE;
	return Py_BuildValue("(iiii)", fd, addfd_err, restore_err, send_err);
}

static PyMethodDef methods[] = {
	{ "narrowed_addfd", narrowed_addfd, METH_VARARGS, narrowed_addfd_doc },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_colocate",
	"The narrowed ADDFD sequence of mstack_bpf.colocate, in C.", -1, methods,
	NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__colocate(void)
{
	memset(every_cpu, 0xff, sizeof every_cpu);
	return PyModule_Create(&module);
}
