"""The supervisor's descriptors for what a tree makes it hold for good.

Every namespace a tree names in msocket and every distinct default table it sets (their
markers) is a descriptor the supervisor keeps until the tree is gone. They are bounded so
that the calls that matter — a socket made and injected, a status file read — always find a
free descriptor: with ``RLIMIT_NOFILE`` 1024, naming 1,014 namespaces used to leave every
later ``socket()`` of the whole tree with EMFILE. What a tree may still make the supervisor
hold is what its limit leaves after the descriptors open now and :data:`RESERVE`.
"""

from __future__ import annotations

import errno
import logging
import os
import resource

log = logging.getLogger("mstack.supervisor")

#: the supervisor's caches (status files, pidfds, interface-ioctl sockets, cgroup directories: 64
#: each), the slow lane, and calls in flight
RESERVE = 384


class FdBudget:
    """How many more descriptors may be kept for good (unbounded unless made with
    :meth:`of_this_process`)."""

    def __init__(self, left: int = 1 << 62, limit: int = 0) -> None:
        self.left, self.limit = left, limit
        self._told = False

    @classmethod
    def of_this_process(cls, reserve: int = RESERVE) -> FdBudget:
        """What ``RLIMIT_NOFILE`` leaves after the descriptors open now and ``reserve``."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        in_use = len(os.listdir("/proc/self/fd"))
        return cls(max(limit - in_use - reserve, 0), limit)

    def take(self, what: str) -> None:
        """Count one more descriptor kept for good; EAGAIN (saying what ran out) if none is
        left to keep."""
        if self.left <= 0:
            message = (f"supervisor: no descriptor left to keep more {what} "
                       f"(RLIMIT_NOFILE {self.limit}; raise its hard limit to allow more)")
            if not self._told:
                log.warning("%s", message)
                self._told = True
            raise OSError(errno.EAGAIN, message)
        self.left -= 1
