"""``list``, ``del``, ``dns`` and ``path``: finding stacks and taking them apart.

Root stacks are every entry of ``/run/netns`` (those ``mstack-stack`` did not make show as
``external`` and are never deleted by it); rootless stacks are the caller's own state
directories (:mod:`mstack_bpf.stacks.paths`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field

from mstack_bpf.stacks import paths, procs, tools, veth
from mstack_bpf.stacks.errors import ManageError, NeedsRoot, NoSuchStack, NotManaged
from mstack_bpf.stacks.state import StackState, load, stop


@dataclass
class StackInfo:
    """A stack as ``list`` shows it."""

    state: StackState
    managed: bool
    live: bool
    users: list[procs.User] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if not self.managed:
            return "external"
        if self.state.net == "user-net":
            return f"user-net/{self.state.backend}"
        return self.state.net

    def to_json(self) -> dict[str, object]:
        d = self.state.to_json()
        d.update(type=self.kind, managed=self.managed, live=self.live)
        d["users"] = [{"pid": u.pid, "comm": u.comm, "how": u.how} for u in self.users]
        return d


def _root_stacks() -> list[StackInfo]:
    try:
        names = sorted(os.listdir(paths.NETNS_DIR))
    except OSError:
        return []
    out: list[StackInfo] = []
    for name in names:
        path = paths.root_netns_path(name)
        st = load(paths.root_state_dir(name))
        managed = st is not None
        if st is None:
            st = StackState(name, "root", "unknown", path)
        try:
            st.netns_inode = os.stat(path).st_ino
            live = True
        except OSError:
            live = False
        out.append(StackInfo(st, managed, live))
    return out


def _user_stacks() -> list[StackInfo]:
    base = paths.user_base_dir()
    try:
        paths.check_private_dir(base, os.getuid())
        names = sorted(os.listdir(base))
    except (OSError, ManageError):
        return []
    out: list[StackInfo] = []
    for name in names:
        st = load(os.path.join(base, name))
        if st is None or not paths.valid_name(name):
            continue
        live = paths.resolve_user_stack(name) is not None
        out.append(StackInfo(st, True, live))
    return out


def list_stacks(with_users: bool = True) -> list[StackInfo]:
    """Root stacks, then the caller's rootless ones; with the processes using each."""
    infos = _root_stacks() + (_user_stacks() if os.geteuid() != 0 else [])
    if with_users:
        inodes = {i.state.netns_inode for i in infos if i.live and i.state.netns_inode}
        found = procs.users_of(inodes)
        for info in infos:
            own = {p.pid for p in info.state.procs}
            if info.live:
                info.users = [u for u in found.get(info.state.netns_inode, []) if u.pid not in own]
    return infos


def find(name: str) -> tuple[StackState, str]:
    """The record of managed stack ``name`` and its state directory, or NoSuchStack."""
    paths.check_name(name)
    netns = paths.root_netns_path(name)
    if os.path.lexists(netns):
        st = load(paths.root_state_dir(name))
        if st is None:
            raise NotManaged(name, netns)
        return st, paths.root_state_dir(name)
    if os.geteuid() != 0:
        state_dir = paths.user_state_dir(name)
        with contextlib.suppress(OSError, ManageError):
            paths.check_private_dir(os.path.dirname(state_dir), os.getuid())
            st = load(state_dir)
            if st is not None:
                return st, state_dir
    raise NoSuchStack(name)


def delete(name: str) -> bool:
    """Remove stack ``name`` and all it started; False when there was nothing to remove."""
    try:
        st, state_dir = find(name)
    except NoSuchStack:
        return _remove_leftover(name)
    if st.owner == "root" and os.geteuid() != 0:
        raise NeedsRoot(f"deleting root stack {name!r}")
    for proc in st.procs:  # helpers first, the holder last (see create)
        stop(proc)
    if st.nat_table:
        veth.disable_nat(st.nat_table)
    if st.host_if:
        veth.delete(st.host_if)
    if st.owner == "root" and os.path.lexists(paths.root_netns_path(name)):
        tools.run(["ip", "netns", "del", name])
    shutil.rmtree(state_dir, ignore_errors=True)
    return True


def _remove_leftover(name: str) -> bool:
    """A root record whose namespace is gone (e.g. ``ip netns del`` by hand): stop what it
    started and drop it."""
    state_dir = paths.root_state_dir(name)
    st = load(state_dir) if os.geteuid() == 0 else None
    if st is None:
        return False
    for proc in st.procs:
        stop(proc)
    if st.nat_table:
        veth.disable_nat(st.nat_table)
    shutil.rmtree(state_dir, ignore_errors=True)
    return True


def dns(name: str) -> str | None:
    """The resolver address recorded for stack ``name`` (reachable from inside it)."""
    return find(name)[0].dns


def netns_path(name: str) -> str:
    """A path that opens stack ``name``'s namespace (what ``mstack NAME`` resolves to)."""
    paths.check_name(name)
    netns = paths.root_netns_path(name)
    if os.path.lexists(netns):
        return netns
    path = paths.resolve_user_stack(name)
    if path is None:
        raise NoSuchStack(name)
    return path
