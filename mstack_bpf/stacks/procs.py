"""Which processes use a stack: members of its network namespace and holders of an fd to it.

proc(5): ``/proc/PID/ns/net`` and ``/proc/PID/fd/N`` read as ``net:[INODE]``. Without
privileges only the caller's own processes can be inspected; others are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    pid: int
    comm: str
    how: str  # "member" (lives in the namespace) or "fd" (holds it open)


def users_of(inodes: set[int]) -> dict[int, list[User]]:
    """For each namespace inode, the processes that are in it or hold it open."""
    found: dict[int, list[User]] = {i: [] for i in inodes}
    links = {f"net:[{i}]": i for i in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            member = links.get(os.readlink(f"/proc/{pid}/ns/net"))
        except OSError:
            continue
        if member is not None:
            found[member].append(User(pid, _comm(pid), "member"))
        for inode in _fd_holds(pid, links) - ({member} if member else set()):
            found[inode].append(User(pid, _comm(pid), "fd"))
    return found


def _fd_holds(pid: int, links: dict[str, int]) -> set[int]:
    held: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return held
    for fd in fds:
        try:
            inode = links.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if inode is not None:
            held.add(inode)
    return held


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"
