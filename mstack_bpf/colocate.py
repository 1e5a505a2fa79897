"""Injecting a socket with the supervisor and its caller on one CPU.

A redirected ``socket()`` is a round trip between two processes, and on an idle machine the
scheduler spreads them over two CPUs: every wake-up then lands on an idle CPU, which in a VM
costs a halted vCPU's wake-up (measured here: the round trip takes 60 µs spread, 27 µs on one
CPU). The listener's synchronous mode (``SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP``) keeps the
notification and the reply on the CPU that sent them, but ``SECCOMP_IOCTL_NOTIF_ADDFD``
wakes the caller with an ordinary wake-up and then waits for it: the caller moves to an idle
CPU, and so does the supervisor after it.

For a caller that makes sockets back to back, this module keeps the round trip on the
supervisor's CPU:

1. the supervisor pins itself to the CPU it runs on, for as long as that thread's calls keep
   coming (a call from another thread unpins it);
2. if the caller may run on every online CPU, it narrows the caller thread's affinity to
   that CPU, installs the socket with ADDFD *without* SEND (the caller wakes here, installs
   the fd and waits again), gives the caller back "every CPU", and only then completes the
   call with SEND, whose synchronous wake-up resumes the caller on this CPU.

The caller's affinity is therefore narrowed only while it is inside its ``socket()`` call and
never seen by the caller itself. Between ADDFD and SEND the caller can only be killed, not
interrupted: the listener waits killably once a call is received
(``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV``, which every kernel with the synchronous mode has),
so the installed fd can never be left behind in a caller that went on without it.
"""

from __future__ import annotations

import errno
import logging

from mstack_bpf.linux import sched
from mstack_bpf.linux._ffi import SyscallError
from mstack_bpf.linux.seccomp import Listener

log = logging.getLogger("mstack.supervisor")


class Colocator:
    """Injects sockets through one listener; on one CPU with a caller that repeats."""

    def __init__(self, listener: Listener, enabled: bool) -> None:
        self.listener = listener
        self._own = sched.get_affinity(0)
        self._online = sched.online_cpus()
        #: more than one CPU to choose from, and the synchronous mode is on
        self.enabled = enabled and len(self._own) > 1
        self.pinned: int | None = None  # the CPU the supervisor is pinned to
        self._pinned_set = self._own
        self._last_tid = 0

    def inject(self, nid: int, tid: int, fd: int, cloexec: bool) -> int:
        """Install ``fd`` in the caller as its call's result; the fd number there."""
        here = self._here(tid)
        if here is not None:
            try:
                theirs = sched.get_affinity(tid)
            except OSError:
                theirs = None  # gone: ADDFD says so (ENOENT)
            # Only a caller free to run on every online CPU (one that set no affinity, the
            # common case) is moved: its affinity is then restored as "every CPU", which is
            # what the kernel keeps for a thread that never set one (a snapshot would stop it
            # from getting CPUs that come online or join its cpuset later). A caller we may
            # not move (EPERM: it changed its uid) or that has gone is injected as usual.
            if theirs == self._online and _set(tid, here):
                try:
                    newfd = self.listener.addfd(nid, fd, cloexec, send=False)
                finally:
                    _restore(tid, sched.EVERY_CPU)
                self._complete(nid, newfd)
                return newfd
        return self.listener.addfd(nid, fd, cloexec)

    def _complete(self, nid: int, newfd: int) -> None:
        """SEND after ADDFD: the fd is installed, so the call must succeed. SEND takes the
        listener's lock interruptibly (EINTR: try again); ENOENT: the caller was killed."""
        while True:
            try:
                self.listener.send(nid, val=newfd)
                return
            except SyscallError as e:
                if e.errno == errno.ENOENT:
                    return
                if e.errno != errno.EINTR:
                    log.error("cannot complete call %d with fd %d: %s", nid, newfd, e)
                    return

    def _here(self, tid: int) -> sched.CpuSet | None:
        """The CPU to meet ``tid`` on, or None: only a thread that called last time too
        (a burst of calls), so that callers spread over CPUs are not gathered on one."""
        repeat = tid == self._last_tid
        self._last_tid = tid
        if repeat and self.pinned is not None:
            return self._pinned_set
        if not (self.enabled and repeat):
            if self.pinned is not None:  # another caller: let the scheduler place us again
                self.pinned = None
                try:
                    sched.set_affinity(0, self._own)
                except OSError as e:  # a cpuset changed under us: the kernel placed us
                    log.debug("cannot unpin the supervisor: %s", e)
            return None
        cpu = sched.current_cpu()
        self._pinned_set = sched.CpuSet.only(cpu)
        if not _set(0, self._pinned_set):
            return None
        self.pinned = cpu
        return self._pinned_set


def _set(tid: int, cpus: sched.CpuSet) -> bool:
    try:
        sched.set_affinity(tid, cpus)
    except OSError as e:
        log.debug("cannot set the affinity of thread %d: %s", tid, e)
        return False
    return True


def _restore(tid: int, cpus: sched.CpuSet) -> None:
    try:
        sched.set_affinity(tid, cpus)
    except OSError as e:
        if e.errno != errno.ESRCH:  # gone: nothing to restore
            log.warning("could not restore the affinity of thread %d: %s", tid, e)
