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
IFREQ_SIZE_COMPAT = 32  # i386: the union holds 16 bytes, enough for every get we answer
IFCONF = struct.Struct("=i4xQ")  # int ifc_len; (pad); union { char *; struct ifreq * }
IFCONF_COMPAT = struct.Struct("=iI")
MAX_IFCONF = 1 << 20


def is_socket(tid: int, fd: int) -> bool:
    try:
        return os.readlink(f"/proc/{tid}/fd/{fd}").startswith("socket:")
    except OSError:
        return False


def answer(tid: int, sock: socket.socket, request: int, argp: int,
           still_valid: Callable[[], bool], compat: bool = False) -> int:
    """Run ``request`` for the caller ``tid`` on ``sock``; return the ioctl's value.

    Nothing is written to the caller's memory unless ``still_valid()`` says the caller is
    still the process that asked (its pid could have been reused meanwhile).
    """
    if request == SIOCGIFCONF:
        return _ifconf(tid, sock, argp, still_valid, compat)
    size = IFREQ_SIZE_COMPAT if compat else IFREQ_SIZE
    ifreq = procmem.read(tid, argp, size)
    if len(ifreq) != size:
        raise OSError(errno.EFAULT, "ifreq")
    result = fcntl.ioctl(sock.fileno(), request, ifreq.ljust(IFREQ_SIZE, b"\0"))
    if not still_valid():
        raise OSError(errno.ENOENT, "caller gone")
    procmem.write(tid, argp, result[:size])
    return 0


def _ifconf(tid: int, sock: socket.socket, argp: int, still_valid: Callable[[], bool],
            compat: bool) -> int:
    layout = IFCONF_COMPAT if compat else IFCONF
    raw = procmem.read(tid, argp, layout.size)
    if len(raw) != layout.size:
        raise OSError(errno.EFAULT, "ifconf")
    length, user_buf = layout.unpack(raw)
    if length < 0 or length > MAX_IFCONF:
        raise OSError(errno.EINVAL, "ifconf length")
    # i386 records are 32 bytes: ask for as many 40-byte ones, then cut each down.
    records = length // (IFREQ_SIZE_COMPAT if compat else IFREQ_SIZE)
    buf = ctypes.create_string_buffer(max(records * IFREQ_SIZE, 1))
    ours = bytearray(IFCONF.pack(records * IFREQ_SIZE, ctypes.addressof(buf) if user_buf else 0))
    fcntl.ioctl(sock.fileno(), SIOCGIFCONF, ours)
    got = IFCONF.unpack(ours)[0]
    data = buf.raw[:got]
    if compat:
        data = b"".join(data[i:i + IFREQ_SIZE_COMPAT] for i in range(0, got, IFREQ_SIZE))
    if not still_valid():
        raise OSError(errno.ENOENT, "caller gone")
    if user_buf:
        procmem.write(tid, user_buf, data)
    procmem.write(tid, argp, struct.pack("=i", len(data)))
    return 0
