"""The C ABI in one place: libc through ctypes, raw syscalls, and errno → OSError.

Every failing call raises :class:`SyscallError` (an ``OSError``) that names the call, so a
message can say ``ioctl(SECCOMP_IOCTL_NOTIF_ADDFD): Too many open files``.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any


class SyscallError(OSError):
    """A failed system call: ``errno`` plus the call's name in ``call``."""

    def __init__(self, err: int, call: str, detail: str | None = None) -> None:
        super().__init__(err, os.strerror(err))
        self.call = call
        self.detail = detail

    def __str__(self) -> str:
        where = f"{self.call} {self.detail}" if self.detail else self.call
        return f"{where}: {self.strerror}"


# By soname: ctypes.util.find_library would run ldconfig at every start-up.
libc = ctypes.CDLL("libc.so.6", use_errno=True)

_syscall = libc.syscall
_syscall.restype = ctypes.c_long

_ioctl = libc.ioctl
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
#: ``ioctl(fd, request, address)`` returning -1 with errno set: for calls made at every
#: notification, where the checking wrapper's cost shows
raw_ioctl = _ioctl

_ioctl_int = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, use_errno=True
)(("ioctl", libc))


def check(result: int, call: str, detail: str | None = None) -> int:
    """Return ``result`` or raise :class:`SyscallError` from the current errno if it is -1."""
    if result == -1:
        raise SyscallError(ctypes.get_errno(), call, detail)
    return result


def syscall(nr: int, *args: int, call: str) -> int:
    """A raw system call (per-thread semantics, no glibc broadcast); raises on failure."""
    c_args = [ctypes.c_long(a) for a in args]
    return check(_syscall(ctypes.c_long(nr), *c_args), call)


def ioctl(fd: int, request: int, arg: Any, call: str) -> int:
    """``ioctl(fd, request, &arg)`` for a ctypes object (or None); raises on failure."""
    ptr = None if arg is None else ctypes.addressof(arg)
    return check(_ioctl(fd, request, ptr), call)


def ioctl_value(fd: int, request: int, value: int, call: str) -> int:
    """``ioctl(fd, request, value)`` with an integer passed by value; raises on failure."""
    return check(_ioctl_int(fd, request, value), call)


# asm-generic/ioctl.h
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, kind: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (kind << 8) | nr


def io(kind: int, nr: int) -> int:
    return _ioc(0, kind, nr, 0)


def iow(kind: int, nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, kind, nr, size)


def iowr(kind: int, nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, kind, nr, size)
