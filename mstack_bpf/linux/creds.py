"""Per-thread credential switching with raw system calls (credentials(7), capabilities(7)).

glibc's ``setresuid`` and friends change every thread of the process (they broadcast
SIGSETXID); the raw system calls change only the calling thread, which is what a supervisor
creating one socket for one target needs. A target's credentials are read at every call:
they change during a process's life, so they are never cached. The full set comes from
``/proc/TID/status``; the two ids that name a socket's owner come from one
``PIDFD_GET_INFO`` ioctl where the kernel has it, without formatting the status file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Generic, NamedTuple, TypeVar

from mstack_bpf.linux import pidfd
from mstack_bpf.linux.ffi import syscall

T = TypeVar("T")

NR_setgroups = 116
NR_setresuid = 117
NR_setresgid = 119
NR_setfsuid = 122
NR_setfsgid = 123
NR_capget = 125
NR_capset = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


@dataclass(frozen=True)
class Creds:
    """A thread's credentials as ``/proc/TID/status`` shows them (mapped into our user ns)."""

    uids: tuple[int, int, int, int]  # real, effective, saved, filesystem
    gids: tuple[int, int, int, int]
    groups: tuple[int, ...]
    cap_eff: int
    cap_prm: int
    tid: int = 0
    #: /proc/TID/status was opened for this read, so TID may by now name another task (a
    #: reused tid): the caller must confirm it. A read through a file opened earlier that
    #: still succeeds comes from the task that has held TID all along.
    reopened: bool = True

    @cached_property
    def userns(self) -> int:
        """Inode of the thread's user namespace (read when first asked: it costs a stat)."""
        return os.stat(f"/proc/{self.tid}/ns/user").st_ino


_FIELDS = (b"\nUid:", b"\nGid:", b"\nGroups:", b"\nCapPrm:", b"\nCapEff:")


class _TaskFiles(Generic[T]):
    """Per-thread files kept open (the last ``size`` threads) and read again at every call.

    What is read is generated at each read, so nothing is cached but the open file. A file
    whose task has gone fails (ESRCH) and is reopened by tid once: the answer then says so,
    since the tid may by now name another task.
    """

    def __init__(self, opener: Callable[[int], int], reader: Callable[[int], T],
                 size: int = 64) -> None:
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._open, self._read, self._size = opener, reader, size
        #: the supervisor's slow-lane workers read too (a file is never read while closed)
        self._lock = threading.Lock()

    def read(self, tid: int) -> tuple[T, bool]:
        """What ``reader`` makes of the thread's file, and whether it had to be opened now."""
        with self._lock:
            return self._read_locked(tid)

    def _read_locked(self, tid: int) -> tuple[T, bool]:
        fd = self._fds.get(tid)
        if fd is not None:
            try:
                data = self._read(fd)
            except OSError:
                del self._fds[tid]
                os.close(fd)
            else:
                self._fds.move_to_end(tid)
                return data, False
        fd = self._open(tid)
        try:
            data = self._read(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fds[tid] = fd
        if len(self._fds) > self._size:
            os.close(self._fds.popitem(last=False)[1])
        return data, True

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


_status = _TaskFiles(
    lambda tid: os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC),
    lambda fd: os.pread(fd, 4096, 0))
_pidfds = _TaskFiles(pidfd.open_thread, pidfd.task_ids)
#: PIDFD_GET_INFO and PIDFD_THREAD work (Linux ≥ 6.13); else the status file is parsed
_pidfd_info = True


class FsIds(NamedTuple):
    """The ids a new socket's owner is taken from, whether TID's file was opened now, and
    the id of its cgroup v2 where PIDFD_GET_INFO told it (None: ask /proc)."""

    fsuid: int
    fsgid: int
    reopened: bool
    cgroup: int | None = None


def read_fs_ids(tid: int) -> FsIds:
    """fsuid and fsgid of thread ``tid``, read now (one ioctl where the kernel has
    PIDFD_GET_INFO); raises ``OSError`` (ESRCH, ENOENT) if it is gone."""
    global _pidfd_info
    if _pidfd_info:
        try:
            ids, reopened = _pidfds.read(tid)
            return FsIds(ids.uids[3], ids.gids[3], reopened, ids.cgroup)
        except OSError as e:
            # ESRCH: gone, or a live thread the kernel will not describe to us (some
            # versions refuse one whose parent is outside our pid namespace): /proc decides.
            if e.errno != errno.ESRCH:
                if e.errno not in (errno.EINVAL, errno.ENOTTY, errno.ENOSYS):
                    raise
                _pidfd_info = False  # an older kernel: fall back for good
    creds = read_creds(tid)
    return FsIds(creds.uids[3], creds.gids[3], creds.reopened)


def read_creds(tid: int) -> Creds:
    """Credentials of thread ``tid``, read now; raises ``OSError`` (ENOENT, ESRCH) if gone."""
    text, reopened = _status.read(tid)
    values = []
    for key in _FIELDS:
        start = text.index(key) + len(key)
        values.append(text[start:text.index(b"\n", start)])
    uids = [int(x) for x in values[0].split()]
    gids = [int(x) for x in values[1].split()]
    return Creds(
        uids=(uids[0], uids[1], uids[2], uids[3]),
        gids=(gids[0], gids[1], gids[2], gids[3]),
        groups=tuple(int(x) for x in values[2].split()),
        cap_prm=int(values[3], 16),
        cap_eff=int(values[4], 16),
        tid=tid,
        reopened=reopened,
    )


def thread_group(tid: int) -> int:
    """The thread group (process) id of thread ``tid``: what procfs' ``self`` is for it."""
    text, _ = _status.read(tid)
    start = text.index(b"\nTgid:") + len(b"\nTgid:")
    return int(text[start:text.index(b"\n", start)])


def own_creds() -> Creds:
    return read_creds(int(syscall(186, call="gettid")))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capset(effective: int, permitted: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective, data[1].effective = effective & 0xFFFFFFFF, effective >> 32
    data[0].permitted, data[1].permitted = permitted & 0xFFFFFFFF, permitted >> 32
    syscall(NR_capset, ctypes.addressof(header), ctypes.addressof(data), call="capset")


def _setgroups(groups: tuple[int, ...]) -> None:
    array = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    syscall(NR_setgroups, len(groups), ctypes.addressof(array), call="setgroups")


class Switch(NamedTuple):
    """What taking a target's credentials sets: its filesystem ids only (``fs``), or its
    gids (real, effective, saved), uids (real, effective, and our saved uid), groups and
    capability sets. Applied on a thread and undone (:func:`switched`), or for good by a
    child that only makes a socket (``supervisor/visitor.py``)."""

    fs: tuple[int, int] | None  # fsuid, fsgid
    gids: tuple[int, int, int] = (0, 0, 0)
    uids: tuple[int, int, int] = (0, 0, 0)
    groups: tuple[int, ...] = ()
    cap_eff: int = 0
    cap_prm: int = 0


def filesystem_switch(target: FsIds) -> Switch:
    return Switch((target.fsuid, target.fsgid))


def target_switch(target: Creds, own: Creds) -> Switch:
    """The switch to ``target``'s credentials. The saved uid stays ours so that the
    permitted set survives and the switch can be undone. Capabilities count only in the
    target's own user namespace: a target in another one gets none here, since its CapEff
    would mean more in ours than in its own."""
    cap_eff = target.cap_eff if target.userns == own.userns else 0
    return Switch(None, target.gids[:3], (target.uids[0], target.uids[1], own.uids[2]),
                  target.groups, cap_eff & own.cap_prm, own.cap_prm)


def take(switch: Switch) -> None:
    """Apply ``switch`` to this thread (raw calls: this thread only)."""
    if switch.fs is not None:
        syscall(NR_setfsuid, switch.fs[0], call="setfsuid")
        syscall(NR_setfsgid, switch.fs[1], call="setfsgid")
        return
    _setgroups(switch.groups)
    syscall(NR_setresgid, *switch.gids, call="setresgid")
    syscall(NR_setresuid, *switch.uids, call="setresuid")
    _capset(switch.cap_eff, switch.cap_prm)


@contextmanager
def as_filesystem_user(target: FsIds) -> Iterator[None]:
    """Create files (sockets) owned by the target: enough for TCP, UDP, UNIX and netlink."""
    old_uid = syscall(NR_setfsuid, target.fsuid, call="setfsuid")
    old_gid = syscall(NR_setfsgid, target.fsgid, call="setfsgid")
    try:
        yield
    finally:
        syscall(NR_setfsgid, old_gid, call="setfsgid")
        syscall(NR_setfsuid, old_uid, call="setfsuid")


@contextmanager
def switched(switch: Switch, own: Creds) -> Iterator[None]:
    """``switch`` taken on this thread only, and ours (``own``) given back."""
    if switch.fs is not None:
        with as_filesystem_user(FsIds(*switch.fs, reopened=False)):
            yield
        return
    try:  # a step that fails half-way is undone too: the thread must never keep them
        take(switch)
        yield
    finally:
        syscall(NR_setresuid, own.uids[0], own.uids[1], own.uids[2], call="setresuid")
        _capset(own.cap_eff, own.cap_prm)
        syscall(NR_setresgid, own.gids[0], own.gids[1], own.gids[2], call="setresgid")
        _setgroups(own.groups)
