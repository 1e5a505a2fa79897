"""Per-process default stacks, inherited through fork and execve by the kernel itself.

A process whose table differs from the tree's root table carries a *marker*: the read end
of a pipe the supervisor installs at fd :data:`MARKER_FD` with ``ADDFD(SETFD)`` (no
close-on-exec). ``readlink(/proc/TID/fd/MARKER_FD)`` names it (``pipe:[INODE]``), and the
inode names the table. The kernel copies the fd table at fork, keeps it across execve and
shares it between threads, which is exactly the inheritance msocket(2) defines: a child keeps
the table its parent had at the moment of the fork, even after the parent changes its own
(the parent then gets a new marker) or exits.

Why a marker read back with readlink: it is one system call per lookup, where
``pidfd_open`` + ``pidfd_getfd`` + ``fstat`` are three, and walking parents through /proc is
a walk per step, racy once a parent has exited and the child was reparented; eBPF on
``sched_process_fork`` (the carrier, below) needs root, and the tables must work rootless
(the costs are the ``make bench`` row "own table", bench/README.md). While no process has
changed its table, no lookup is made at all; a thread found with a marker before is checked
with one ``kcmp(KCMP_FILE)`` against our end of that marker, cheaper than the link, before
the link is read.

A marker the supervisor cannot read is never taken for no marker: a rootless supervisor may
not look at the descriptors of a process of its own uid that made itself non-dumpable
(``prctl(PR_SET_DUMPABLE, 0)``: readlink and kcmp then fail with EACCES/EPERM), and falling
back to the root table would let it leave a nested lock. :meth:`Tables.table_for` raises
:class:`TableUnknown` instead; the supervisor then answers only what every table of the tree
would answer alike, and EACCES otherwise.

Where eBPF runs, the kernel carries the tables too (supervisor/carrier.py): a map from
thread to table number that every fork copies, asked before the marker. A process that
closes every fd (``closefrom``, Python's ``close_fds``, sudo) then keeps its table; without
eBPF (a rootless supervisor) it loses its marker and falls back to the root table. A process
whose RLIMIT_NOFILE is at most :data:`MARKER_FD` cannot carry a marker (SOCK_DEFAULT then
fails with EMFILE), with or without eBPF: the marker is what makes the call succeed.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from mstack_bpf.core.abi import MARKER_FD
from mstack_bpf.core.families import ALL_FAMILIES
from mstack_bpf.core.model import Mapping, Stack
from mstack_bpf.linux import kcmp
from mstack_bpf.supervisor.carrier import Carrier
from mstack_bpf.supervisor.fdbudget import FdBudget

log = logging.getLogger("mstack.supervisor")

MAX_TABLES = 1024

class TableUnknown(OSError):
    """The caller's marker exists or may exist, but cannot be read (EACCES)."""

    def __init__(self, tid: int) -> None:
        super().__init__(errno.EACCES, f"thread {tid}: its stack table cannot be read "
                         "(non-dumpable under a supervisor without CAP_SYS_PTRACE)")


TableKey = tuple[tuple[Stack, ...], frozenset[int]]


def table_key(mapping: Mapping) -> TableKey:
    return tuple(mapping.stack_of(f) for f in sorted(ALL_FAMILIES)), mapping.locked


class Tables:
    """The root table plus every table some process in the tree has set."""

    def __init__(self, root: Mapping, budget: FdBudget | None = None,
                 carrier: Callable[[], Carrier | None] | None = None) -> None:
        self.root = root
        self._budget = budget or FdBudget()
        self._by_marker: dict[str, Mapping] = {}
        self._markers: dict[TableKey, tuple[str, int]] = {}  # key → (link, pinned read end)
        #: every table but the root, by its number in the carrier's map
        self._numbered: list[Mapping] = []
        self._start_carrier = carrier
        self._carrier: Carrier | None = None
        #: thread → (our fd of the marker it had last time, its table), checked with kcmp
        self._seen: dict[int, tuple[int, Mapping]] = {}
        self._pid = os.getpid()

    def table_for(self, tid: int) -> Mapping:
        if not self._by_marker:
            return self.root
        if self._carrier is not None:
            number = self._carrier.table_of(tid)
            if number is not None:
                return self._numbered[number]
        seen = self._seen.get(tid)
        if seen is not None:  # one kcmp: is the marker we found there last time still there?
            try:
                if kcmp.same_file(self._pid, seen[0], tid, MARKER_FD):
                    return seen[1]
            except OSError:
                pass  # gone, or its fd closed: read the link
            del self._seen[tid]
        link = _marker_link(tid)
        if link is None:
            return self.root
        mapping = self._by_marker.get(link)
        if mapping is None:
            return self.root
        if len(self._seen) >= MAX_TABLES:
            self._seen.clear()
        self._seen[tid] = self._markers[table_key(mapping)][1], mapping
        return mapping

    def nested(self) -> bool:
        """Whether some process of the tree may have a table of its own."""
        return bool(self._by_marker)

    def candidates(self) -> list[Mapping]:
        """Every table a process of the tree can have."""
        return [self.root, *self._by_marker.values()]

    def has_foreign_fd(self, tid: int) -> bool:
        """Whether the marker's slot holds a descriptor of the target's own."""
        link = _marker_link(tid)
        return link is not None and link not in self._by_marker

    def marker_for(self, mapping: Mapping) -> int:
        """The marker fd of ``mapping`` to install in a target; it stays ours (pinned)."""
        key = table_key(mapping)
        if key not in self._markers:
            if len(self._markers) >= MAX_TABLES:
                raise OSError(errno.EAGAIN, "too many distinct default tables in this tree")
            self._budget.take("stack tables")
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            os.close(write_end)  # reads then see EOF: harmless for a program that tries
            link = os.readlink(f"/proc/self/fd/{read_end}")
            self._markers[key] = (link, read_end)
            self._by_marker[link] = mapping
            self._numbered.append(mapping)
            if self._start_carrier is not None:  # the first table of the tree: attach it
                self._carrier, self._start_carrier = self._start_carrier(), None
        return self._markers[key][1]

    def carry(self, tid: int, mapping: Mapping) -> None:
        """``tid``'s process was given ``mapping`` (its marker is in): the kernel carries it
        to the tasks it creates from now on, where eBPF runs."""
        if self._carrier is not None:
            try:
                self._carrier.carry(tid, self._numbered.index(mapping))
            except OSError as e:  # the marker still carries it
                log.warning("cannot carry the table of thread %d by eBPF: %s", tid, e)

    def close(self) -> None:
        if self._carrier is not None:
            self._carrier.close()
            self._carrier = None
        for _, fd in self._markers.values():
            os.close(fd)
        self._markers.clear()
        self._by_marker.clear()
        self._seen.clear()


def _marker_link(tid: int) -> str | None:
    """What the thread's marker slot holds; None if nothing (or the thread is gone).
    Raises :class:`TableUnknown` where procfs refuses to show it."""
    try:
        return os.readlink(f"/proc/{tid}/fd/{MARKER_FD}")
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise TableUnknown(tid) from None
        return None
