"""cgroup v2 membership of the sockets the supervisor makes for a target (cgroups(7)).

A socket belongs to the cgroup v2 of the task that created it (``sk_alloc`` →
``cgroup_sk_alloc``): nft's ``socket cgroupv2``, cgroup-BPF socket hooks and systemd's
``IPAddressDeny=`` all judge it by that. A socket made by the supervisor for a target in
another cgroup must be made from inside the target's: by a short-lived child that joins it
(``supervisor/visitor.py``), never by the supervisor itself, which whoever owns that cgroup
(a delegated subtree) could otherwise freeze or kill. A cgroup's id is the inode number
of its directory (kernfs), and what ``PIDFD_GET_INFO`` reports as ``cgroupid``.
"""

from __future__ import annotations

import errno
import os

from mstack_bpf.linux.ffi import SyscallError

MOUNTINFO = "/proc/self/mountinfo"


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
        if found:
            self.home = os.stat(self._dir(task_path(os.getpid()))).st_ino

    def task_cgroup(self, tid: int) -> int | None:
        """The id of thread ``tid``'s cgroup (where PIDFD_GET_INFO cannot say)."""
        return os.stat(self._dir(task_path(tid))).st_ino if self.home is not None else None

    def procs(self, cgroup: int, tid: int) -> int:
        """A new descriptor of the ``cgroup.procs`` of cgroup ``cgroup``, the one thread
        ``tid`` is in (EAGAIN if it has moved since): writing a pid to it moves that
        process there."""
        path = self._dir(task_path(tid))
        dirfd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if os.fstat(dirfd).st_ino != cgroup:  # it moved since: its next call will do
                raise SyscallError(errno.EAGAIN, "cgroup", f"{path}: the caller moved")
            return os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=dirfd)
        finally:
            os.close(dirfd)

    def _dir(self, path: str) -> str:
        """The directory of cgroup ``path`` under our cgroup2 mount."""
        if self.root != "/" and (path == self.root or path.startswith(self.root + "/")):
            path = path[len(self.root):]
        return self.mount + "/" + path.lstrip("/")
