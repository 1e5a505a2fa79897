"""msocket(2) for Python programs: choose a socket's stack, or change the default stack.

    sock = mstack_bpf.msocket("blue", socket.AF_INET)          # a socket from stack blue
    mstack_bpf.set_default_stack("null", socket.AF_INET6)      # no IPv6 from now on

Both work only under mstack (the supervisor answers the virtual call -5, as in VUOS);
elsewhere they raise :class:`NotUnderMstack`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket

from mstack_bpf.linux._ffi import SyscallError, libc

MSOCKET_NR = -5
SOCK_DEFAULT = 0

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


class NotUnderMstack(OSError):
    """The virtual msocket call answered ENOSYS: no mstack supervisor is listening."""


def _call(stack: str | None, family: int, sock_type: int, proto: int) -> int:
    path = None if stack is None else os.fsencode(stack)
    result: int = _syscall(ctypes.c_long(MSOCKET_NR), ctypes.c_char_p(path), ctypes.c_long(family),
                           ctypes.c_long(sock_type), ctypes.c_long(proto))
    if result < 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            raise NotUnderMstack(err, "msocket: not running under mstack (call -5 says ENOSYS)")
        raise SyscallError(err, "msocket", stack or "(default)")
    return result


def msocket(stack: str | None, family: int, type: int = socket.SOCK_STREAM,  # noqa: A002
            proto: int = 0) -> socket.socket:
    """A socket of ``family`` from ``stack`` (None: this process's default stack)."""
    if type == SOCK_DEFAULT:
        raise ValueError("type 0 is SOCK_DEFAULT: use set_default_stack()")
    return socket.socket(fileno=_call(stack, family, type, proto))


def set_default_stack(stack: str, family: int = socket.AF_UNSPEC) -> None:
    """Make ``stack`` this process's default for ``family`` (AF_UNSPEC: every family).

    Children forked afterwards inherit the new table; children forked before keep theirs.
    """
    _call(stack, family, SOCK_DEFAULT, 0)


def under_mstack() -> bool:
    """Whether an mstack supervisor (or lock) answers msocket for this process."""
    try:
        _call(None, socket.AF_UNSPEC, SOCK_DEFAULT, 0)
    except NotUnderMstack:
        return False
    except OSError:
        return True
    return True
