"""pidfds of single threads and the ids ``PIDFD_GET_INFO`` reports, see pidfd_open(2).

A pidfd names one task for as long as it is open: a tid that is reused later cannot make it
name another task. ``PIDFD_GET_INFO`` (Linux 6.13, ``include/uapi/linux/pidfd.h``) returns a
thread's uids and gids with one ioctl, mapped into the caller's user namespace exactly as
``/proc/TID/status`` shows them, without formatting the whole status file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import NamedTuple

from mstack_bpf.linux.ffi import SyscallError, iowr, raw_ioctl, syscall

PIDFD_THREAD = os.O_EXCL  # Linux 6.9
PIDFD_INFO_CREDS = 1 << 1
PIDFD_INFO_CGROUPID = 1 << 2
PIDFS_IOCTL_MAGIC = 0xFF
#: ``struct pidfd_info`` as of Linux 6.13 (PIDFD_INFO_SIZE_VER0); later kernels accept it
_INFO = struct.Struct("=QQIII8Ii")
assert _INFO.size == 64
PIDFD_GET_INFO = iowr(PIDFS_IOCTL_MAGIC, 11, _INFO.size)


class TaskIds(NamedTuple):
    """A thread's ids from ``PIDFD_GET_INFO``: (real, effective, saved, filesystem), and
    the id of its cgroup v2 (None where the kernel did not say)."""

    uids: tuple[int, int, int, int]
    gids: tuple[int, int, int, int]
    cgroup: int | None = None


def open_thread(tid: int) -> int:
    """A close-on-exec pidfd of thread ``tid`` (pidfds are always close-on-exec)."""
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as e:
        raise SyscallError(e.errno or 0, "pidfd_open", str(tid)) from None


NR_pidfd_getfd = 438


def get_fd(tid: int, fd: int, tgid: int | None = None) -> int:
    """A close-on-exec duplicate of thread ``tid``'s descriptor ``fd`` (pidfd_getfd(2):
    needs ptrace access to it); ESRCH if gone, EBADF if ``fd`` is not open there. Before
    Linux 6.9 (no PIDFD_THREAD) the pidfd is its process's, ``tgid`` (threads share their
    descriptors)."""
    try:
        pidfd = open_thread(tid)
    except OSError as e:
        if e.errno != errno.EINVAL or tgid is None:
            raise
        pidfd = os.pidfd_open(tgid)
    try:
        return syscall(NR_pidfd_getfd, pidfd, fd, 0, call="pidfd_getfd")
    finally:
        os.close(pidfd)


_buffer = ctypes.create_string_buffer(_INFO.size)
_buffer_at = ctypes.addressof(_buffer)
_MASK = struct.Struct("=Q")
_CGROUP = struct.Struct("=Q")  # at offset 8
_IDS = struct.Struct("=8I")  # ruid rgid euid egid suid sgid fsuid fsgid
_IDS_AT = 28


def task_ids(pidfd: int) -> TaskIds:
    """The ids of the thread behind ``pidfd``; ESRCH once it has been reaped."""
    _MASK.pack_into(_buffer, 0, PIDFD_INFO_CREDS | PIDFD_INFO_CGROUPID)  # only the mask is read
    if raw_ioctl(pidfd, PIDFD_GET_INFO, _buffer_at) < 0:
        raise SyscallError(ctypes.get_errno(), "ioctl(PIDFD_GET_INFO)")
    mask = _MASK.unpack_from(_buffer)[0]
    if not mask & PIDFD_INFO_CREDS:
        raise SyscallError(errno.ENOSYS, "ioctl(PIDFD_GET_INFO)", "(no credentials)")
    r, rg, e, eg, s, sg, f, fg = _IDS.unpack_from(_buffer, _IDS_AT)
    cgroup = _CGROUP.unpack_from(_buffer, 8)[0] if mask & PIDFD_INFO_CGROUPID else None
    return TaskIds((r, e, s, f), (rg, eg, sg, fg), cgroup)
