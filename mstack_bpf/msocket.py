"""msocket(2) for Python programs: choose a socket's stack, or change the default stack.

    sock = mstack_bpf.msocket("blue", socket.AF_INET)          # a socket from stack blue
    mstack_bpf.set_default_stack("null", socket.AF_INET6)      # no IPv6 from now on

Both work only under mstack (the supervisor answers the virtual call -5, as in VUOS);
elsewhere they raise :class:`NotUnderMstack`.
"""

from __future__ import annotations

import errno
import os
import socket

from mstack_bpf.core.abi import SOCK_DEFAULT
from mstack_bpf.linux import sockets
from mstack_bpf.linux.ffi import SyscallError


class NotUnderMstack(OSError):
    """The virtual msocket call answered ENOSYS: no mstack supervisor is listening."""


def call(stack: str | bytes | None, family: int, sock_type: int, proto: int,
         mark: tuple[int, int] = (0, 0)) -> int:
    """The virtual msocket call; :class:`NotUnderMstack` where no supervisor answers it.
    ``mark``: see :func:`mstack_bpf.linux.sockets.msocket`."""
    path = None if stack is None else os.fsencode(stack)
    try:
        return sockets.msocket(path, family, sock_type, proto, mark)
    except SyscallError as e:
        if e.errno == errno.ENOSYS:
            raise NotUnderMstack(e.errno, "msocket: not running under mstack (call -5 says "
                                          "ENOSYS)") from None
        raise


def msocket(stack: str | bytes | None, family: int, type: int = socket.SOCK_STREAM,  # noqa: A002
            proto: int = 0) -> socket.socket:
    """A socket of ``family`` from ``stack`` (None: this process's default stack)."""
    if type == SOCK_DEFAULT:
        raise ValueError("type 0 is SOCK_DEFAULT: use set_default_stack()")
    return socket.socket(fileno=call(stack, family, type, proto))


def set_default_stack(stack: str | bytes, family: int = socket.AF_UNSPEC) -> None:
    """Make ``stack`` this process's default for ``family`` (AF_UNSPEC: every family).

    Children forked afterwards inherit the new table; children forked before keep theirs.
    """
    call(stack, family, SOCK_DEFAULT, 0)
