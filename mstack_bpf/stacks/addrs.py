"""Address planning for veth stacks: which subnet, which address on each end.

A veth stack gets one subnet: the host end takes its first host address, the stack end the
second, and the stack's default route points at the host end. The subnet is either given
(``--addr``) or the first one of ``/30`` (IPv4) or ``/126`` (IPv6) inside a range
(``--range``, default :data:`DEFAULT_RANGE`) that overlaps nothing the host already has:
addresses of any interface and routes of any table. Planning is pure; :func:`host_networks`
is the only I/O (``ip -j``).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mstack_bpf.stacks.errors import AddressClash, InvalidAddress, NoFreeSubnet

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_RANGE = "10.250.0.0/16"


@dataclass(frozen=True)
class VethPlan:
    subnet: Network
    host: str  # ADDR/PREFIX on the host end
    stack: str  # ADDR/PREFIX on the stack end
    gateway: str  # host end's address, the stack's default route


def parse_network(text: str) -> Network:
    """``10.9.0.0/30`` or ``10.9.0.1/30`` (host bits allowed) → the network."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise InvalidAddress(text, str(e)) from None
    if "/" not in text:
        raise InvalidAddress(text, "give a prefix length, e.g. 10.9.0.0/30")
    return net


def plan_for(subnet: Network) -> VethPlan:
    """Host and stack addresses in ``subnet`` (needs room for two addresses)."""
    max_prefix = subnet.max_prefixlen
    if subnet.prefixlen > max_prefix - 1:
        raise InvalidAddress(str(subnet), "too small for two addresses")
    if subnet.prefixlen == max_prefix - 1:  # /31 or /127: both addresses usable (RFC 3021)
        host, stack = subnet[0], subnet[1]
    else:
        host, stack = subnet[1], subnet[2]
    p = subnet.prefixlen
    return VethPlan(subnet, f"{host}/{p}", f"{stack}/{p}", str(host))


def clash(subnet: Network, taken: Iterable[Network]) -> Network | None:
    """The first network in ``taken`` that overlaps ``subnet`` (default routes ignored)."""
    for other in taken:
        if other.version == subnet.version and other.prefixlen > 0 and subnet.overlaps(other):
            return other
    return None


def choose_subnet(rng: Network, taken: Iterable[Network]) -> Network:
    """The first ``/30`` (``/126``) of ``rng`` that clashes with nothing in ``taken``."""
    taken = list(taken)
    size = 30 if rng.version == 4 else 126
    if rng.prefixlen > size:
        return check_free(rng, taken)
    for candidate in rng.subnets(new_prefix=size):
        if clash(candidate, taken) is None:
            return candidate
    raise NoFreeSubnet(str(rng))


def check_free(subnet: Network, taken: Iterable[Network]) -> Network:
    other = clash(subnet, taken)
    if other is not None:
        raise AddressClash(str(subnet), str(other))
    return subnet


def host_networks() -> list[Network]:
    """Every network the host uses: interface addresses and routes of all tables."""
    nets: list[Network] = []
    for argv in (["ip", "-j", "addr", "show"],):
        for link in _ip_json(argv):
            for a in link.get("addr_info", []):
                nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for fam in ("-4", "-6"):
        for route in _ip_json(["ip", "-j", fam, "route", "show", "table", "all"]):
            dst = route.get("dst", "default")
            if dst == "default" or route.get("type") in ("local", "broadcast", "multicast"):
                continue
            try:
                nets.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                continue
    return nets


def _ip_json(argv: list[str]) -> list[dict[str, Any]]:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        return []
    data = json.loads(out.stdout)
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
