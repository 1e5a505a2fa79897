"""Network namespaces: open and check a namespace file, enter it, identify it.

The ioctls are the ``NS_GET_*`` family of ``linux/nsfs.h`` (ioctl_ns(2));
``SO_NETNS_COOKIE`` is in ``asm-generic/socket.h`` (socket(7)).

A namespace is identified by the inode of its nsfs file (``ns_inode``), the same number
``readlink /proc/PID/ns/net`` shows, and — for sockets, without privileges — by its
64-bit cookie (``netns_cookie``), which works for anyone where ``SIOCGSKNS`` needs
CAP_NET_ADMIN over the socket's namespace (measured: docs/design.md, "Kernel facts").
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

from mstack_bpf.core.abi import CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUSER
from mstack_bpf.linux import fs
from mstack_bpf.linux.ffi import SyscallError, io, ioctl, ioctl_value, libc

# sched.h

# linux/nsfs.h: NSIO = 0xb7
NS_GET_USERNS = io(0xB7, 0x1)
NS_GET_PARENT = io(0xB7, 0x2)
NS_GET_NSTYPE = io(0xB7, 0x3)
NS_GET_OWNER_UID = io(0xB7, 0x4)

# linux/sockios.h
SIOCGSKNS = 0x894C
# asm-generic/socket.h (Linux >= 5.14)
SO_NETNS_COOKIE = 71

_setns = libc.setns
_setns.restype = ctypes.c_int
_setns.argtypes = [ctypes.c_int, ctypes.c_int]


class NotANetns(SyscallError):
    """The file opened is not a network namespace; ``errno`` is ENOTSUP (as msocket answers).

    ``reason`` says what it is instead ("not a namespace file", "a user namespace", ...).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(errno.ENOTSUP, "ioctl(NS_GET_NSTYPE)", f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: not a network namespace ({self.reason})"


_NS_NAMES = {
    0x00020000: "a mount namespace",
    0x02000000: "a cgroup namespace",
    0x04000000: "a UTS namespace",
    0x08000000: "an IPC namespace",
    CLONE_NEWUSER: "a user namespace",
    0x20000000: "a PID namespace",
    0x00000080: "a time namespace",
}


def ns_type(fd: int) -> int:
    """The ``CLONE_NEW*`` type of the namespace file ``fd`` (``NS_GET_NSTYPE``)."""
    return ioctl(fd, NS_GET_NSTYPE, None, "ioctl(NS_GET_NSTYPE)")


def check_netns(fd: int, path: str = "") -> None:
    """Raise :class:`NotANetns` unless ``fd`` is a network namespace file."""
    try:
        kind = ns_type(fd)
    except SyscallError as e:
        # nsfs answers its ioctls; any other file says ENOTTY (or EINVAL for some drivers).
        if e.errno in (errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
            raise NotANetns(path or f"fd {fd}", "not a namespace file") from None
        raise
    if kind != CLONE_NEWNET:
        what = _NS_NAMES.get(kind, f"namespace type {kind:#x}")
        raise NotANetns(path or f"fd {fd}", what)


def open_netns(path: str, *, cloexec: bool = True) -> int:
    """Open ``path`` read-only and check it is a network namespace; return the fd.

    Raises :class:`SyscallError` for ``open`` (ENOENT, EACCES, ...) and :class:`NotANetns`
    (errno ENOTSUP) when the file is something else. Only a namespace file is ever really
    opened: a FIFO, a terminal or a device named by mistake (or on purpose, by a target
    naming it in msocket) is looked at through ``O_PATH`` and left alone.
    """
    return open_netns_at(fs.open_path(path), path, cloexec=cloexec)


def open_netns_at(path_fd: int, label: str, *, cloexec: bool = True) -> int:
    """Open the namespace that the ``O_PATH`` descriptor ``path_fd`` names, and close
    ``path_fd``; :class:`NotANetns` if it names anything else."""
    try:
        if fs.fs_type(path_fd) != fs.NSFS_MAGIC:
            raise NotANetns(label, "not a namespace file")
        flags = os.O_RDONLY | (os.O_CLOEXEC if cloexec else 0)
        try:
            fd = os.open(f"/proc/self/fd/{path_fd}", flags)
        except OSError as e:
            raise SyscallError(e.errno or errno.EIO, "open", label) from None
    finally:
        os.close(path_fd)
    try:
        check_netns(fd, label)
    except BaseException:
        os.close(fd)
        raise
    return fd


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling *thread* into the namespace ``fd`` (setns(2)).

    Entering a network namespace needs CAP_SYS_ADMIN in its owning user namespace; a
    process entering a user namespace must be single-threaded (EINVAL otherwise).
    """
    if _setns(fd, nstype) == -1:
        raise SyscallError(ctypes.get_errno(), "setns", _nstype_name(nstype))


def _nstype_name(nstype: int) -> str:
    return {
        0: "(any)",
        CLONE_NEWNET: "(CLONE_NEWNET)",
        CLONE_NEWUSER: "(CLONE_NEWUSER)",
        CLONE_NEWNS: "(CLONE_NEWNS)",
    }.get(nstype, f"({nstype:#x})")


def ns_inode(fd: int) -> int:
    """The namespace's inode number (as in ``/proc/PID/ns/net -> net:[INODE]``)."""
    return os.fstat(fd).st_ino


def path_inode(path: str) -> int:
    """``ns_inode`` of a namespace path without keeping it open (stat follows /proc links)."""
    try:
        return os.stat(path).st_ino
    except OSError as e:
        raise SyscallError(e.errno or errno.EIO, "stat", path) from None


def owning_userns(fd: int) -> int:
    """A new fd of the user namespace that owns namespace ``fd`` (``NS_GET_USERNS``).

    EPERM when that user namespace is outside the caller's (an ancestor of it).
    """
    return ioctl_value(fd, NS_GET_USERNS, 0, "ioctl(NS_GET_USERNS)")


def parent_userns(userns_fd: int) -> int:
    """A new fd of the parent of user namespace ``userns_fd`` (``NS_GET_PARENT``); EPERM at
    the top of what the caller can see (its own user namespace or the initial one)."""
    return ioctl_value(userns_fd, NS_GET_PARENT, 0, "ioctl(NS_GET_PARENT)")


def owner_uid(userns_fd: int) -> int:
    """The uid (in the caller's user namespace) that created user namespace ``userns_fd``."""
    uid = ctypes.c_uint32(0)
    ioctl(userns_fd, NS_GET_OWNER_UID, uid, "ioctl(NS_GET_OWNER_UID)")
    return uid.value


def socket_netns_inode(sockfd: int) -> int:
    """``ns_inode`` of the network namespace socket ``sockfd`` lives in (``SIOCGSKNS``,
    which needs CAP_NET_ADMIN over that namespace)."""
    fd = ioctl_value(sockfd, SIOCGSKNS, 0, "ioctl(SIOCGSKNS)")
    try:
        return ns_inode(fd)
    finally:
        os.close(fd)


def netns_cookie(sockfd: int) -> int:
    """The 64-bit cookie of the network namespace of socket ``sockfd`` (``SO_NETNS_COOKIE``)."""
    sock = socket.socket(fileno=os.dup(sockfd))
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError as e:
        raise SyscallError(e.errno or errno.EIO, "getsockopt(SO_NETNS_COOKIE)") from None
    finally:
        sock.close()
    value: int = struct.unpack("=Q", raw)[0]
    return value


_unshare = libc.unshare
_unshare.restype = ctypes.c_int
_unshare.argtypes = [ctypes.c_int]


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (unshare(2)); CLONE_NEWUSER needs a
    single-threaded caller."""
    if _unshare(flags) == -1:
        raise SyscallError(ctypes.get_errno(), "unshare", _nstype_name(flags))
