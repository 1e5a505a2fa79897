"""Interface ioctls answered from another namespace, see netdevice(7).

``SIOCGIF*`` requests take a ``struct ifreq`` (40 bytes); ``SIOCGIFCONF`` a ``struct ifconf``
pointing at a buffer of ``ifreq`` records (or NULL: the kernel then reports the size needed).
The supervisor copies the caller's argument in, issues the same request on a socket of its
own in the chosen namespace, and copies the answer back. It issues it with the caller's
credentials (never its own: ``SIOCGMIIPHY`` checks ``CAP_NET_ADMIN``, and a get naming an
unknown interface makes ``dev_load()`` load a module for a caller holding
``CAP_SYS_MODULE``), on a socket of the caller's kind: the address requests
(``SIOCGIFADDR`` …) are the AF_INET protocol's and answer ``ENOTTY`` on other sockets,
AF_PACKET's excepted, which passes them on to AF_INET.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Callable
from contextlib import AbstractContextManager

from mstack_bpf.linux import pidfd, procmem

SIOCGIFCONF = 0x8912
IFREQ_SIZE = 40
IFREQ_SIZE_COMPAT = 32  # i386: the union holds 16 bytes, enough for every get we answer
IFCONF = struct.Struct("=i4xQ")  # int ifc_len; (pad); union { char *; struct ifreq * }
IFCONF_COMPAT = struct.Struct("=iI")
MAX_IFCONF = 1 << 20
SIOCGMIIPHY = 0x8947
#: gets that check a capability of the caller (net/core/dev_ioctl.c: ns_capable)
CAPABLE_GETS = frozenset({SIOCGMIIPHY})
#: families whose sockets answer the AF_INET address requests (inet_ioctl, packet_ioctl)
_INET_LIKE = (socket.AF_INET, socket.AF_PACKET)


def socket_family(tid: int, fd: int) -> int | None:
    """The family of the caller's descriptor ``fd``; None if it is not a socket."""
    try:
        ours = pidfd.get_fd(tid, fd)
    except OSError:
        return None
    if not stat.S_ISSOCK(os.fstat(ours).st_mode):
        os.close(ours)
        return None
    with socket.socket(fileno=ours) as sock:  # asks the kernel for SO_DOMAIN; closes ours
        return int(sock.family)


def carrier_family(family: int) -> int:
    """The family of the supervisor's socket that answers like the caller's would."""
    return socket.AF_INET if family in _INET_LIKE else socket.AF_UNIX


def answer(tid: int, sock: socket.socket, request: int, argp: int,
           still_valid: Callable[[], bool], rights: AbstractContextManager[None] | None,
           compat: bool = False) -> int:
    """Run ``request`` for the caller ``tid`` on ``sock`` with the caller's ``rights`` (a
    credential switch; None: ours are not the caller's and cannot become them, so a request
    that checks a capability is refused); return the ioctl's value.

    Nothing is written to the caller's memory unless ``still_valid()`` says the caller is
    still the process that asked (its pid could have been reused meanwhile).
    """
    if rights is None:
        if request in CAPABLE_GETS:
            raise OSError(errno.EPERM, "ioctl: the caller's capabilities cannot be taken")
        rights = contextlib.nullcontext()
    if request == SIOCGIFCONF:
        return _ifconf(tid, sock, argp, still_valid, rights, compat)
    size = IFREQ_SIZE_COMPAT if compat else IFREQ_SIZE
    ifreq = procmem.read(tid, argp, size)
    if len(ifreq) != size:
        raise OSError(errno.EFAULT, "ifreq")
    with rights:
        result = fcntl.ioctl(sock.fileno(), request, ifreq.ljust(IFREQ_SIZE, b"\0"))
    if not still_valid():
        raise OSError(errno.ENOENT, "caller gone")
    procmem.write(tid, argp, result[:size])
    return 0


def _ifconf(tid: int, sock: socket.socket, argp: int, still_valid: Callable[[], bool],
            rights: AbstractContextManager[None], compat: bool) -> int:
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
    with rights:
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
