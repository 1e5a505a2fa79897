"""Per-thread credential switching with raw system calls (credentials(7), capabilities(7)).

glibc's ``setresuid`` and friends change every thread of the process (they broadcast
SIGSETXID); the raw system calls change only the calling thread, which is what a supervisor
creating one socket for one target needs. A target's credentials are read from
``/proc/TID/status`` at every call: they change during a process's life, so they are never
cached.
"""

from __future__ import annotations

import ctypes
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

from mstack_bpf.linux._ffi import syscall

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


class _StatusFiles:
    """Open ``/proc/TID/status`` files, re-read with pread at every call.

    The content is generated at each read, so nothing is cached but the open file; a file
    whose task has gone (or whose pid was reused) fails with ESRCH and is reopened.
    """

    def __init__(self, size: int = 64) -> None:
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._size = size

    def read(self, tid: int) -> tuple[bytes, bool]:
        """The file's content, and whether it had to be opened now."""
        reopened = False
        fd = self._fds.pop(tid, None)
        if fd is not None:
            try:
                data = os.pread(fd, 4096, 0)
            except OSError:
                os.close(fd)
                fd = None
        if fd is None:
            reopened = True
            fd = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.pread(fd, 4096, 0)
            except BaseException:
                os.close(fd)
                raise
        self._fds[tid] = fd
        if len(self._fds) > self._size:
            os.close(self._fds.popitem(last=False)[1])
        return data, reopened

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


_status = _StatusFiles()


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


@contextmanager
def as_filesystem_user(target: Creds) -> Iterator[None]:
    """Create files (sockets) owned by the target: enough for TCP, UDP, UNIX and netlink."""
    old_uid = syscall(NR_setfsuid, target.uids[3], call="setfsuid")
    old_gid = syscall(NR_setfsgid, target.gids[3], call="setfsgid")
    try:
        yield
    finally:
        syscall(NR_setfsgid, old_gid, call="setfsgid")
        syscall(NR_setfsuid, old_uid, call="setfsuid")


@contextmanager
def as_target(target: Creds, own: Creds) -> Iterator[None]:
    """Take the target's uids, gids, groups and effective capabilities, on this thread only.

    The saved uid stays ours so that the permitted set survives and the switch can be undone.
    Capabilities count only in the target's own user namespace: a target in another one
    gets none here, since its CapEff would mean more in ours than in its own.
    """
    cap_eff = target.cap_eff if target.userns == own.userns else 0
    try:  # a step that fails half-way is undone too: the thread must never keep them
        _setgroups(target.groups)
        syscall(NR_setresgid, target.gids[0], target.gids[1], target.gids[2], call="setresgid")
        syscall(NR_setresuid, target.uids[0], target.uids[1], own.uids[2], call="setresuid")
        _capset(cap_eff & own.cap_prm, own.cap_prm)
        yield
    finally:
        syscall(NR_setresuid, own.uids[0], own.uids[1], own.uids[2], call="setresuid")
        _capset(own.cap_eff, own.cap_prm)
        syscall(NR_setresgid, own.gids[0], own.gids[1], own.gids[2], call="setresgid")
        _setgroups(own.groups)
