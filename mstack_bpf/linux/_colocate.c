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

#include "_colocate.h"

PyDoc_STRVAR(narrowed_addfd_doc,
"narrowed_addfd(listener, notif_id, tid, srcfd, cloexec, cpus, online)\n"
"\n"
"If thread tid may run on exactly the CPUs `online` and lets us narrow it to `cpus`:\n"
"ADDFD without SEND, give it every CPU back, then SEND the installed fd (again after\n"
"EINTR, as is ADDFD). Returns (fd or -1, errno of ADDFD, of the restore, of SEND), 0\n"
"for success; None if the thread was not narrowed (nothing done: inject as usual).");

static PyObject *narrowed_addfd(PyObject *self, PyObject *args)
{
	int listener, tid, srcfd, cloexec, narrowed;
	unsigned long long notif_id;
	const char *cpus, *online;
	Py_ssize_t cpus_len, online_len;
	struct injected done;

	(void)self;
	if (!PyArg_ParseTuple(args, "iKiipy#y#", &listener, &notif_id, &tid, &srcfd, &cloexec,
			      &cpus, &cpus_len, &online, &online_len))
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	narrowed = inject_narrowed(listener, notif_id, tid, srcfd, cloexec, cpus, cpus_len, online,
				   online_len, &done);
	Py_END_ALLOW_THREADS
	if (!narrowed)
		Py_RETURN_NONE;
	return Py_BuildValue("(iiii)", done.fd, done.addfd_err, done.restore_err, done.send_err);
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
	return PyModule_Create(&module);
}
