"""Paths as a target process sees them: in its root, its working directory, its mounts.

The supervisor opens a msocket path for the target. Walking ``/proc/TID/root/PATH`` is the
target's own walk only when the target's root is the supervisor's root (same mount, same
mount namespace): otherwise ``..`` and absolute symlinks would be resolved against the
*supervisor's* root, and a chrooted or containerised target could reach (or learn of)
files outside its own root. Such targets are resolved with ``RESOLVE_IN_ROOT``
(``linux/fs.py``); their relative paths must then stay below their working directory.
Everything is opened ``O_PATH``: nothing is really opened before it is known to be a
namespace file. procfs' ``self`` means the target wherever the walk meets it: explicitly
here (``/proc/self/...``), by any other route in ``fs.open_in_root``.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from functools import cache, cached_property

from mstack_bpf.linux import creds, fs


@cache
def _our_root() -> fs.MountedInode:
    return fs.mounted_inode("/")  # the supervisor never changes its root


class TargetView:
    """Resolve paths for thread ``tid``; every method returns an ``O_PATH`` descriptor."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.proc = f"/proc/{tid}"

    @cached_property
    def shares_our_root(self) -> bool:
        """The target's root is the very mount and directory ours is."""
        try:
            return fs.mounted_inode(f"{self.proc}/root") == _our_root()
        except OSError:
            return False

    def open(self, path: str) -> int:
        """``path`` (absolute) as the target would resolve it."""
        return self._open("root", path,
                          lambda root, rest: fs.open_in_root(root, rest, self.own_dir))

    def open_relative(self, path: str) -> int:
        """``path`` relative to the target's working directory."""
        return self._open("cwd", path, fs.open_beneath)

    def _open(self, start: str, path: str, scoped: Callable[[int, str], int]) -> int:
        """``path`` from the target's ``start`` (root or cwd), resolved by ``scoped`` from a
        descriptor of it; a relative path of a target whose root is ours is resolved from
        the root through its working directory's path instead."""
        if start == "cwd" and self.shares_our_root:
            # Our root is its root, so the link names its cwd in both: resolve from the root,
            # where ".." may go above the cwd as natively and procfs' "self" is checked.
            cwd = os.readlink(f"{self.proc}/cwd")
            if cwd.startswith("/") and not cwd.endswith(" (deleted)"):
                return self.open(f"{cwd}/{path}")
        base = fs.open_path(f"{self.proc}/{start}")
        try:
            return scoped(base, path)
        finally:
            os.close(base)

    def own_dir(self, thread: bool) -> str:
        """What procfs' ``self`` (its process: the thread group's entry) or ``thread-self``
        (its thread, below that) is for the target."""
        group = f"/proc/{creds.thread_group(self.tid)}"
        return f"{group}/task/{self.tid}" if thread else group

    def open_own(self, path: str) -> int | None:
        """``/proc/self/...`` and ``/proc/thread-self/...``: the target's own entries (the
        supervisor's "self" is not the target); None for other paths. Its namespaces and
        fds are links to objects; ``root/...`` and ``cwd/...`` go on in its own root."""
        for own, thread in (("/proc/self/", False), ("/proc/thread-self/", True)):
            if path.startswith(own):
                rest = path[len(own):]
                head, _, tail = rest.partition("/")
                if head == "root":
                    return self.open("/" + tail)
                if head == "cwd":
                    return self.open_relative(tail or ".")
                if _OWN_LINK.fullmatch(rest):
                    return fs.open_path(f"{self.own_dir(thread)}/{rest}")
                raise OSError(errno.ENOENT, path)  # nothing else names a stack
        return None


_OWN_LINK = re.compile(r"(task/\d+/)?(ns/[a-z_]+|fd/\d+)")


def canonical(path: str) -> str:
    """``path`` with ``//`` and ``/./`` collapsed (what the kernel ignores anyway), so that
    ``//proc/./self`` is recognised as the target's /proc/self."""
    absolute = path.startswith("/")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    joined = "/".join(parts)
    return ("/" + joined if absolute else joined) or ("/" if absolute else ".")
