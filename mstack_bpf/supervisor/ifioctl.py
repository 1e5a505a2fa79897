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
import errno
import fcntl
import os
import socket
import struct
from contextlib import AbstractContextManager

from mstack_bpf.linux import creds, pidfd, procmem, sockets

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


def socket_family(tid: int, fd: int) -> int:
    """The family of the caller's socket ``fd`` (runs in the slow lane); OSError EBADF if
    ``fd`` is not open, ENOTTY if it is not a socket (what these requests get natively).

    The caller's ``/proc`` link says "socket:" without any filesystem being asked; only then
    is the descriptor taken (pidfd_getfd) and asked its domain. Should the caller have put
    another file there meanwhile, getsockopt answers ENOTSOCK without asking its filesystem
    either, but the close may (a FUSE file's flush): hence the slow lane. Where the link
    cannot be read (a non-dumpable caller under a rootless supervisor), AF_INET answers:
    it serves every request a socket of any family would.
    """
    try:
        link = os.readlink(f"/proc/{tid}/fd/{fd}")
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            return socket.AF_INET
        raise OSError(errno.EBADF, "ioctl: no such descriptor") from None
    if not link.startswith("socket:"):
        raise OSError(errno.ENOTTY, "ioctl: not a socket")
    try:
        ours = pidfd.get_fd(tid, fd, creds.thread_group(tid))
    except OSError:
        raise OSError(errno.EBADF, "ioctl: no such descriptor") from None
    try:
        return sockets.domain(ours)
    except OSError:
        raise OSError(errno.ENOTTY, "ioctl: not a socket") from None
    finally:
        os.close(ours)


def carrier_family(family: int) -> int:
    """The family of the supervisor's socket that answers like the caller's would."""
    return socket.AF_INET if family in _INET_LIKE else socket.AF_UNIX


def answer(tid: int, sock: socket.socket, request: int, argp: int, memory: procmem.Pinned,
           rights: AbstractContextManager[None] | None, compat: bool = False) -> int:
    """Run ``request`` for the caller ``tid`` on ``sock`` with the caller's ``rights`` (a
    credential switch; None: ours are not the caller's and cannot become them, so a request
    that checks a capability is refused); return the ioctl's value.

    The answer is written through ``memory``, the caller's own address space held since
    its call was known valid: never into a process that got its pid later.
    """
    if rights is None:
        if request in CAPABLE_GETS:
            raise OSError(errno.EPERM, "ioctl: the caller's capabilities cannot be taken")
        rights = contextlib.nullcontext()
    if request == SIOCGIFCONF:
        return _ifconf(tid, sock, argp, memory, rights, compat)
    size = IFREQ_SIZE_COMPAT if compat else IFREQ_SIZE
    ifreq = procmem.read(tid, argp, size)
    if len(ifreq) != size:
        raise OSError(errno.EFAULT, "ifreq")
    with rights:
        result = fcntl.ioctl(sock.fileno(), request, ifreq.ljust(IFREQ_SIZE, b"\0"))
    memory.write(argp, result[:size])
    return 0


def _ifconf(tid: int, sock: socket.socket, argp: int, memory: procmem.Pinned,
            rights: AbstractContextManager[None], compat: bool) -> int:
    layout = IFCONF_COMPAT if compat else IFCONF
    raw = procmem.read(tid, argp, layout.size)
    if len(raw) != layout.size:
        raise OSError(errno.EFAULT, "ifconf")
    length, user_buf = layout.unpack(raw)
    length = min(max(length, 0), MAX_IFCONF)  # the kernel takes a negative one as 0 too
    # i386 records are 32 bytes: ask for as many 40-byte ones, then cut each down.
    records = length // (IFREQ_SIZE_COMPAT if compat else IFREQ_SIZE)
    with rights:
        data = sockets.ifconf(sock.fileno(), records * IFREQ_SIZE, sized_only=not user_buf)
    got = len(data)
    if compat:
        data = b"".join(data[i:i + IFREQ_SIZE_COMPAT] for i in range(0, got, IFREQ_SIZE))
    if user_buf:
        memory.write(user_buf, data)
    memory.write(argp, struct.pack("=i", len(data)))
    return 0
