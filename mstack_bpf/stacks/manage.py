"""``list``, ``del``, ``dns`` and ``path``: finding stacks and taking them apart.

Root stacks are every entry of ``/run/netns`` (those ``mstack-stack`` did not make show as
``external`` and are never deleted by it); rootless stacks are the caller's own state
directories (:mod:`mstack_bpf.stacks.paths`). A stack is *in use* while a process lives in
it, holds a socket in it or holds the namespace open (:mod:`mstack_bpf.stacks.procs`); ``del``
refuses such a stack unless forced.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import time
from dataclasses import dataclass, field

from mstack_bpf.linux import netns
from mstack_bpf.stacks import inside, paths, procs, tools, usage, usernet, veth
from mstack_bpf.stacks.errors import (
    InUse,
    ManageError,
    NeedsRoot,
    NoResolver,
    NoSuchStack,
    NotManaged,
)
from mstack_bpf.stacks.state import StackState, load, stop


@dataclass
class StackInfo:
    """A stack as ``list`` shows it."""

    state: StackState
    managed: bool
    live: bool
    users: list[procs.User] = field(default_factory=list)
    owner_uid: int | None = None  # who made it: the record's, else the namespace's owner
    view: inside.NetnsView | None = None  # what is inside, where it could be read

    @property
    def owner_name(self) -> str:
        """The owner's user name (its uid where it has none; ``?`` when unknown)."""
        if self.owner_uid is None:
            return "?"
        try:
            return pwd.getpwuid(self.owner_uid).pw_name
        except KeyError:
            return str(self.owner_uid)

    @property
    def kind(self) -> str:
        if not self.managed:
            return "external"
        if self.state.net == "user-net":
            return f"user-net/{self.state.backend}"
        return self.state.net

    def to_json(self) -> dict[str, object]:
        d = self.state.to_json()
        d.update(type=self.kind, managed=self.managed, live=self.live,
                 owner_name=self.owner_name)
        d["users"] = [{"pid": u.pid, "comm": u.comm, "how": u.how} for u in self.users]
        return d


def _describe_external(info: StackInfo) -> None:
    """Fill an external namespace's record with what is in it (the record of a managed
    stack says what ``add`` made)."""
    if info.view is not None and not info.managed:
        info.state.net = usage.describe_net(info.view.links)
        info.state.addresses = usage.global_addresses(info.view.addresses)


def _netns_owner(path: str) -> int | None:
    """The uid that made the user namespace owning the namespace at ``path``."""
    with contextlib.ExitStack() as fds:
        try:
            fd = netns.open_netns(path)
            fds.callback(os.close, fd)
            userns = netns.owning_userns(fd)
            fds.callback(os.close, userns)
            return netns.owner_uid(userns)
        except OSError:
            return None
    return None


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
        owner = 0 if managed else _netns_owner(path)
        out.append(StackInfo(st, managed, live, owner_uid=owner))
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
        out.append(StackInfo(st, True, live, owner_uid=st.uid))
    return out


def list_stacks() -> list[StackInfo]:
    """Root stacks, then the caller's rootless ones; with what is inside each and the
    processes using each."""
    infos = _root_stacks() + (_user_stacks() if os.geteuid() != 0 else [])
    _find_users([i for i in infos if i.live and i.state.netns_inode])
    for info in infos:
        _describe_external(info)
    return infos


def _find_users(infos: list[StackInfo]) -> None:
    """Look inside each stack, then fill in who uses it: members, socket holders, fd
    holders — never the processes the stack itself started."""
    for info in infos:
        info.view = inside.try_look_inside(info.state.netns_path)
    sockets = {i.state.netns_inode: usage.socket_inodes(i.view.sockets)
               for i in infos if i.view is not None}
    found = procs.users_of({i.state.netns_inode for i in infos}, sockets)
    for info in infos:
        own = {p.pid for p in info.state.procs}
        info.users = [u for u in found.get(info.state.netns_inode, []) if u.pid not in own]


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


def users(st: StackState) -> list[procs.User]:
    """The processes using the live stack ``st`` besides those it started."""
    try:
        inode = os.stat(st.netns_path).st_ino
    except OSError:
        return []
    if st.netns_inode and inode != st.netns_inode:
        return []  # a dead holder's pid now names another namespace
    info = StackInfo(st, True, True)
    st.netns_inode = inode
    _find_users([info])
    return info.users


#: how long ``del`` waits for the supervisors of mstack runs that just ended
SUPERVISOR_GRACE = 2.0


def _settled_users(st: StackState) -> list[procs.User]:
    """:func:`users`, waiting up to :data:`SUPERVISOR_GRACE` seconds while every one left
    is an mstack supervisor: after ``mstack NAME COMMAND`` returns, its supervisor (and
    its stack helper) exits on its own once the tree is gone, a moment later."""
    deadline = time.monotonic() + SUPERVISOR_GRACE
    while True:
        left = users(st)
        if not procs.only_supervisors(left) or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def delete(name: str, force: bool = False) -> list[procs.User]:
    """Remove stack ``name`` and all it started (nothing to remove is no error). While
    processes use it, :class:`InUse` unless ``force``; forced, the processes that still
    use it (their sockets keep the namespace alive, without its name)."""
    try:
        st, state_dir = find(name)
    except NoSuchStack:
        _remove_leftover(name)
        return []
    if st.owner == "root" and os.geteuid() != 0:
        raise NeedsRoot(f"deleting root stack {name!r}")
    left = _settled_users(st)
    if left and not force:
        raise InUse(name, left)
    for proc in st.procs:  # helpers first, the holder last (see create)
        stop(proc)
    if st.nat_table:
        veth.disable_nat(st.nat_table)
    if st.host_if:
        veth.delete(st.host_if)
    if st.owner == "root" and os.path.lexists(paths.root_netns_path(name)):
        tools.run(["ip", "netns", "del", name])
    shutil.rmtree(state_dir, ignore_errors=True)
    return left


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
    """The resolver address recorded for stack ``name`` (reachable from inside it); for a
    namespace ``mstack-stack`` did not make, the one it would use (:func:`external_dns`)."""
    try:
        return find(name)[0].dns
    except NotManaged as e:
        return external_dns(name, e.path)


#: ip-netns(8): ``ip netns exec NAME`` bind-mounts /etc/netns/NAME/FILE over /etc/FILE
ETC_NETNS = "/etc/netns"


def external_dns(name: str, path: str) -> str:
    """The resolver a namespace not made by ``mstack-stack`` would use: the first
    ``nameserver`` of /etc/netns/NAME/resolv.conf when that exists (``ip netns exec`` binds
    it over /etc/resolv.conf), else of the host's /etc/resolv.conf. :class:`NoResolver`,
    saying what is missing, when there is none or it cannot answer from inside (a loopback
    address nothing listens on there; another address it has no route to). Where the
    caller may not look inside (no root), the address as the file names it."""
    conf = os.path.join(ETC_NETNS, name, "resolv.conf")
    if not os.path.exists(conf):
        conf = "/etc/resolv.conf"
    addr = usernet.host_resolver(conf)
    if addr is None:
        raise NoResolver(name, f"{conf} names no nameserver", _dns_hint(name))
    bare = addr.split("%")[0]
    view = inside.try_look_inside(path, route_to=(bare,))
    problem = None if view is None else usage.dns_problem(addr, conf, view.sockets,
                                                            view.routes[bare])
    if problem is not None:
        raise NoResolver(name, f"it would use {problem}", _dns_hint(name))
    return addr


def _dns_hint(name: str) -> str:
    return (f"run a resolver inside it, or name one it reaches in "
            f"{ETC_NETNS}/{name}/resolv.conf ('nameserver ADDR')")


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
