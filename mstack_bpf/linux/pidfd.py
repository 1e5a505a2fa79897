"""pidfds of single threads and the ids ``PIDFD_GET_INFO`` reports, see pidfd_open(2).

A pidfd names one task for as long as it is open: a tid that is reused later cannot make it
name another task. ``PIDFD_GET_INFO`` (Linux 6.13, ``include/uapi/linux/pidfd.h``) returns a
thread's uids and gids with one ioctl, mapped into the caller's user namespace exactly as
``/proc/TID/status`` shows them, without formatting the whole status file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from mstack_bpf.linux._ffi import SyscallError, iowr

PIDFD_THREAD = os.O_EXCL  # Linux 6.9
PIDFD_INFO_CREDS = 1 << 1
PIDFS_IOCTL_MAGIC = 0xFF
#: ``struct pidfd_info`` as of Linux 6.13 (PIDFD_INFO_SIZE_VER0); later kernels accept it
_INFO = struct.Struct("=QQIII8Ii")
assert _INFO.size == 64
PIDFD_GET_INFO = iowr(PIDFS_IOCTL_MAGIC, 11, _INFO.size)


@dataclass(frozen=True)
class TaskIds:
    """A thread's ids from ``PIDFD_GET_INFO``: (real, effective, saved, filesystem)."""

    uids: tuple[int, int, int, int]
    gids: tuple[int, int, int, int]


def open_thread(tid: int) -> int:
    """A close-on-exec pidfd of thread ``tid`` (pidfds are always close-on-exec)."""
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as e:
        raise SyscallError(e.errno or 0, "pidfd_open", str(tid)) from None


_buffer = bytearray(_INFO.size)


def task_ids(pidfd: int) -> TaskIds:
    """The ids of the thread behind ``pidfd``; ESRCH once it has been reaped."""
    _INFO.pack_into(_buffer, 0, PIDFD_INFO_CREDS, *([0] * 13))
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, _buffer, True)
    except OSError as e:
        raise SyscallError(e.errno or 0, "ioctl(PIDFD_GET_INFO)") from None
    fields = _INFO.unpack_from(_buffer)
    if not fields[0] & PIDFD_INFO_CREDS:
        raise SyscallError(errno.ENOSYS, "ioctl(PIDFD_GET_INFO)", "(no credentials)")
    r, e_, s, f = fields[5], fields[7], fields[9], fields[11]
    return TaskIds(uids=(r, e_, s, f), gids=(fields[6], fields[8], fields[10], fields[12]))
