"""What a stack's contents mean, with no I/O: who uses it, how to describe its network, and
whether a resolver address can answer from inside it.

The facts come from :mod:`mstack_bpf.stacks.inside` (netlink) and
:mod:`mstack_bpf.stacks.procs` (/proc); these functions only judge them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from mstack_bpf.linux.netlink import RT_SCOPE_UNIVERSE, Address, DiagSocket, Link

TCP_LISTEN = 10  # include/net/tcp_states.h
DNS_PORT = 53


def global_addresses(addresses: Iterable[Address]) -> list[str]:
    """``ADDR/PREFIX`` of every global-scope address, as ``add`` records them (``ip -j addr``
    entries of scope ``global``): loopback and link-local addresses are left out."""
    return [f"{a.address}/{a.prefixlen}" for a in addresses if a.scope == RT_SCOPE_UNIVERSE]


def describe_net(links: Iterable[Link]) -> str:
    """What connects a namespace, from its interfaces: the kinds of its non-loopback links
    (``veth``, ``tun``, ...; ``device`` for one with no kind, such as a NIC moved in), joined
    with ``+``; ``loopback`` when it has nothing else."""
    kinds = sorted({link.kind or "device" for link in links if not link.loopback})
    return "+".join(kinds) or "loopback"


def socket_inodes(sockets: Iterable[DiagSocket]) -> set[int]:
    """The inodes a process's ``socket:[INODE]`` descriptor can name (not 0: TIME-WAIT and
    request sockets belong to no descriptor)."""
    return {s.inode for s in sockets if s.inode}


def serves_dns(sockets: Iterable[DiagSocket], address: str) -> bool:
    """Whether a socket of the namespace takes DNS queries to ``address``: UDP, or TCP in
    LISTEN, on port 53, bound to ``address`` or to the wildcard (``::`` also takes IPv4
    unless it is IPV6_V6ONLY, which sock_diag does not say: counted as taking it)."""
    want = ipaddress.ip_address(address)
    wildcards = {"0.0.0.0", "::"} if want.version == 4 else {"::"}
    for s in sockets:
        if s.port != DNS_PORT or s.local is None:
            continue
        if s.kind == "tcp" and s.state != TCP_LISTEN:
            continue
        if s.kind in ("tcp", "udp") and (s.local in wildcards
                                          or ipaddress.ip_address(s.local) == want):
            return True
    return False


def dns_problem(address: str, source: str, sockets: Sequence[DiagSocket],
                routable: bool) -> str | None:
    """Why ``address`` (the resolver ``source`` names) cannot answer from inside a namespace
    with these sockets, or None when nothing says it cannot: a loopback address nothing
    inside listens on, or any other address the namespace has no route to (``routable``)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.is_loopback:
        if serves_dns(sockets, str(ip)):
            return None
        return f"{address} (from {source}), but nothing in it listens on port {DNS_PORT} there"
    if not routable:
        return f"{address} (from {source}), but it has no route to {address}"
    return None
