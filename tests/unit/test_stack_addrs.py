"""Veth address planning (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from mstack_bpf.stacks import addrs
from mstack_bpf.stacks.errors import AddressClash, InvalidAddress, NoFreeSubnet

N = ipaddress.ip_network


def test_plan_30() -> None:
    p = addrs.plan_for(N("10.9.0.0/30"))
    assert (p.host, p.stack, p.gateway) == ("10.9.0.1/30", "10.9.0.2/30", "10.9.0.1")


def test_plan_31_and_24_and_v6() -> None:
    assert addrs.plan_for(N("10.9.0.4/31")).stack == "10.9.0.5/31"
    assert addrs.plan_for(N("10.9.0.0/24")).host == "10.9.0.1/24"
    p6 = addrs.plan_for(N("fd42::/64"))
    assert (p6.host, p6.stack) == ("fd42::1/64", "fd42::2/64")


def test_plan_too_small() -> None:
    with pytest.raises(InvalidAddress):
        addrs.plan_for(N("10.9.0.1/32"))


def test_parse_network() -> None:
    assert addrs.parse_network("10.9.0.1/30") == N("10.9.0.0/30")
    for bad in ("10.9.0.1", "10.9.0.0/33", "nonsense"):
        with pytest.raises(InvalidAddress):
            addrs.parse_network(bad)


def test_choose_skips_taken() -> None:
    taken = [N("10.250.0.0/30"), N("10.250.0.4/31"), N("0.0.0.0/0"), N("fd00::/64")]
    assert addrs.choose_subnet(N("10.250.0.0/16"), taken) == N("10.250.0.8/30")


def test_choose_exhausted() -> None:
    with pytest.raises(NoFreeSubnet):
        addrs.choose_subnet(N("10.1.0.0/29"), [N("10.0.0.0/8")])


def test_clash() -> None:
    with pytest.raises(AddressClash, match="192.0.2.0/24"):
        addrs.check_free(N("192.0.2.0/30"), [N("192.0.2.0/24")])
    # The default route overlaps everything and is not a clash.
    assert addrs.check_free(N("10.1.0.0/30"), [N("0.0.0.0/0")]) == N("10.1.0.0/30")


def test_host_networks_sees_loopback() -> None:
    nets = addrs.host_networks()
    assert any(n.version == 4 and n.overlaps(N("127.0.0.1/32")) for n in nets)
