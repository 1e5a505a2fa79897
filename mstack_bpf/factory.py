"""Make a socket inside a stack's network namespace, with the target's credentials.

setns(CLONE_NEWNET) moves only the calling thread. The supervisor is single-threaded and
simply stays in the namespace it used last, so with one redirect stack (the common case)
it never switches at all. A namespace owned by a user namespace the supervisor has no
privilege over (a rootless stack) is served by a helper process that entered it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from mstack_bpf.calls import SOCK_CLOEXEC, needs_full_credentials
from mstack_bpf.linux import creds as creds_mod
from mstack_bpf.linux import netns
from mstack_bpf.linux._ffi import SyscallError, libc
from mstack_bpf.linux.creds import Creds, FsIds

IOCTL_SOCKETS = 64
_socket = libc.socket
_socket.restype = ctypes.c_int
_socket.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]



class SocketMaker(Protocol):
    def make_socket(self, family: int, sock_type: int, protocol: int) -> int: ...

    def close(self) -> None: ...


def raw_socket(family: int, sock_type: int, protocol: int) -> int:
    fd: int = _socket(family, sock_type | SOCK_CLOEXEC, protocol)
    if fd < 0:
        raise SyscallError(ctypes.get_errno(), "socket")
    return fd


class StackSockets:
    """Creates sockets in namespaces given by fd; the caller owns those fds."""

    def __init__(self, helper_factory: Callable[[int], SocketMaker] | None = None) -> None:
        self.own = creds_mod.own_creds()
        #: a supervisor holding any capability could grant more than the target has: it
        #: switches (and, lacking CAP_SETUID, fails closed rather than lend its own)
        self.privileged = bool(self.own.cap_eff) or self.own.uids[1] == 0
        self._current: int | None = None  # inode of the namespace this thread is in
        self._helpers: dict[int, SocketMaker] = {}
        self._helper_factory = helper_factory
        self._ioctl_sockets: OrderedDict[tuple[int, int], socket.socket] = OrderedDict()

    def target_creds(self, tid: int, family: int, sock_type: int,
                     protocol: int) -> Creds | FsIds | None:
        """The target's credentials if they must be applied (read now: never cached): all of
        them for a socket whose creation checks privileges, else only the owner's ids."""
        if not self.privileged:
            return None
        if needs_full_credentials(family, sock_type, protocol):
            return creds_mod.read_creds(tid)
        return creds_mod.read_fs_ids(tid)

    def make(self, ns_fd: int, ns_ino: int, family: int, sock_type: int, protocol: int,
             target: Creds | FsIds | None) -> int:
        """A new socket (close-on-exec in the supervisor) in namespace ``ns_fd``."""
        helper = self._helpers.get(ns_ino)
        if helper is None and self._current != ns_ino:
            try:
                netns.setns(ns_fd)
                self._current = ns_ino
            except SyscallError as e:
                if e.errno != errno.EPERM or self._helper_factory is None:
                    raise
                helper = self._helpers[ns_ino] = self._helper_factory(ns_fd)
        if helper is not None:
            # The helper runs with the namespace owner's credentials: no more than ours.
            return helper.make_socket(family, sock_type | SOCK_CLOEXEC, protocol)
        if isinstance(target, FsIds) and needs_full_credentials(family, sock_type, protocol):
            raise TypeError("full credentials needed")  # never on owner ids alone
        switch = self._credentials(target)
        if switch is None:
            return raw_socket(family, sock_type, protocol)
        with switch:
            return raw_socket(family, sock_type, protocol)

    def _credentials(self, target: Creds | FsIds | None) -> AbstractContextManager[None] | None:
        """The switch to the target's credentials, or None where ours make the same socket.

        Full credentials are read only for a socket whose creation checks privileges
        (:meth:`target_creds`); owner ids alone mean the creator only names the owner.
        """
        if target is None:
            return None
        if isinstance(target, Creds):
            return None if _same(target, self.own) else creds_mod.as_target(target, self.own)
        if target.fsuid == self.own.uids[3] and target.fsgid == self.own.gids[3]:
            return None
        return creds_mod.as_filesystem_user(target)

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
            return self._credentials(target) or contextlib.nullcontext(), target.reopened
        return (contextlib.nullcontext() if _same(target, self.own) else None), target.reopened

    def close(self) -> None:
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
