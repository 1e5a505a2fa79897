"""cgroup v2 membership of the sockets the supervisor makes for a target (cgroups(7)).

A socket belongs to the cgroup v2 of the task that created it (``sk_alloc`` →
``cgroup_sk_alloc``): nft's ``socket cgroupv2``, cgroup-BPF socket hooks and systemd's
``IPAddressDeny=`` all judge it by that. A socket made by the supervisor for a target in
another cgroup must be made from inside the target's: by a short-lived child born there
(``supervisor/visitor.py``), never by the supervisor itself, which whoever owns that cgroup
(a delegated subtree) could otherwise freeze or kill. A cgroup's id is the inode number
of its directory (kernfs), and what ``PIDFD_GET_INFO`` reports as ``cgroupid``.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections import OrderedDict

from mstack_bpf.linux import _visit
from mstack_bpf.linux.creds import Switch
from mstack_bpf.linux.ffi import SyscallError

MOUNTINFO = "/proc/self/mountinfo"
#: cgroup directories kept open (supervisor/fdbudget.py counts them)
KEPT = 64


def v2_mount(mountinfo: str = MOUNTINFO) -> tuple[str, str] | None:
    """(mount point, root inside the hierarchy) of the first cgroup2 mount we see."""
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return _unescape(fields[4]), _unescape(fields[3])
    return None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def task_path(tid: int) -> str:
    """Thread ``tid``'s cgroup v2 path (relative to our cgroup namespace's root)."""
    with open(f"/proc/{tid}/cgroup", "rb") as f:
        for line in f:
            if line.startswith(b"0::"):
                return line[3:].rstrip(b"\n").decode("utf-8", "surrogateescape")
    raise SyscallError(errno.ENOENT, "read", f"/proc/{tid}/cgroup: no cgroup v2 line")


class Placer:
    """Runs socket creation inside a target's cgroup; ``None`` ids mean "no cgroup v2"."""

    def __init__(self) -> None:
        found = v2_mount()
        self.mount, self.root = found if found else ("", "/")
        self.home: int | None = None
        #: cgroup id -> its directory (:meth:`directory`); the slow lane's threads ask too
        self._kept: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()
        if found:
            self.home = os.stat(self._dir(task_path(os.getpid()))).st_ino

    def task_cgroup(self, tid: int) -> int | None:
        """The id of thread ``tid``'s cgroup (where PIDFD_GET_INFO cannot say)."""
        return os.stat(self._dir(task_path(tid))).st_ino if self.home is not None else None

    def directory(self, cgroup: int, tid: int) -> int:
        """A new descriptor (ours to close) of the directory of cgroup ``cgroup``, the one
        thread ``tid`` is in (EAGAIN if it has moved since): what clone3's
        ``CLONE_INTO_CGROUP`` takes, and where its ``cgroup.procs`` is. The last
        :data:`KEPT` are kept open: a cgroup's id (its inode) is never reused, and a cgroup
        with a member cannot be removed."""
        with self._lock:
            kept = self._kept.get(cgroup)
            if kept is not None:
                self._kept.move_to_end(cgroup)
                return os.dup(kept)
        path = self._dir(task_path(tid))
        dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if os.fstat(dirfd).st_ino != cgroup:  # it moved since: its next call will do
            os.close(dirfd)
            raise SyscallError(errno.EAGAIN, "cgroup", f"{path}: the caller moved")
        with self._lock:
            if cgroup not in self._kept:
                self._kept[cgroup] = os.dup(dirfd)
                if len(self._kept) > KEPT:
                    os.close(self._kept.popitem(last=False)[1])
        return dirfd

    def close(self) -> None:
        with self._lock:
            for fd in self._kept.values():
                os.close(fd)
            self._kept.clear()

    def _dir(self, path: str) -> str:
        """The directory of cgroup ``path`` under our cgroup2 mount."""
        if self.root != "/" and (path == self.root or path.startswith(self.root + "/")):
            path = path[len(self.root):]
        return self.mount + "/" + path.lstrip("/")


#: where linux/_visit.c's child stopped, as the call that failed
_STEPS = {1: "clone3", 2: "setns(CLONE_NEWNET)", 3: "setgroups", 4: "setresgid",
          5: "setresuid", 6: "capset", 7: "socket", 8: "sendmsg", 9: "socket", 10: "recvmsg"}
#: clone3 failures after which a forked child that moves in may still do: no clone3 or no
#: CLONE_INTO_CGROUP, and EAGAIN (a cgroup at its pids.max: fork counts, a move does not)
_TIMEOUT, _ANSWER, _NO_CHILD = 9, 10, (errno.ENOSYS, errno.EINVAL, errno.EAGAIN)


Ids = tuple[int, int, int, int, int, int]


def _packed(switch: Switch | None) -> tuple[int, Ids, bytes, int, int]:
    """``switch`` as linux/_visit.c takes it: mode, ids, groups (u32 array), capabilities."""
    if switch is None:
        return 0, (0, 0, 0, 0, 0, 0), b"", 0, 0
    if switch.fs is not None:
        return 1, (*switch.fs, 0, 0, 0, 0), b"", 0, 0
    return (2, (*switch.gids, *switch.uids), struct.pack(f"={len(switch.groups)}I",
                                                          *switch.groups),
            switch.cap_eff, switch.cap_prm)


def make_inside(directory: int, netns: int | None, family: int, sock_type: int, protocol: int,
                pair: bool, switch: Switch | None, timeout: float) -> list[int] | None:
    """The socket (or both ends of the pair) made by a child born in the cgroup whose
    directory is ``directory``, in ``netns`` (None: ours; not one owned by another user
    namespace: setns(2) refuses to let a process that shares its memory join that), under
    ``switch`` (None: our credentials), that shares our memory (linux/_visit.c). None: no
    such child here (not x86_64, or no clone3 with CLONE_INTO_CGROUP: Linux 5.7), none
    allowed (EAGAIN: the cgroup is at its pids.max, which a process that moves in may
    exceed; not testable here, where pids is a v1 controller), or it died without a word:
    killed, by a ``cgroup.kill`` now or by one ever made there (Linux 6.18 kills every child
    born there with CLONE_INTO_CGROUP once the cgroup was killed, not a process that moves
    in: its ``kill_seq`` is compared with our cgroup's). Raises the errno of the step that
    failed; EAGAIN when no answer came within ``timeout`` s (a frozen cgroup)."""
    err, step, *fds = _visit.make(
        directory, -1 if netns is None else netns, family, sock_type, protocol, pair,
        *_packed(switch), int(timeout * 1000))
    made = [fd for fd in fds if fd >= 0]
    if err == 0 and len(made) == (2 if pair else 1):
        return made
    for fd in made:
        os.close(fd)
    if (step, err) == (_ANSWER, errno.EPROTO) or (step == 1 and err in _NO_CHILD):
        return None
    if step == _TIMEOUT:
        raise SyscallError(errno.EAGAIN, "socket", "(the caller's cgroup did not let a child "
                                                   "run: frozen?)")
    raise SyscallError(err or errno.EPROTO, _STEPS.get(step, "socket"),
                       "(in the caller's cgroup)")
