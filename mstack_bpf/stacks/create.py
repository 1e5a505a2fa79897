"""``mstack-stack add``: make a stack, all or nothing.

Every step registers its undo before it runs; a failure anywhere unwinds them in reverse, so
a failed ``add`` leaves no namespace, mount, interface, process or state file behind.
Everything that can be checked before touching the system (name, addresses, clashes, tools,
``/dev/net/tun``) is checked first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass

from mstack_bpf.linux.netns import path_inode
from mstack_bpf.stacks import addrs, paths, tools, usernet, veth
from mstack_bpf.stacks.errors import ManageError, NeedsRoot, StackExists
from mstack_bpf.stacks.holder import start_holder
from mstack_bpf.stacks.state import Proc, StackState, save, stop


@dataclass(frozen=True)
class AddRequest:
    """What the user asked for (validated by the CLI's parameter types)."""

    name: str
    net: str = "loopback"
    addr: str | None = None  # veth: the pair's subnet
    range: str | None = None  # veth: pick a free subnet from here
    nat: bool = False
    backend: str = "pasta"
    host_loopback: bool = False
    dns: str | None = None


class TunUnusable(ManageError):
    def __init__(self) -> None:
        super().__init__(
            "/dev/net/tun is not readable and writable by this user: rootless user-mode "
            "networking needs it mode 0666 (as Debian's udev sets it): chmod 0666 /dev/net/tun"
        )


def add(req: AddRequest) -> StackState:
    """Create the stack ``req.name``; root makes a root stack, anyone else a rootless one."""
    paths.check_name(req.name)
    if os.geteuid() == 0:
        return _add_root(req)
    return _add_user(req)


def _veth_plan(req: AddRequest) -> addrs.VethPlan:
    taken = addrs.host_networks()
    if req.addr:
        subnet = addrs.check_free(addrs.parse_network(req.addr), taken)
    else:
        subnet = addrs.choose_subnet(addrs.parse_network(req.range or addrs.DEFAULT_RANGE), taken)
    return addrs.plan_for(subnet)


def _add_root(req: AddRequest) -> StackState:
    netns = paths.root_netns_path(req.name)
    if os.path.lexists(netns):
        raise StackExists(req.name, netns)
    tools.which("ip")
    plan = _veth_plan(req) if req.net == "veth" else None
    if req.nat:
        tools.which("nft")
    if req.net == "user-net":
        tools.which(req.backend)
    state_dir = paths.root_state_dir(req.name)
    os.makedirs(paths.ROOT_STATE_DIR, mode=0o755, exist_ok=True)
    shutil.rmtree(state_dir, ignore_errors=True)  # leftover of a crash: /run/netns/NAME is free
    os.mkdir(state_dir, 0o755)
    with contextlib.ExitStack() as undo:
        undo.callback(shutil.rmtree, state_dir, ignore_errors=True)
        undo.callback(_ip_netns_del, req.name)
        tools.run(["ip", "netns", "add", req.name])
        tools.run(["ip", "-n", req.name, "link", "set", "lo", "up"])
        st = StackState(req.name, "root", req.net, netns, path_inode(netns), dns=req.dns)
        if plan is not None:
            st.host_if = veth.host_ifname(req.name)
            undo.callback(veth.delete, st.host_if)
            veth.create(req.name, req.name, plan)
            st.subnet, st.gateway = str(plan.subnet), plan.gateway
            st.addresses, st.host_addresses = [plan.stack], [plan.host]
            if req.nat:
                undo.callback(veth.disable_nat, veth.nat_table(req.name))
                st.nat_table = veth.enable_nat(req.name, plan, st.host_if)
        if req.net == "user-net":
            _start_usernet(req, st, usernet.Target(netns_path=netns), state_dir, undo)
            st.addresses = stack_addresses(["ip", "-n", req.name])
        _finish(st, state_dir)
        undo.pop_all()
    return st


def _add_user(req: AddRequest) -> StackState:
    if req.net == "veth":
        raise NeedsRoot("--veth")
    if req.net == "user-net":
        tools.which(req.backend)
        if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
            raise TunUnusable()
    base = paths.ensure_user_base_dir()
    state_dir = os.path.join(base, req.name)
    if paths.resolve_user_stack(req.name) is not None:
        raise StackExists(req.name, state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)  # a dead stack's leftovers
    try:
        os.mkdir(state_dir, 0o700)
    except FileExistsError:  # another add won the race
        raise StackExists(req.name, state_dir) from None
    with contextlib.ExitStack() as undo:
        undo.callback(shutil.rmtree, state_dir, ignore_errors=True)
        pid = start_holder(req.name)
        holder = Proc.of(pid, "holder")
        undo.callback(stop, holder)
        netns = f"/proc/{pid}/ns/net"
        st = StackState(req.name, "user", req.net, netns, path_inode(netns), dns=req.dns)
        st.uid, st.holder_pid, st.procs = os.getuid(), pid, [holder]
        os.symlink(netns, os.path.join(state_dir, "net"))
        os.symlink(f"/proc/{pid}/ns/user", os.path.join(state_dir, "user"))
        if req.net == "user-net":
            _start_usernet(req, st, usernet.Target(holder_pid=pid), state_dir, undo)
            nsenter = ["nsenter", "--preserve-credentials", "-U", "-n", "-t", str(pid), "ip"]
            st.addresses = stack_addresses(nsenter)
        _finish(st, state_dir)
        undo.pop_all()
    return st


def _start_usernet(
    req: AddRequest,
    st: StackState,
    target: usernet.Target,
    state_dir: str,
    undo: contextlib.ExitStack,
) -> None:
    un = usernet.start(req.backend, target, state_dir, host_loopback=req.host_loopback, dns=req.dns)
    undo.callback(stop, un.proc)
    # Helpers go first in the list: del stops them before the holder.
    st.procs.insert(0, un.proc)
    st.backend, st.dns, st.host_alias = un.backend, un.dns, un.host_alias


def _finish(st: StackState, state_dir: str) -> None:
    if st.dns:
        with open(os.path.join(state_dir, "resolv.conf"), "w", encoding="ascii") as f:
            f.write(f"# resolver of mstack stack {st.name}\nnameserver {st.dns}\n")
    save(state_dir, st)


def _ip_netns_del(name: str) -> None:
    with contextlib.suppress(ManageError):
        tools.run(["ip", "netns", "del", name])


def stack_addresses(ip: list[str]) -> list[str]:
    """Global addresses inside the stack, as ADDR/PREFIX (``ip`` is the command prefix that
    runs ip(8) there)."""
    try:
        links = json.loads(tools.run([*ip, "-j", "addr", "show"]) or "[]")
    except (ManageError, ValueError):
        return []
    out: list[str] = []
    for link in links:
        for a in link.get("addr_info", []) if isinstance(link, dict) else []:
            if a.get("scope") == "global":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out
