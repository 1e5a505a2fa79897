"""cgroup v2 membership of the sockets the supervisor makes for a target (cgroups(7)).

A socket belongs to the cgroup v2 of the task that created it (``sk_alloc`` →
``cgroup_sk_alloc``): nft's ``socket cgroupv2``, cgroup-BPF socket hooks and systemd's
``IPAddressDeny=`` all judge it by that. A socket made by the supervisor for a target in
another cgroup must be made from inside the target's: the making process visits it (writes
its pid to ``cgroup.procs``) and goes home afterwards, so that it never stays where a freeze
or a pids limit of someone else's cgroup would catch it. A cgroup's id is the inode number
of its directory (kernfs), and what ``PIDFD_GET_INFO`` reports as ``cgroupid``.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from mstack_bpf.linux.ffi import SyscallError

MOUNTINFO = "/proc/self/mountinfo"
OPEN_CGROUPS = 64


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
        self._procs: OrderedDict[int, int] = OrderedDict()  # cgroup id → its cgroup.procs
        self.home: int | None = None
        if found:
            self.home = os.stat(self._dir(task_path(os.getpid()))).st_ino

    def task_cgroup(self, tid: int) -> int | None:
        """The id of thread ``tid``'s cgroup (where PIDFD_GET_INFO cannot say)."""
        return os.stat(self._dir(task_path(tid))).st_ino if self.home is not None else None

    @contextmanager
    def inside(self, pid: int, cgroup: int, tid: int) -> Iterator[None]:
        """Process ``pid`` (ours or our helper's) in cgroup ``cgroup``, the one thread
        ``tid`` is in, for the duration; fails (the errno of the write) rather than make a
        socket elsewhere."""
        home = self._procs_of(self.home or 0, os.getpid())  # opened before we leave it
        _write_pid(self._procs_of(cgroup, tid), pid, cgroup)
        try:
            yield
        finally:
            _write_pid(home, pid, self.home or 0)

    def _procs_of(self, cgroup: int, tid: int) -> int:
        fd = self._procs.get(cgroup)
        if fd is not None:
            self._procs.move_to_end(cgroup)
            return fd
        path = self._dir(task_path(tid))
        dirfd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if os.fstat(dirfd).st_ino != cgroup:  # it moved since: its next call will do
                raise SyscallError(errno.EAGAIN, "cgroup", f"{path}: the caller moved")
            fd = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=dirfd)
        finally:
            os.close(dirfd)
        self._procs[cgroup] = fd
        if len(self._procs) > OPEN_CGROUPS:
            os.close(self._procs.popitem(last=False)[1])
        return fd

    def _dir(self, path: str) -> str:
        """The directory of cgroup ``path`` under our cgroup2 mount."""
        if self.root != "/" and (path == self.root or path.startswith(self.root + "/")):
            path = path[len(self.root):]
        return self.mount + "/" + path.lstrip("/")

    def close(self) -> None:
        for fd in self._procs.values():
            os.close(fd)
        self._procs.clear()


def _write_pid(procs: int, pid: int, cgroup: int) -> None:
    try:
        os.write(procs, str(pid).encode())
    except OSError as e:
        raise SyscallError(e.errno or errno.EIO, "write", f"cgroup {cgroup}: cgroup.procs") \
            from None
