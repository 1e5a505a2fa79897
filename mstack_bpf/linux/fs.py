"""Opening paths without side effects, and inside another process's root.

``O_PATH`` opens name a file without opening it (a FIFO does not block, a terminal does not
become anyone's controlling tty, a device is not touched); ``openat2(2)`` with
``RESOLVE_IN_ROOT`` resolves a path as a process whose root is ``root_fd`` would: ``..``
stops at that root and absolute symlinks start from it (``linux/openat2.h``). ``statx(2)``
gives a file's mount id, ``fstatfs(2)`` its filesystem type (``linux/magic.h``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import threading
from collections.abc import Callable
from typing import NamedTuple

from mstack_bpf.linux.ffi import SyscallError, libc

NR_openat2 = 437
NR_statx = 332
RESOLVE_NO_XDEV = 0x01
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
PROC_ROOT_INO = 1  # procfs' root directory, in every procfs mount
AT_FDCWD = -100
STATX_INO = 0x100
STATX_MNT_ID = 0x1000
PROC_SUPER_MAGIC = 0x9FA0
NSFS_MAGIC = 0x6E736673

_syscall = libc.syscall
_syscall.restype = ctypes.c_long
class Statfs(ctypes.Structure):
    """``struct statfs`` (x86_64, ``asm-generic/statfs.h``)."""

    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long),
                ("f_blocks", ctypes.c_ulong), ("f_bfree", ctypes.c_ulong),
                ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2),
                ("f_namelen", ctypes.c_long), ("f_frsize", ctypes.c_long),
                ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("reserved", ctypes.c_int32)]


class Statx(ctypes.Structure):
    """``struct statx`` (``linux/stat.h``), the fields up to ``stx_mnt_id`` and room for
    the rest (256 bytes in all)."""

    _fields_ = [("stx_mask", ctypes.c_uint32), ("stx_blksize", ctypes.c_uint32),
                ("stx_attributes", ctypes.c_uint64), ("stx_nlink", ctypes.c_uint32),
                ("stx_uid", ctypes.c_uint32), ("stx_gid", ctypes.c_uint32),
                ("stx_mode", ctypes.c_uint16), ("spare0", ctypes.c_uint16),
                ("stx_ino", ctypes.c_uint64), ("stx_size", ctypes.c_uint64),
                ("stx_blocks", ctypes.c_uint64), ("stx_attributes_mask", ctypes.c_uint64),
                ("stx_atime", _StatxTimestamp), ("stx_btime", _StatxTimestamp),
                ("stx_ctime", _StatxTimestamp), ("stx_mtime", _StatxTimestamp),
                ("stx_rdev_major", ctypes.c_uint32), ("stx_rdev_minor", ctypes.c_uint32),
                ("stx_dev_major", ctypes.c_uint32), ("stx_dev_minor", ctypes.c_uint32),
                ("stx_mnt_id", ctypes.c_uint64), ("spare", ctypes.c_uint64 * 13)]


assert ctypes.sizeof(Statx) == 256 and Statx.stx_mnt_id.offset == 144
assert ctypes.sizeof(Statfs) == 120


_fstatfs = libc.fstatfs
_fstatfs.restype = ctypes.c_int


class _OpenHow(ctypes.Structure):
    """``struct open_how`` (linux/openat2.h)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    fd: int = _syscall(ctypes.c_long(NR_openat2), ctypes.c_int(dir_fd), os.fsencode(path),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        raise SyscallError(ctypes.get_errno(), "openat2", path)
    return fd


def open_path(path: str, dir_fd: int | None = None) -> int:
    """An ``O_PATH`` descriptor of ``path`` (symlinks, magic ones too, are followed)."""
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        raise SyscallError(e.errno or errno.EIO, "open", path) from None


def open_in_root(root_fd: int, path: str,
                 proc_self: Callable[[bool], str] | None = None) -> int:
    """An ``O_PATH`` descriptor of ``path`` resolved with ``root_fd`` as the root.

    ``RESOLVE_IN_ROOT`` also refuses magic links (EXDEV), yet ``/proc/PID/ns/net`` is one:
    a path whose *last* component is a symlink inside a procfs directory reached in the
    root is followed from that directory. Following a proc link cannot walk out of the root
    by name; it jumps to the object itself (a namespace, an open file, a directory).

    procfs' ``self`` is whoever reads it, here this process. A final link reached through
    it (``/dev/fd/N`` is ``/proc/self/fd/N``) is taken from the directory ``proc_self``
    gives for ``self`` (False) or ``thread-self`` (True) instead, as the task it stands for
    would have seen it; without ``proc_self``, refused."""
    path = path.lstrip("/") or "."
    try:
        return _openat2(root_fd, path, os.O_PATH, RESOLVE_IN_ROOT)
    except SyscallError as e:
        # ENOENT too: through our "self", a name the task has may be missing in ours
        if e.errno not in (errno.EXDEV, errno.ELOOP, errno.ENOENT):
            raise
        parent, base = os.path.split(path)
        if base in ("", ".", ".."):
            raise
        failure = e
    try:
        dir_fd = _openat2(root_fd, parent or ".", os.O_PATH | os.O_DIRECTORY, RESOLVE_IN_ROOT)
    except SyscallError:
        raise failure from None
    try:
        if fs_type(dir_fd) != PROC_SUPER_MAGIC:
            raise failure
        own = _own_entry(dir_fd)
        if own is not None:  # "self" was resolved as this process: make it proc_self's
            thread, entry = own
            if proc_self is None or not _OWN_LINK.fullmatch(f"{entry}/{base}"):
                raise SyscallError(errno.ENOENT, "openat2", path)
            return open_path(f"{proc_self(thread)}/{entry}/{base}")
        if failure.errno == errno.ENOENT:
            raise failure
        if not stat.S_ISLNK(os.stat(base, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise SyscallError(errno.EXDEV, "openat2", path)
        return open_path(base, dir_fd)
    finally:
        os.close(dir_fd)


def _own_entry(dir_fd: int) -> tuple[bool, str] | None:
    """Where procfs directory ``dir_fd`` is in this very process's own entry: (True if in
    our thread's ``task/TID``; the rest: ``""``, ``fd``, ``ns``...), in whatever procfs mount
    and pid namespace it was reached; None if it is not in ours. ``..`` is walked up inside
    its mount to that procfs' root (inode 1), whose ``self`` link names us as that procfs
    sees us. A directory from which the root cannot be reached that way (a bind mount of a
    procfs subdirectory, which could be ours) is refused: ENOENT."""
    depth, current = 0, dir_fd
    try:
        while os.fstat(current).st_ino != PROC_ROOT_INO:
            if depth == 4:  # /proc/PID/task/TID/ns is four below the root
                raise SyscallError(errno.ENOENT, "openat2", "(procfs root not reached)")
            up = _openat2(current, "..", os.O_PATH | os.O_DIRECTORY, RESOLVE_NO_XDEV)
            if current != dir_fd:
                os.close(current)
            depth, current = depth + 1, up
        try:
            me = os.readlink("self", dir_fd=current)
        except OSError:
            return None  # we are not in that procfs' pid namespace: nothing there is ours
    except SyscallError as e:
        raise SyscallError(errno.ENOENT, "openat2", f"(procfs root: {e.strerror})") from None
    finally:
        if current != dir_fd:
            os.close(current)
    # same mount all the way up: the last names of the path are the directories walked
    parts = os.readlink(f"/proc/self/fd/{dir_fd}").split("/")
    below = parts[len(parts) - depth:] if depth else []
    if not below or below[0] != me:
        return None
    # thread-self of whichever supervisor thread walks (the loop, or a slow-lane worker)
    thread = below[1:3] == ["task", str(threading.get_native_id())]
    return thread, "/".join(below[3:] if thread else below[1:])


_OWN_LINK = re.compile(r"ns/[a-z_]+|fd/[0-9]+")


def open_beneath(dir_fd: int, path: str) -> int:
    """An ``O_PATH`` descriptor of relative ``path`` that may not leave ``dir_fd`` (EXDEV
    for ``..`` above it or an absolute symlink)."""
    return _openat2(dir_fd, path, os.O_PATH, RESOLVE_BENEATH)


def fs_type(fd: int) -> int:
    """``f_type`` of the filesystem ``fd`` is on (works on ``O_PATH`` descriptors)."""
    buf = Statfs()
    if _fstatfs(fd, ctypes.byref(buf)) < 0:
        raise SyscallError(ctypes.get_errno(), "fstatfs")
    value: int = buf.f_type
    return value


class MountedInode(NamedTuple):
    """A file's identity including its mount: the same directory bind-mounted elsewhere is
    another place to walk ``..`` from."""

    mnt_id: int
    dev: int
    ino: int


def mounted_inode(path: str) -> MountedInode:
    """``statx(2)`` mount id, device and inode of ``path`` (symlinks followed)."""
    buf = Statx()
    if _syscall(ctypes.c_long(NR_statx), ctypes.c_int(AT_FDCWD), os.fsencode(path),
                ctypes.c_int(0), ctypes.c_uint(STATX_INO | STATX_MNT_ID), ctypes.byref(buf)) < 0:
        raise SyscallError(ctypes.get_errno(), "statx", path)
    mask = buf.stx_mask
    if not mask & STATX_MNT_ID:
        raise SyscallError(errno.ENOSYS, "statx", f"{path}: no mount id")
    ino, major, minor, mnt_id = buf.stx_ino, buf.stx_dev_major, buf.stx_dev_minor, buf.stx_mnt_id
    return MountedInode(mnt_id, os.makedev(major, minor), ino)
