"""socket(2), socketpair(2) and the virtual msocket call (-5) as raw system calls.

Python's ``socket.socket`` would wrap each new descriptor in an object and always add
``SOCK_CLOEXEC``; the supervisor and its stack helper hand descriptors on as numbers, with
exactly the flags the caller asked for.
"""

from __future__ import annotations

import ctypes
import errno

from mstack_bpf.core.abi import MSOCKET_NR, SOCK_CLOEXEC
from mstack_bpf.linux._ffi import SyscallError, libc

_socket = libc.socket
_socket.restype = ctypes.c_int
_socket.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_socketpair = libc.socketpair
_socketpair.restype = ctypes.c_int
_socketpair.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_syscall = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_long,
                            ctypes.c_long, ctypes.c_long, use_errno=True)(("syscall", libc))


def make(family: int, sock_type: int, protocol: int, cloexec: bool = True) -> int:
    """socket(2); close-on-exec unless ``cloexec`` is False."""
    fd: int = _socket(family, sock_type | (SOCK_CLOEXEC if cloexec else 0), protocol)
    if fd < 0:
        raise SyscallError(ctypes.get_errno() or errno.EIO, "socket")
    return fd


def make_pair(family: int, sock_type: int, protocol: int,
              cloexec: bool = True) -> tuple[int, int]:
    """socketpair(2); both ends close-on-exec unless ``cloexec`` is False."""
    pair = (ctypes.c_int * 2)()
    if _socketpair(family, sock_type | (SOCK_CLOEXEC if cloexec else 0), protocol, pair) < 0:
        raise SyscallError(ctypes.get_errno() or errno.EIO, "socketpair")
    return pair[0], pair[1]


def msocket(path: bytes | None, family: int, sock_type: int, protocol: int) -> int:
    """The virtual ``msocket(path, domain, type, protocol)`` call (-5, as in VUOS); ENOSYS
    where no mstack supervisor answers it."""
    result: int = _syscall(MSOCKET_NR - (1 << 32), path, family, sock_type, protocol)
    if result < 0:
        raise SyscallError(ctypes.get_errno() or errno.EIO, "msocket",
                           (path or b"(default)").decode(errors="replace"))
    return result
