"""Sockets made inside another network namespace by a resident helper process.

Entering a network namespace takes CAP_SYS_ADMIN over its owning user namespace *and* in
the caller's own (setns(2)); an unprivileged supervisor has the first for its own rootless
stacks only after joining their user namespace, and joining a user namespace is allowed
only to a single-threaded process that then stays in it. So a forked helper does it once:
``setns(user)`` (skipped when the netns belongs to the caller's user namespace, e.g. root
stacks, where setns would fail with EINVAL) and ``setns(net)``, then serves requests.

Protocol over an ``AF_UNIX SOCK_SEQPACKET`` socketpair (message boundaries kept, so a
short or long message is detectable):

* start: helper → parent ``<iI`` (errno, step) — errno 0 when ready; step says which call
  failed (1 open, 2 NS_GET_NSTYPE, 3 NS_GET_USERNS, 4 setns user, 5 setns net).
* request: parent → helper ``<iiii`` (what, family, type, protocol), exactly 16 bytes, no
  ancillary data; ``what`` is 1 for socket(2), 2 for socketpair(2); anything else ends the
  helper (a confused peer is not served).
* reply: helper → parent ``<i`` errno; with errno 0 the socket (or the pair, in order)
  travels as SCM_RIGHTS.

The helper exits when the parent closes its end or dies (PR_SET_PDEATHSIG), and holds no
fd but its socket (the supervisor's seccomp listener must not leak into it).
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import signal
import socket
import struct

from mstack_bpf.core.abi import CLONE_NEWNET, CLONE_NEWUSER
from mstack_bpf.linux import prctl, sockets
from mstack_bpf.linux.ffi import SyscallError
from mstack_bpf.linux.netns import check_netns, ns_inode, owning_userns, setns

_REQ = struct.Struct("<iiii")
_SOCKET, _PAIR = 1, 2
_REPLY = struct.Struct("<i")
_START = struct.Struct("<iI")
_STEPS = {
    1: "open",
    2: "ioctl(NS_GET_NSTYPE)",
    3: "ioctl(NS_GET_USERNS)",
    4: "setns(CLONE_NEWUSER)",
    5: "setns(CLONE_NEWNET)",
}
_CMSG_SPACE = socket.CMSG_SPACE(8)



class NetnsSocketHelper:
    """A helper process resident in the network namespace at ``netns_path``.

    ``make_socket`` returns a new fd (owned by the caller) or raises ``OSError`` with the
    errno socket(2) gave inside the namespace. Not thread-safe: one request at a time.
    """

    def __init__(self, netns_path: str) -> None:
        self.netns_path = netns_path
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the helper
            parent.close()
            _serve(child, netns_path)
        child.close()
        self.pid = pid
        self._sock: socket.socket | None = parent
        try:
            data = parent.recv(_START.size + 1)
            if len(data) != _START.size:
                raise SyscallError(errno.EPROTO, "helper start", netns_path)
            err, step = _START.unpack(data)
            if err:
                raise SyscallError(err, _STEPS.get(step, "helper"), netns_path)
        except BaseException:
            self.close()
            raise

    def make_socket(self, family: int, type: int, proto: int) -> int:
        """socket(family, type, proto) inside the namespace; one round trip."""
        return self._ask(_SOCKET, family, type, proto)[0]

    def make_pair(self, family: int, type: int, proto: int) -> tuple[int, int]:
        """socketpair(family, type, proto) inside the namespace; one round trip."""
        first, second = self._ask(_PAIR, family, type, proto)
        return first, second

    def _ask(self, what: int, family: int, type: int, proto: int) -> list[int]:
        if self._sock is None:
            raise SyscallError(errno.EBADF, "NetnsSocketHelper", "closed")
        self._sock.send(_REQ.pack(what, family, type, proto))
        data, anc, flags, _ = self._sock.recvmsg(_REPLY.size + 1, _CMSG_SPACE)
        fds = _fds(anc)
        err = _REPLY.unpack(data)[0] if len(data) == _REPLY.size else -1
        if err or flags & socket.MSG_CTRUNC or len(fds) != what:
            for fd in fds:
                os.close(fd)
            if err > 0:
                raise OSError(err, os.strerror(err))
            raise SyscallError(errno.EPROTO, "NetnsSocketHelper", "bad reply")
        return fds

    def close(self) -> None:
        """Stop the helper (closing our end makes it exit) and reap it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)

    def __enter__(self) -> NetnsSocketHelper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


def _serve(sock: socket.socket, netns_path: str) -> None:  # pragma: no cover - helper
    """The helper's life: enter the namespaces, answer requests, exit. Never returns."""
    try:
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        prctl.set_death_signal(signal.SIGKILL)
        # Open first: the path may name an fd we inherited (/proc/self/fd/N) — a
        # non-dumpable parent's /proc/PID/fd is closed to us.
        try:
            ns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            ns_fd = -(e.errno or errno.EIO)
        keep = sorted({sock.fileno(), ns_fd}) if ns_fd >= 0 else [sock.fileno()]
        previous = 2
        for fd in keep:
            os.closerange(previous + 1, fd)
            previous = fd
        os.closerange(previous + 1, 1 << 20)
        err, step = _enter(ns_fd, netns_path)
        sock.send(_START.pack(err, step))
        if err == 0:
            _loop(sock)
    finally:
        os._exit(0)


def _enter(fd: int, netns_path: str) -> tuple[int, int]:  # pragma: no cover - helper
    if fd < 0:
        return -fd, 1
    steps = [2]
    try:
        check_netns(fd, netns_path)
        steps.append(3)
        enter_stack(fd, steps)
        os.close(fd)
    except OSError as e:
        return e.errno or errno.EIO, steps[-1]
    return 0, 0


def foreign_userns(fd: int) -> int | None:
    """A new descriptor of the user namespace that owns network namespace ``fd``, or None
    where that is ours (a rootless stack is owned by one of its own)."""
    userns = owning_userns(fd)
    try:
        with open("/proc/self/ns/user", "rb") as own:
            if ns_inode(own.fileno()) == ns_inode(userns):
                os.close(userns)
                return None
    except BaseException:
        os.close(userns)
        raise
    return userns


def enter_stack(fd: int, steps: list[int] | None = None) -> None:
    """Move this (single-threaded) process into network namespace ``fd``, joining its
    owning user namespace first where it is not ours (a rootless stack); ``steps`` gets
    the number of each step begun (4 setns user, 5 setns net)."""
    userns = foreign_userns(fd)
    if userns is not None:
        try:
            if steps is not None:
                steps.append(4)
            setns(userns, CLONE_NEWUSER)
        finally:
            os.close(userns)
    if steps is not None:
        steps.append(5)
    setns(fd, CLONE_NEWNET)


def _loop(sock: socket.socket) -> None:  # pragma: no cover - helper
    while True:
        data, anc, flags, _ = sock.recvmsg(_REQ.size + 1, _CMSG_SPACE)
        if not data:
            return  # parent closed its end
        if len(data) != _REQ.size or anc or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for f in _fds(anc):
                os.close(f)
            return
        what, family, type_, proto = _REQ.unpack(data)
        try:
            if what == _PAIR:
                made = list(sockets.make_pair(family, type_, proto, cloexec=False))
            elif what == _SOCKET:
                made = [sockets.make(family, type_, proto, cloexec=False)]
            else:
                return
        except SyscallError as e:
            sock.send(_REPLY.pack(e.errno or errno.EIO))
            continue
        try:
            socket.send_fds(sock, [_REPLY.pack(0)], made)
        finally:
            for fd in made:
                os.close(fd)
