"""Injecting a socket with the supervisor and its caller on one CPU.

A redirected ``socket()`` is a round trip between two processes, and on an idle machine the
scheduler spreads them over two CPUs: every wake-up then lands on an idle CPU, which in a VM
costs a halted vCPU's wake-up (``make bench`` rows "redirected" and "--no-colocate",
bench/README.md). The
listener's synchronous mode (``SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP``) keeps the notification
and the reply on the CPU that sent them, but ``SECCOMP_IOCTL_NOTIF_ADDFD`` wakes the caller
with an ordinary wake-up and then waits for it: the caller moves to an idle CPU, and so does
the supervisor after it.

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

Step 2 is one call into C (:meth:`Listener.addfd_narrowed`, ``linux/_colocate.c``): five
system calls made through ctypes cost measurably more on the hot path. A caller's later
sockets, while it keeps calling, are injected the same way by the C loop itself
(``linux/_fastpath.c``, :meth:`narrowed_for`).
"""

from __future__ import annotations

import errno
import logging
import os

from mstack_bpf.linux import sched
from mstack_bpf.linux.ffi import SyscallError
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
            # Only a caller free to run on every online CPU (one that set no affinity, the
            # common case) is moved: its affinity is then restored as "every CPU", which is
            # what the kernel keeps for a thread that never set one (a snapshot would stop it
            # from getting CPUs that come online or join its cpuset later). A caller we may
            # not move (EPERM: it changed its uid) or that has gone is injected as usual.
            done = self.listener.addfd_narrowed(nid, tid, fd, cloexec, here, self._online)
            if done is not None:
                if done.restore_errno not in (0, errno.ESRCH):  # ESRCH: gone, nothing to do
                    self.restore_failed(tid, done.restore_errno)
                if done.addfd_errno:
                    raise SyscallError(done.addfd_errno, "ioctl(SECCOMP_IOCTL_NOTIF_ADDFD)")
                if done.send_errno not in (0, errno.ENOENT):  # ENOENT: the caller was killed
                    log.error("cannot complete call %d with fd %d: %s", nid, done.fd,
                              os.strerror(done.send_errno))
                return done.fd
        return self.listener.addfd(nid, fd, cloexec)

    def restore_failed(self, tid: int, err: int) -> None:
        log.warning("could not restore the affinity of thread %d: %s", tid, os.strerror(err))

    def narrowed_for(self, tid: int) -> tuple[bool, bytes, bytes] | None:
        """How the C loop (linux/_fastpath.c) injects ``tid``'s next sockets as :meth:`inject`
        would: (narrowed, to these CPUs, for a caller on exactly these); None where
        :meth:`inject` would first pin us to meet it."""
        if not self.enabled:
            return False, b"", b""
        if self.pinned is None or tid != self._last_tid:
            return None
        return True, self._pinned_set.raw, self._online.raw

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
