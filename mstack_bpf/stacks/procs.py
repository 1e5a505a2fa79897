"""Which processes use a stack: members of its network namespace, holders of a socket in
it, and holders of an fd to the namespace itself.

proc(5): ``/proc/PID/ns/net`` reads as ``net:[INODE]``, and ``/proc/PID/fd/N`` as
``net:[INODE]`` for a namespace or ``socket:[INODE]`` for a socket; which namespace a
socket lives in comes from a sock_diag dump made inside it (:mod:`mstack_bpf.stacks.inside`),
as ss(8) maps sockets to processes. Without privileges only the caller's own processes can
be inspected; others are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: the ways a process can use a stack, the strongest first
HOW = ("member", "socket", "fd")
#: the name mstack's supervisor (and its stack helpers) run under (launch/launcher.py)
SUPERVISOR_COMM = "mstack-sv"


@dataclass(frozen=True)
class User:
    pid: int
    comm: str
    how: str  # "member" (lives in the namespace), "socket" (holds a socket in it) or "fd"


def users_of(inodes: set[int],
             sockets: Mapping[int, set[int]] | None = None) -> dict[int, list[User]]:
    """For each namespace inode, the processes that are in it, hold a socket of it
    (``sockets``: namespace inode → inodes of its sockets) or hold it open. The calling
    process is never counted."""
    found: dict[int, list[User]] = {i: [] for i in inodes}
    links = {f"net:[{i}]": (i, "fd") for i in inodes}
    for ns, socks in (sockets or {}).items():
        links.update((f"socket:[{s}]", (ns, "socket")) for s in socks if ns in found)
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            ns_link = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        member = links.get(ns_link)
        uses = _fd_uses(pid, links)
        if member is not None:
            uses[member[0]] = "member"
        for inode, how in uses.items():
            found[inode].append(User(pid, _comm(pid), how))
    return found


def only_supervisors(users: list[User]) -> bool:
    """Whether ``users`` is not empty and every one is an mstack supervisor."""
    return bool(users) and all(u.comm == SUPERVISOR_COMM for u in users)


def _fd_uses(pid: int, links: Mapping[str, tuple[int, str]]) -> dict[int, str]:
    """namespace inode → how ``pid``'s descriptors use it (a socket counts over an fd)."""
    uses: dict[int, str] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return uses
    for fd in fds:
        try:
            hit = links.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if hit is not None:
            ns, how = hit
            uses[ns] = min(uses.get(ns, how), how, key=HOW.index)
    return uses


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"
