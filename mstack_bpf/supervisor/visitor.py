"""Sockets for a caller in another cgroup, made by a short-lived child that joins it.

A socket belongs to the cgroup (v2) of the task that creates it (``sk_alloc``), and nft's
``socket cgroupv2``, cgroup-BPF socket hooks and systemd's ``IPAddressDeny=`` judge it by
that. The supervisor must not join a caller's cgroup itself: whoever owns that cgroup (a
delegated subtree) could freeze or kill it there. A child forked for the purpose writes
itself into the caller's ``cgroup.procs``, enters the stack (its user namespace first for a
rootless stack: the child is single-threaded), takes the caller's credentials, makes the
socket (or pair) and sends it back; it is then killed and reaped whatever it is doing, and
one that does not answer within :data:`TIMEOUT` is killed too (a frozen cgroup) and the call
fails with EAGAIN. It runs in the slow lane: a fork costs about a millisecond.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
from contextlib import AbstractContextManager

from mstack_bpf.linux import sockets
from mstack_bpf.linux.ffi import SyscallError
from mstack_bpf.supervisor.helper import enter_stack

TIMEOUT = 2.0
_ERRNO = struct.Struct("=i")


def make(procs: int, ns_fd: int | None, family: int, sock_type: int, protocol: int,
         pair: bool, switch: AbstractContextManager[None] | None) -> list[int]:
    """The socket (or both ends of the pair), made by a child in the cgroup whose
    ``cgroup.procs`` is ``procs`` and in namespace ``ns_fd`` (None: ours), under ``switch``
    (the caller's credentials; None: ours do). Raises the child's errno."""
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
           switch: AbstractContextManager[None] | None) -> None:  # pragma: no cover
    try:
        try:
            os.write(procs, b"0")  # "0": the writer itself
            if ns_fd is not None:
                enter_stack(ns_fd)
            if switch is not None:
                switch.__enter__()  # for good: this process ends here
            made = (list(sockets.make_pair(family, sock_type, protocol)) if pair
                    else [sockets.make(family, sock_type, protocol)])
        except OSError as e:
            channel.send(_ERRNO.pack(e.errno or errno.EIO))
        else:
            socket.send_fds(channel, [_ERRNO.pack(0)], made)
    finally:
        os._exit(0)
