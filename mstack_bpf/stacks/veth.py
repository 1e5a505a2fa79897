"""A veth pair between the host and a root stack, with addresses, routes and optional NAT.

The host end is called ``ms-NAME`` (shortened with a hash when NAME is long: interface
names have at most 15 characters), the stack end ``eth0``. NAT is an nftables table
``ip mstack-NAME`` (``ip6`` for IPv6) that masquerades the stack's subnet on every other
interface, plus ``net.ipv4.ip_forward=1`` (``net.ipv6.conf.all.forwarding=1``), which is
left on when the stack goes: other things may depend on it by then.
"""

from __future__ import annotations

import contextlib
import hashlib

from mstack_bpf.stacks import tools
from mstack_bpf.stacks.addrs import VethPlan
from mstack_bpf.stacks.errors import CommandFailed, MissingTool

IFNAMSIZ = 16
STACK_IF = "eth0"


def host_ifname(name: str) -> str:
    """``ms-NAME``, or ``ms-PREFIX-HASH`` when that would not fit in IFNAMSIZ - 1."""
    plain = f"ms-{name}"
    if len(plain) < IFNAMSIZ:
        return plain
    digest = hashlib.sha1(name.encode()).hexdigest()[:5]
    return f"ms-{name[:6]}-{digest}"


def nat_table(name: str) -> str:
    return f"mstack-{name}"


def nat_ruleset(table: str, family: str, subnet: str, host_if: str) -> str:
    """The nftables script that masquerades ``subnet`` leaving through any other interface."""
    saddr = "ip saddr" if family == "ip" else "ip6 saddr"
    return (
        f"table {family} {table} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    {saddr} {subnet} oifname != "{host_if}" masquerade\n'
        "  }\n"
        "}\n"
    )


def create(netns: str, name: str, plan: VethPlan) -> str:
    """Make the pair, address both ends, route the stack's default via the host end.

    Returns the host interface name. On failure the caller deletes the host end
    (:func:`delete`), which removes the pair.
    """
    host_if = host_ifname(name)
    tools.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", STACK_IF,
               "netns", netns])  # fmt: skip
    v6 = ["nodad"] if plan.subnet.version == 6 else []  # no 1-2 s DAD wait before use
    tools.run(["ip", "addr", "add", plan.host, "dev", host_if, *v6])
    tools.run(["ip", "link", "set", host_if, "up"])
    tools.run(["ip", "-n", netns, "addr", "add", plan.stack, "dev", STACK_IF, *v6])
    tools.run(["ip", "-n", netns, "link", "set", STACK_IF, "up"])
    tools.run(["ip", "-n", netns, "route", "add", "default", "via", plan.gateway])
    return host_if


def delete(host_if: str) -> None:
    """Delete the pair by its host end; a missing interface is not an error."""
    with contextlib.suppress(CommandFailed):
        tools.run(["ip", "link", "del", host_if])


def enable_nat(name: str, plan: VethPlan, host_if: str) -> str:
    """Install the NAT table and turn forwarding on; return the table's name."""
    tools.which("nft")
    family = "ip" if plan.subnet.version == 4 else "ip6"
    table = nat_table(name)
    tools.run(["nft", "-f", "-"], input_text=nat_ruleset(table, family, str(plan.subnet), host_if))
    knob = (
        "/proc/sys/net/ipv4/ip_forward"
        if family == "ip"
        else "/proc/sys/net/ipv6/conf/all/forwarding"
    )
    with open(knob, "w", encoding="ascii") as f:
        f.write("1")
    return f"{family} {table}"


def disable_nat(table: str) -> None:
    """Delete the NAT table (``"ip mstack-NAME"``); already gone is fine."""
    family, _, name = table.partition(" ")
    with contextlib.suppress(CommandFailed, MissingTool):
        tools.run(["nft", "delete", "table", family, name])
