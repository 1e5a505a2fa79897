"""socket(2), socketpair(2) and the virtual msocket call (-5) as raw system calls.

Python's ``socket.socket`` would wrap each new descriptor in an object and always add
``SOCK_CLOEXEC``; the supervisor and its stack helper hand descriptors on as numbers, with
exactly the flags the caller asked for.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import struct

from mstack_bpf.core.abi import MSOCKET_NR, SOCK_CLOEXEC
from mstack_bpf.linux.ffi import SyscallError, libc

_socket = libc.socket
_socket.restype = ctypes.c_int
_socket.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_socketpair = libc.socketpair
_socketpair.restype = ctypes.c_int
_socketpair.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_getsockopt = libc.getsockopt
_getsockopt.restype = ctypes.c_int
_getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                        ctypes.c_void_p]
SOL_SOCKET = 1
SO_DOMAIN = 39
_syscall = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_long,
                            ctypes.c_long, ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong,
                            use_errno=True)(("syscall", libc))


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


def domain(fd: int) -> int:
    """``SO_DOMAIN`` of socket ``fd``; ENOTSOCK (asking no filesystem) for other files."""
    value = ctypes.c_int()
    size = ctypes.c_uint(ctypes.sizeof(value))
    if _getsockopt(fd, SOL_SOCKET, SO_DOMAIN, ctypes.byref(value), ctypes.byref(size)) < 0:
        raise SyscallError(ctypes.get_errno() or errno.EIO, "getsockopt(SO_DOMAIN)")
    return value.value


def msocket(path: bytes | None, family: int, sock_type: int, protocol: int,
            mark: tuple[int, int] = (0, 0)) -> int:
    """The virtual ``msocket(path, domain, type, protocol)`` call (-5, as in VUOS); ENOSYS
    where no mstack supervisor answers it. ``mark`` goes in the 5th and 6th arguments,
    which msocket ignores (mstack's launcher marks itself for the tracer so)."""
    result: int = _syscall(MSOCKET_NR - (1 << 32), path, family, sock_type, protocol, *mark)
    if result < 0:
        raise SyscallError(ctypes.get_errno() or errno.EIO, "msocket",
                           (path or b"(default)").decode(errors="replace"))
    return result


SIOCGIFCONF = 0x8912
_IFCONF = struct.Struct("=i4xQ")  # int ifc_len; (pad); union { char *; struct ifreq * }


def ifconf(fd: int, size: int, sized_only: bool = False) -> bytes:
    """``SIOCGIFCONF`` on socket ``fd`` with room for ``size`` bytes of ``struct ifreq``
    records: the records (netdevice(7)); with ``sized_only`` a NULL buffer, and as many zero
    bytes as the kernel says the records would take."""
    buf = ctypes.create_string_buffer(max(size, 1))
    arg = bytearray(_IFCONF.pack(size, 0 if sized_only else ctypes.addressof(buf)))
    fcntl.ioctl(fd, SIOCGIFCONF, arg)
    got: int = _IFCONF.unpack(arg)[0]
    return bytes(got) if sized_only else buf.raw[:got]
