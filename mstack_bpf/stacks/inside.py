"""Looking inside a stack: its sockets, interfaces and addresses, read with netlink from a
socket made inside the namespace (docs/design.md, "Who uses a stack").

A netlink socket reports on the namespace it was made in, so a helper process
(:class:`~mstack_bpf.supervisor.helper.NetnsSocketHelper`) enters the stack — joining its
owning user namespace first for a rootless stack, which only a single-threaded process may
do for good — makes one ``NETLINK_SOCK_DIAG`` and one ``NETLINK_ROUTE`` socket there, sends
them back and exits before anything else happens, so that neither it nor those two sockets
are counted as users of the stack. The rest is pure and lives in
:mod:`mstack_bpf.stacks.usage`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from mstack_bpf.linux import netlink
from mstack_bpf.linux.netlink import Address, DiagSocket, Link
from mstack_bpf.supervisor.helper import NetnsSocketHelper


@dataclass(frozen=True)
class NetnsView:
    """What a namespace holds: sockets (and the kinds the kernel could not list), links,
    addresses, and whether it routes to the addresses it was asked about."""

    sockets: list[DiagSocket] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)
    routes: dict[str, bool] = field(default_factory=dict)


def look_inside(netns_path: str, route_to: tuple[str, ...] = ()) -> NetnsView:
    """The sockets, links and addresses of the namespace at ``netns_path``, and whether it
    has a route to each address of ``route_to``; ``OSError`` when the caller may not enter
    it (``EPERM``: a root namespace and no root)."""
    with NetnsSocketHelper(netns_path) as helper:
        flags = socket.SOCK_RAW | socket.SOCK_CLOEXEC
        diag = helper.make_socket(socket.AF_NETLINK, flags, netlink.NETLINK_SOCK_DIAG)
        try:
            route = helper.make_socket(socket.AF_NETLINK, flags, netlink.NETLINK_ROUTE)
        except BaseException:
            os.close(diag)
            raise
    try:
        found, unlisted = netlink.sockets(diag)
        routes = {a: netlink.has_route(route, a) for a in route_to}
        return NetnsView(found, unlisted, netlink.links(route), netlink.addresses(route),
                         routes)
    finally:
        os.close(diag)
        os.close(route)


def try_look_inside(netns_path: str, route_to: tuple[str, ...] = ()) -> NetnsView | None:
    """:func:`look_inside`, or None when the namespace cannot be entered or read."""
    try:
        return look_inside(netns_path, route_to)
    except OSError:
        return None
