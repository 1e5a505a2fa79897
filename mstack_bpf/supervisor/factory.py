"""Make a socket inside a stack's network namespace, with the target's credentials.

setns(CLONE_NEWNET) moves only the calling thread. The supervisor is single-threaded and
simply stays in the namespace it used last, so with one redirect stack (the common case)
it never switches at all. A namespace owned by a user namespace the supervisor has no
privilege over (a rootless stack) is served by a helper process that entered it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol

from mstack_bpf.core.abi import SOCK_CLOEXEC
from mstack_bpf.core.calls import needs_full_credentials
from mstack_bpf.linux import cgroup, netns, sockets
from mstack_bpf.linux import creds as creds_mod
from mstack_bpf.linux.creds import Creds, FsIds
from mstack_bpf.linux.ffi import SyscallError
from mstack_bpf.supervisor import visitor

IOCTL_SOCKETS = 64



class Target(NamedTuple):
    """What a socket made for thread ``tid`` carries of it."""

    tid: int
    creds: Creds | FsIds | None  # None: ours make the same socket
    cgroup: int | None           # its cgroup v2 id; None: no cgroup v2
    reopened: bool               # a file was opened by tid now: confirm it is the caller's


class SocketMaker(Protocol):
    def make_socket(self, family: int, sock_type: int, protocol: int) -> int: ...

    def make_pair(self, family: int, sock_type: int, protocol: int) -> tuple[int, int]: ...

    def close(self) -> None: ...


class StackSockets:
    """Creates sockets in namespaces given by fd; the caller owns those fds."""

    def __init__(self, helper_factory: Callable[[int], SocketMaker] | None = None) -> None:
        self.own = creds_mod.own_creds()
        #: a supervisor holding any capability could grant more than the target has: it
        #: switches (and, lacking CAP_SETUID, fails closed rather than lend its own)
        self.privileged = bool(self.own.cap_eff) or self.own.uids[1] == 0
        #: inode of the namespace this (the loop's) thread is in: a stack that is where we
        #: are already needs no setns(), which an unprivileged supervisor may not make
        self._current: int | None = os.stat("/proc/thread-self/ns/net").st_ino
        self._helpers: dict[int, SocketMaker] = {}
        self._helper_factory = helper_factory
        self._ioctl_sockets: OrderedDict[tuple[int, int], socket.socket] = OrderedDict()
        #: where our cgroup (v2) is, and the targets' (their sockets must be made in theirs)
        self.cgroups = cgroup.Placer()
        #: whether the loop may wait for a child in a caller's cgroup (:meth:`visit_quickly`)
        self._patience = visitor.Patience()

    def target(self, tid: int, family: int, sock_type: int, protocol: int) -> Target:
        """What a socket made for thread ``tid`` must carry of it (read now: never cached):
        its credentials if they must be applied (all of them for a socket whose creation
        checks privileges, else only the owner's ids), and its cgroup."""
        ids = creds_mod.read_fs_ids(tid)
        cgroup = ids.cgroup if ids.cgroup is not None else self.cgroups.task_cgroup(tid)
        creds: Creds | FsIds | None = None
        if self.privileged:
            full = needs_full_credentials(family, sock_type, protocol)
            creds = creds_mod.read_creds(tid) if full else ids
        reopened = ids.reopened or (creds is not None and creds.reopened)
        return Target(tid, creds, cgroup, reopened)

    def make(self, ns_fd: int, ns_ino: int, family: int, sock_type: int, protocol: int,
             target: Target | None) -> int:
        """A new socket (close-on-exec in the supervisor) in namespace ``ns_fd``, for a
        target in our cgroup (:meth:`elsewhere` says when :meth:`visit` must make it)."""
        helper = self._enter(ns_fd, ns_ino)
        if helper is not None:
            # The helper runs with the namespace owner's credentials: no more than ours.
            return helper.make_socket(family, sock_type | SOCK_CLOEXEC, protocol)
        switch = self._as(target and target.creds, family, sock_type, protocol)
        if switch is None:  # the hot path: no context manager
            return sockets.make(family, sock_type, protocol)
        with switch:
            return sockets.make(family, sock_type, protocol)

    def make_pair(self, ns_fd: int, ns_ino: int, family: int, sock_type: int, protocol: int,
                  target: Target) -> tuple[int, int]:
        """A new socketpair (close-on-exec in the supervisor) in namespace ``ns_fd``."""
        helper = self._enter(ns_fd, ns_ino)
        if helper is not None:
            return helper.make_pair(family, sock_type | SOCK_CLOEXEC, protocol)
        with self._as(target.creds, family, sock_type, protocol) or contextlib.nullcontext():
            return sockets.make_pair(family, sock_type, protocol)

    @property
    def current_ns(self) -> int | None:
        """The inode of the namespace the loop's thread is in."""
        return self._current

    def switches(self, family: int, sock_type: int, protocol: int) -> bool:
        """Whether making this socket may take more than the caller's owner ids: a
        privileged supervisor then switches to all of its credentials."""
        return self.privileged and needs_full_credentials(family, sock_type, protocol)

    def elsewhere(self, target: Target) -> bool:
        """The target is in another cgroup than ours: its sockets come from :meth:`visit`."""
        return target.cgroup is not None and target.cgroup != self.cgroups.home

    def visit(self, ns_fd: int, family: int, sock_type: int, protocol: int, target: Target,
              pair: bool) -> list[int]:
        """(slow lane) The socket or pair made in ``target``'s cgroup, by a child that joins
        it (supervisor/visitor.py) and enters namespace ``ns_fd`` itself."""
        assert target.cgroup is not None
        directory = self.cgroups.directory(target.cgroup, target.tid)
        try:
            return visitor.make(directory, ns_fd, family, sock_type | SOCK_CLOEXEC, protocol,
                                pair, self._switch(target.creds, family, sock_type, protocol))
        finally:
            os.close(directory)

    def visit_quickly(self, ns_fd: int, family: int, sock_type: int, protocol: int,
                      target: Target, pair: bool) -> list[int] | None:
        """:meth:`visit` by a child that shares our memory and answers within
        :data:`visitor.QUICK` (on the loop); None: no such answer, for whatever reason
        (:meth:`visit` then tries again in the slow lane, and reports). None too, without
        a child, for a while after one was slow: a caller that keeps its cgroup frozen or
        throttled must not hold the loop, which every other caller waits for, call after
        call."""
        assert target.cgroup is not None
        start = time.monotonic()
        if not self._patience.allows(start):
            return None
        try:
            directory = self.cgroups.directory(target.cgroup, target.tid)
        except OSError:
            return None
        try:
            return visitor.make_quickly(
                directory, ns_fd, family, sock_type | SOCK_CLOEXEC, protocol, pair,
                self._switch(target.creds, family, sock_type, protocol))
        except OSError:
            return None
        finally:
            os.close(directory)
            self._patience.took(start, time.monotonic())

    def _enter(self, ns_fd: int, ns_ino: int) -> SocketMaker | None:
        """Be in namespace ``ns_ino``: this thread enters it, or its helper serves it."""
        helper = self._helpers.get(ns_ino)
        if helper is None and self._current != ns_ino:
            try:
                netns.setns(ns_fd)
                self._current = ns_ino
            except SyscallError as e:
                if e.errno != errno.EPERM or self._helper_factory is None:
                    raise
                helper = self._helpers[ns_ino] = self._helper_factory(ns_fd)
        return helper

    def _as(self, target: Creds | FsIds | None, family: int, sock_type: int,
            protocol: int) -> AbstractContextManager[None] | None:
        switch = self._switch(target, family, sock_type, protocol)
        return None if switch is None else creds_mod.switched(switch, self.own)

    def _switch(self, target: Creds | FsIds | None, family: int, sock_type: int,
                protocol: int) -> creds_mod.Switch | None:
        if isinstance(target, FsIds) and needs_full_credentials(family, sock_type, protocol):
            raise TypeError("full credentials needed")  # never on owner ids alone
        return self._credentials(target)

    def _credentials(self, target: Creds | FsIds | None) -> creds_mod.Switch | None:
        """The switch to the target's credentials, or None where ours make the same socket.

        Full credentials are read only for a socket whose creation checks privileges
        (:meth:`target`); owner ids alone mean the creator only names the owner.
        """
        if target is None:
            return None
        if isinstance(target, Creds):
            return None if _same(target, self.own) else creds_mod.target_switch(target,
                                                                                self.own)
        if target.fsuid == self.own.uids[3] and target.fsgid == self.own.gids[3]:
            return None
        return creds_mod.filesystem_switch(target)

    def ioctl_socket(self, ns_fd: int, ns_ino: int,
                     family: int = socket.AF_UNIX) -> socket.socket:
        """A socket of ours of ``family`` inside namespace ``ns_ino``, for interface ioctls
        (the last :data:`IOCTL_SOCKETS` are kept)."""
        key = ns_ino, family
        sock = self._ioctl_sockets.get(key)
        if sock is None:
            fd = self.make(ns_fd, ns_ino, family, socket.SOCK_DGRAM, 0, None)
            sock = self._ioctl_sockets[key] = socket.socket(fileno=fd)
            if len(self._ioctl_sockets) > IOCTL_SOCKETS:
                self._ioctl_sockets.popitem(last=False)[1].close()
        else:
            self._ioctl_sockets.move_to_end(key)
        return sock

    def caller_rights(self, tid: int) -> tuple[AbstractContextManager[None] | None, bool]:
        """The switch to thread ``tid``'s full credentials for a call made on its behalf
        (None: ours are not its and cannot become them), and whether its status file was
        opened now (the tid must then be confirmed as the caller's)."""
        target = creds_mod.read_creds(tid)
        if self.privileged:
            switch = self._credentials(target)
            return (contextlib.nullcontext() if switch is None
                    else creds_mod.switched(switch, self.own)), target.reopened
        return (contextlib.nullcontext() if _same(target, self.own) else None), target.reopened

    def close(self) -> None:
        self.cgroups.close()
        for sock in self._ioctl_sockets.values():
            sock.close()
        for helper in self._helpers.values():
            helper.close()
        self._helpers.clear()


def _same(a: Creds, b: Creds) -> bool:
    """Same credentials, capabilities included; the user namespace is compared last (a stat):
    capabilities held in a child user namespace mean nothing in ours."""
    return (a.uids, a.gids, a.groups, a.cap_eff) == (b.uids, b.gids, b.groups, b.cap_eff) and (
        a.userns == b.userns)


def open_task_netns(tid: int) -> tuple[int, int]:
    """fd and inode of thread ``tid``'s current network namespace (for native sockets)."""
    fd = os.open(f"/proc/{tid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return fd, os.fstat(fd).st_ino
