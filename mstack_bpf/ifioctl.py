"""Interface ioctls answered from another namespace, see netdevice(7).

``SIOCGIF*`` requests take a ``struct ifreq`` (40 bytes); ``SIOCGIFCONF`` a ``struct ifconf``
pointing at a buffer of ``ifreq`` records (or NULL: the kernel then reports the size needed).
The supervisor copies the caller's argument in, issues the same request on a socket of its
own in the chosen namespace, and copies the answer back.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable

from mstack_bpf.linux import procmem

SIOCGIFCONF = 0x8912
IFREQ_SIZE = 40
IFCONF = struct.Struct("=i4xQ")  # int ifc_len; (pad); union { char *; struct ifreq * }
MAX_IFCONF = 1 << 20


def is_socket(tid: int, fd: int) -> bool:
    try:
        return os.readlink(f"/proc/{tid}/fd/{fd}").startswith("socket:")
    except OSError:
        return False


def answer(tid: int, sock: socket.socket, request: int, argp: int,
           still_valid: Callable[[], bool]) -> int:
    """Run ``request`` for the caller ``tid`` on ``sock``; return the ioctl's value.

    Nothing is written to the caller's memory unless ``still_valid()`` says the caller is
    still the process that asked (its pid could have been reused meanwhile).
    """
    if request == SIOCGIFCONF:
        return _ifconf(tid, sock, argp, still_valid)
    ifreq = procmem.read(tid, argp, IFREQ_SIZE)
    if len(ifreq) != IFREQ_SIZE:
        raise OSError(errno.EFAULT, "ifreq")
    result = fcntl.ioctl(sock.fileno(), request, ifreq)
    if not still_valid():
        raise OSError(errno.ENOENT, "caller gone")
    procmem.write(tid, argp, result)
    return 0


def _ifconf(tid: int, sock: socket.socket, argp: int, still_valid: Callable[[], bool]) -> int:
    raw = procmem.read(tid, argp, IFCONF.size)
    if len(raw) != IFCONF.size:
        raise OSError(errno.EFAULT, "ifconf")
    length, user_buf = IFCONF.unpack(raw)
    if length < 0 or length > MAX_IFCONF:
        raise OSError(errno.EINVAL, "ifconf length")
    buf = ctypes.create_string_buffer(max(length, 1))
    ours = bytearray(IFCONF.pack(length, ctypes.addressof(buf) if user_buf else 0))
    fcntl.ioctl(sock.fileno(), SIOCGIFCONF, ours)
    new_length = IFCONF.unpack(ours)[0]
    if not still_valid():
        raise OSError(errno.ENOENT, "caller gone")
    if user_buf:
        procmem.write(tid, user_buf, buf.raw[:new_length])
    procmem.write(tid, argp, struct.pack("=i", new_length))
    return 0
