"""Sockets for a caller in another cgroup, made by a short-lived child in that cgroup.

A socket belongs to the cgroup (v2) of the task that creates it (``sk_alloc``), and nft's
``socket cgroupv2``, cgroup-BPF socket hooks and systemd's ``IPAddressDeny=`` judge it by
that. The supervisor must not join a caller's cgroup itself: whoever owns that cgroup (a
delegated subtree) could freeze or kill it there. A child made for the purpose is in the
caller's cgroup, enters the stack (its user namespace first for a rootless stack: the child
is single-threaded), takes the caller's credentials, makes the socket (or pair) and sends it
back; it is then killed and reaped whatever it is doing, and one that does not answer within
:data:`TIMEOUT` is killed too (a frozen cgroup) and the call fails with EAGAIN.

The child is born in the cgroup and shares our memory (``linux/_visit.c``: clone3 with
``CLONE_INTO_CGROUP`` and ``CLONE_VM``), about 30 us; where that cannot be (not x86_64, Linux
before 5.7) it is forked and writes itself into ``cgroup.procs``, about 2 ms here (the
supervisor's page tables are copied). Every container of mstack-agent on a cgroup v2 host
is in a cgroup of its own, so this is each of its redirected sockets. It runs in the slow
lane (the cgroup may be frozen), after one try on the loop of at most :data:`QUICK`.

Such a child is made only by a supervisor the OOM killer never picks (:func:`shield`): the
child is in the caller's memory cgroup, looks as big as the supervisor there, and the OOM
killer kills every process that shares the memory of the one it picks (linux/oom.py). A
caller whose memory cgroup ran out while its call was in flight (or one that has
``memory.oom.group``) would take the supervisor with it. Elsewhere the child is forked.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct

from mstack_bpf.linux import cgroup, creds, netns, oom, sockets
from mstack_bpf.linux.creds import Switch
from mstack_bpf.linux.ffi import SyscallError
from mstack_bpf.supervisor.helper import enter_stack

TIMEOUT = 2.0
#: how long the loop itself waits for a child that shares our memory (it answers in tens of
#: microseconds): a caller whose cgroup is frozen holds the loop this long, then the slow lane
QUICK = 0.01
#: a child that took longer than this to answer on the loop (a frozen or throttled cgroup,
#: or a busy machine; it answers in tens of microseconds) ...
SLOW = 0.001
#: ... makes the loop wait for no child for this long: a caller that freezes its cgroup
#: over and over then holds the loop at most QUICK per BACKOFF, not every time it calls
BACKOFF = 1.0
_ERRNO = struct.Struct("=i")


def shield() -> bool:
    """Make this process one the OOM killer never picks (it then never picks the children
    that share its memory either), as the supervisor and the agent do at start; False where
    that is not ours to decide (no CAP_SYS_RESOURCE: a rootless supervisor then forks)."""
    try:
        oom.set_score_adj(oom.SCORE_ADJ_MIN)
    except PermissionError:
        return False
    return True


def make(directory: int, ns_fd: int | None, family: int, sock_type: int, protocol: int,
         pair: bool, switch: Switch | None) -> list[int]:
    """The socket (or both ends of the pair), made by a child in the cgroup whose directory
    is ``directory`` and in namespace ``ns_fd`` (None: ours), under ``switch`` (the caller's
    credentials; None: ours do). Raises the child's errno."""
    made = _inside(directory, ns_fd, family, sock_type, protocol, pair, switch, TIMEOUT)
    if made is not None:
        return made
    procs = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=directory)
    try:
        return _forked(procs, ns_fd, family, sock_type, protocol, pair, switch)
    finally:
        os.close(procs)


def make_quickly(directory: int, ns_fd: int | None, family: int, sock_type: int,
                 protocol: int, pair: bool, switch: Switch | None) -> list[int] | None:
    """:func:`make` by a child that shares our memory (never a fork) and answers within
    :data:`QUICK`; None: there is no such child here. Raises the child's errno, EAGAIN when
    it did not answer in time (the child is then gone, and so is what it made)."""
    return _inside(directory, ns_fd, family, sock_type, protocol, pair, switch, QUICK)


class Patience:
    """Whether the loop may wait for a child now: not for :data:`BACKOFF` after one that
    was slow (:data:`SLOW`) or never answered. Pure: the caller reads the clock."""

    def __init__(self) -> None:
        self._until = 0.0

    def allows(self, now: float) -> bool:
        return now >= self._until

    def took(self, start: float, now: float) -> None:
        if now - start > SLOW:
            self._until = now + BACKOFF


def _inside(directory: int, ns_fd: int | None, family: int, sock_type: int, protocol: int,
            pair: bool, switch: Switch | None, timeout: float) -> list[int] | None:
    if oom.score_adj() != oom.SCORE_ADJ_MIN:  # the OOM killer could pick it, and kill us
        return None
    if ns_fd is not None and _foreign(ns_fd):  # a rootless stack: only a child of its own
        return None                            # may join its user namespace
    return cgroup.make_inside(directory, ns_fd, family, sock_type, protocol, pair, switch,
                              timeout)


#: our user namespace's inode (the supervisor never leaves it; its helpers are processes)
_own_userns: list[int] = []


def _foreign(ns_fd: int) -> bool:
    """Whether another user namespace than ours owns network namespace ``ns_fd``."""
    if not _own_userns:
        _own_userns.append(os.stat("/proc/self/ns/user").st_ino)
    userns = netns.owning_userns(ns_fd)
    try:
        return netns.ns_inode(userns) != _own_userns[0]
    finally:
        os.close(userns)


def _forked(procs: int, ns_fd: int | None, family: int, sock_type: int, protocol: int,
            pair: bool, switch: Switch | None) -> list[int]:
    """:func:`make` by a forked child that writes itself into ``procs``."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child: raw calls only, no locks
        ours.close()
        _child(theirs, procs, ns_fd, family, sock_type, protocol, pair, switch)
    theirs.close()
    try:
        if not select.select([ours], [], [], TIMEOUT)[0]:
            raise SyscallError(errno.EAGAIN, "socket", "(the caller's cgroup did not let a "
                                                       "child run: frozen?)")
        data, fds, _, _ = socket.recv_fds(ours, _ERRNO.size, 2)
    finally:
        ours.close()
        os.kill(pid, signal.SIGKILL)  # done, or stuck: a frozen task dies too
        os.waitpid(pid, 0)
    err = _ERRNO.unpack(data)[0] if len(data) == _ERRNO.size else errno.EPROTO
    if err or len(fds) != (2 if pair else 1):
        for fd in fds:
            os.close(fd)
        raise SyscallError(err or errno.EPROTO, "socketpair" if pair else "socket",
                           "(in the caller's cgroup)")
    return fds


def _child(channel: socket.socket, procs: int, ns_fd: int | None, family: int,
           sock_type: int, protocol: int, pair: bool,
           switch: Switch | None) -> None:  # pragma: no cover
    try:
        try:
            os.write(procs, b"0")  # "0": the writer itself
            if ns_fd is not None:
                enter_stack(ns_fd)
            if switch is not None:
                creds.take(switch)  # for good: this process ends here
            made = (list(sockets.make_pair(family, sock_type, protocol)) if pair
                    else [sockets.make(family, sock_type, protocol)])
        except OSError as e:
            channel.send(_ERRNO.pack(e.errno or errno.EIO))
        else:
            socket.send_fds(channel, [_ERRNO.pack(0)], made)
    finally:
        os._exit(0)
