"""seccomp(2) and the user-notification listener, see seccomp_unotify(2).

Structures mirror ``include/uapi/linux/seccomp.h``; their sizes are checked against
``SECCOMP_GET_NOTIF_SIZES`` by :func:`check_notif_sizes`. The libseccomp bindings are not used:
version 2.5.4 has no ADDFD, rejects a rule on syscall -5 and compares all 64 bits of an argument.
"""

from __future__ import annotations

import ctypes
import enum
import struct
from typing import NamedTuple

from mstack_bpf.linux import _colocate, _fastpath
from mstack_bpf.linux.ffi import SyscallError, ioctl, ioctl_value, iow, iowr, raw_ioctl, syscall
from mstack_bpf.linux.sched import CpuSet
from mstack_bpf.seccomp.program import (
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_USER_NOTIF,
    Instruction,
)

NR_seccomp = 317

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_GET_NOTIF_SIZES = 3


SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SETFD = 1 << 0
SECCOMP_ADDFD_FLAG_SEND = 1 << 1
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1


class SeccompData(ctypes.Structure):
    """``struct seccomp_data``."""

    _fields_ = [
        ("nr", ctypes.c_int32),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    ]


class SeccompNotif(ctypes.Structure):
    """``struct seccomp_notif``."""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("data", SeccompData),
    ]


class SeccompNotifResp(ctypes.Structure):
    """``struct seccomp_notif_resp``."""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("val", ctypes.c_int64),
        ("error", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class SeccompNotifAddfd(ctypes.Structure):
    """``struct seccomp_notif_addfd``."""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("srcfd", ctypes.c_uint32),
        ("newfd", ctypes.c_uint32),
        ("newfd_flags", ctypes.c_uint32),
    ]


class SeccompNotifSizes(ctypes.Structure):
    """``struct seccomp_notif_sizes``."""

    _fields_ = [
        ("seccomp_notif", ctypes.c_uint16),
        ("seccomp_notif_resp", ctypes.c_uint16),
        ("seccomp_data", ctypes.c_uint16),
    ]


class SockFilter(ctypes.Structure):
    """``struct sock_filter`` (linux/filter.h)."""

    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    """``struct sock_fprog`` (linux/filter.h)."""

    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


_MAGIC = ord("!")
IOCTL_NOTIF_RECV = iowr(_MAGIC, 0, ctypes.sizeof(SeccompNotif))
IOCTL_NOTIF_SEND = iowr(_MAGIC, 1, ctypes.sizeof(SeccompNotifResp))
IOCTL_NOTIF_ID_VALID = iow(_MAGIC, 2, 8)
IOCTL_NOTIF_ADDFD = iow(_MAGIC, 3, ctypes.sizeof(SeccompNotifAddfd))
IOCTL_NOTIF_SET_FLAGS = iow(_MAGIC, 4, 8)


class Action(enum.IntEnum):
    KILL_PROCESS = SECCOMP_RET_KILL_PROCESS
    ERRNO = SECCOMP_RET_ERRNO
    USER_NOTIF = SECCOMP_RET_USER_NOTIF
    ALLOW = SECCOMP_RET_ALLOW


def check_notif_sizes() -> None:
    """Raise if the kernel's notification structures differ from the mirrors here."""
    sizes = SeccompNotifSizes()
    syscall(NR_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, ctypes.addressof(sizes),
            call="seccomp(SECCOMP_GET_NOTIF_SIZES)")
    ours = (ctypes.sizeof(SeccompNotif), ctypes.sizeof(SeccompNotifResp),
            ctypes.sizeof(SeccompData))
    theirs = (sizes.seccomp_notif, sizes.seccomp_notif_resp, sizes.seccomp_data)
    if ours[0] > theirs[0] or ours[1] > theirs[1] or ours[2] != theirs[2]:
        raise RuntimeError(f"seccomp structure sizes differ: ours {ours}, kernel {theirs}")


def action_available(action: int) -> bool:
    """Whether the kernel knows ``action`` (``SECCOMP_GET_ACTION_AVAIL``)."""
    value = ctypes.c_uint32(action)
    try:
        syscall(NR_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.addressof(value),
                call="seccomp(SECCOMP_GET_ACTION_AVAIL)")
    except OSError:
        return False
    return True


def install_filter(program: list[Instruction], flags: int) -> int:
    """Load ``program`` for the calling thread; return the listener fd (or 0 without one)."""
    raw = b"".join(ins.pack() for ins in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    prog = SockFprog(len(program), ctypes.cast(buf, ctypes.POINTER(SockFilter)))
    return syscall(NR_seccomp, SECCOMP_SET_MODE_FILTER, flags, ctypes.addressof(prog),
                   call="seccomp(SECCOMP_SET_MODE_FILTER)")


_NOTIF_SIZE = ctypes.sizeof(SeccompNotif)
_NOTIF_ZEROS = bytes(_NOTIF_SIZE)
# Replies are packed with struct into the ctypes buffers (addresses taken once): for calls
# made at every notification, a fraction of the cost of ctypes field assignments.
_RESP = struct.Struct("=QqiI")
_ADDFD = struct.Struct("=QIIII")
assert (_RESP.size, _ADDFD.size) == (ctypes.sizeof(SeccompNotifResp),
                                     ctypes.sizeof(SeccompNotifAddfd))


class Narrowed(NamedTuple):
    """What :meth:`Listener.addfd_narrowed` did: the fd number in the target (-1 if ADDFD
    failed), and the errno (0: none) of ADDFD, of giving the target its CPUs back and of
    completing the call. Reported rather than raised: a failed restore must be known even
    when ADDFD failed too."""

    fd: int
    addfd_errno: int
    restore_errno: int
    send_errno: int


#: one answer known from a call's registers alone, as ``_fastpath.c`` reads it (struct answer):
#: arch, syscall number, the first three arguments, the action, the errno to fail with, and for
#: a socket to make: the namespace's inode, its family, type and protocol
_ANSWER = struct.Struct("=Ii3QiiQiiii")
assert _ANSWER.size == 64
_CONTINUE, _FAIL, _CREATE = 0, 1, 2

AnswerKey = tuple[int, int, int, int, int]


class Answers:
    """The calls the C loop (:meth:`Listener.serve`) may answer without Python: at most
    :data:`MAX` of them, the newest kept."""

    MAX = 32

    def __init__(self) -> None:
        self._known: dict[AnswerKey, bytes] = {}
        self.packed = b""

    def cont(self, arch: int, nr: int, args: tuple[int, int, int]) -> None:
        """Answer with CONTINUE."""
        self._put((arch, nr, *args), _CONTINUE, 0, 0, (0, 0, 0))

    def fail(self, arch: int, nr: int, args: tuple[int, int, int], error: int) -> None:
        """Fail with errno ``error``."""
        self._put((arch, nr, *args), _FAIL, error, 0, (0, 0, 0))

    def create(self, arch: int, nr: int, args: tuple[int, int, int], ns: int,
               made: tuple[int, int, int]) -> None:
        """Make socket ``made`` (family, type, protocol) in namespace ``ns`` and inject it,
        for the caller and only where :class:`Caller` says it is ours to make."""
        self._put((arch, nr, *args), _CREATE, 0, ns, made)

    def _put(self, key: AnswerKey, action: int, error: int, ns: int,
             made: tuple[int, int, int]) -> None:
        entry = _ANSWER.pack(*key, action, error, ns, *made, 0)
        if self._known.get(key) == entry:
            return
        self._known.pop(key, None)
        if len(self._known) >= self.MAX:
            del self._known[next(iter(self._known))]
        self._known[key] = entry
        self.packed = b"".join(self._known.values())

    def clear(self) -> None:
        self._known.clear()
        self.packed = b""


class Caller(NamedTuple):
    """What the C loop needs to make a socket (an :meth:`Answers.create`) itself: the
    namespace its thread is in, the caller Python served last and a pidfd of it, whether the
    caller's fsuid and fsgid must equal ``fsuid``/``fsgid`` (a privileged supervisor), our
    cgroup v2 id (0: none), and whether to inject narrowed to ``cpus`` (co-location), for a
    caller that runs on exactly ``online``."""

    ns: int
    tid: int
    pidfd: int
    check_ids: bool
    fsuid: int
    fsgid: int
    cgroup: int
    narrow: bool
    cpus: bytes
    online: bytes


#: a Caller that makes nothing
NO_CALLER = Caller(0, 0, -1, True, 0, 0, 0, False, b"", b"")


class Served(enum.IntEnum):
    """Why :meth:`Listener.serve` returned (``_fastpath.c``)."""

    NOTIFICATION = 0  # a call it had no answer for, in :attr:`Listener.notif`
    OTHER_READY = 1
    TIMED_OUT = 2
    HUNG_UP = 3
    BOTH = 4  # a call in :attr:`Listener.notif`, and one of the others is ready too


class Listener:
    """The supervisor's side of a notification fd, with preallocated, reused buffers."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.notif = SeccompNotif()
        self._resp = SeccompNotifResp()
        self._addfd = SeccompNotifAddfd()
        # addresses taken once: these calls run for every notification
        self._notif_at = ctypes.addressof(self.notif)
        self._notif_bytes = memoryview(self.notif).cast("B")  # zeroed by slice assignment
        self._resp_at = ctypes.addressof(self._resp)
        self._addfd_at = ctypes.addressof(self._addfd)

    def set_sync_wakeup(self) -> None:
        """Ask for synchronous wake-ups on replies; the flag is passed by value."""
        ioctl_value(self.fd, IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
                    "ioctl(SECCOMP_IOCTL_NOTIF_SET_FLAGS)")

    def serve(self, others: tuple[int, ...], timeout_ms: int, answers: bytes,
              caller: Caller = NO_CALLER) -> tuple[Served, int]:
        """Wait for calls and for ``others`` (up to 16 fds), answering every call found in
        ``answers`` (:attr:`Answers.packed`) in C; return what needs Python, and the errno
        (0: none) of the last failure to give a narrowed caller its CPUs back. After
        :attr:`Served.NOTIFICATION` (or :attr:`Served.BOTH`) the call is in :attr:`notif`, as
        :meth:`recv` leaves it.
        ``timeout_ms`` < 0: no timeout."""
        outcome, err, _answered, restore_err = _fastpath.serve(
            self.fd, self._notif_at, others, timeout_ms, answers, caller)
        if err:
            raise SyscallError(err, "ioctl(SECCOMP_IOCTL_NOTIF_RECV/SEND) or poll")
        return Served(outcome), restore_err

    def recv(self) -> SeccompNotif:
        """Receive one notification. The buffer must be zeroed first, or the kernel says EINVAL."""
        self._notif_bytes[:] = _NOTIF_ZEROS  # a slice copy: cheaper than ctypes.memset
        if raw_ioctl(self.fd, IOCTL_NOTIF_RECV, self._notif_at) < 0:
            raise SyscallError(ctypes.get_errno(), "ioctl(SECCOMP_IOCTL_NOTIF_RECV)")
        return self.notif

    def id_valid(self, notif_id: int) -> bool:
        """Whether call ``notif_id`` is still pending (its caller alive and waiting). Any
        thread may ask (the slow lane's workers do): the id gets a buffer of its own."""
        try:
            ioctl(self.fd, IOCTL_NOTIF_ID_VALID, ctypes.c_uint64(notif_id),
                  "ioctl(SECCOMP_IOCTL_NOTIF_ID_VALID)")
        except OSError:
            return False
        return True

    def send(self, notif_id: int, val: int = 0, error: int = 0, cont: bool = False) -> None:
        """Complete a call: ``error`` is a negative errno, or ``val`` the return value."""
        _RESP.pack_into(self._resp, 0, notif_id, val, error,
                        SECCOMP_USER_NOTIF_FLAG_CONTINUE if cont else 0)
        if raw_ioctl(self.fd, IOCTL_NOTIF_SEND, self._resp_at) < 0:
            raise SyscallError(ctypes.get_errno(), "ioctl(SECCOMP_IOCTL_NOTIF_SEND)")

    def addfd(self, notif_id: int, srcfd: int, cloexec: bool, newfd: int | None = None,
              send: bool = True) -> int:
        """Install ``srcfd`` in the target; with ``send`` also complete the call with it."""
        flags = (SECCOMP_ADDFD_FLAG_SEND if send else 0) | (
            SECCOMP_ADDFD_FLAG_SETFD if newfd is not None else 0)
        _ADDFD.pack_into(self._addfd, 0, notif_id, flags, srcfd, newfd or 0,
                         0o2000000 if cloexec else 0)  # O_CLOEXEC
        fd: int = raw_ioctl(self.fd, IOCTL_NOTIF_ADDFD, self._addfd_at)
        if fd < 0:
            raise SyscallError(ctypes.get_errno(), "ioctl(SECCOMP_IOCTL_NOTIF_ADDFD)")
        return fd

    def addfd_narrowed(self, notif_id: int, tid: int, srcfd: int, cloexec: bool,
                       cpus: CpuSet, online: CpuSet) -> Narrowed | None:
        """Install ``srcfd`` in ``tid`` and complete the call with it, ``tid`` allowed only
        ``cpus`` while it installs: only if its affinity is exactly ``online`` and we may
        change it (else None, nothing done). Then it gets every CPU back, before SEND.
        """
        done = _colocate.narrowed_addfd(self.fd, notif_id, tid, srcfd, cloexec, cpus.raw,
                                        online.raw)
        return None if done is None else Narrowed._make(done)
