"""Interface ioctls answer from the process's netlink stack, so that they agree with netlink."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Netns, build_c, mstack, needs_root

pytestmark = needs_root


@pytest.fixture(scope="module")
def ifaces() -> str:
    return build_c("ifaces")


def index_in(ns: Netns, name: str) -> int:
    return int(ns.exec("cat", f"/sys/class/net/{name}/ifindex", check=True).stdout)


def test_ip_redirected_interfaces_agree(netns: Netns, ifaces: str) -> None:
    cp = mstack("-o", "ip", netns.name, ifaces, "mstk0", "lo")
    view = json.loads(cp.stdout)
    assert view["index"] == {"mstk0": index_in(netns, "mstk0"), "lo": 1}
    assert sorted(view["getifaddrs"]) == ["lo", "mstk0", "mstk1"]
    assert view["ifconf"] == ["lo"]  # SIOCGIFCONF lists interfaces with an IPv4 address


def test_families_without_netlink_leave_ioctls_native(netns: Netns, ifaces: str) -> None:
    view = json.loads(mstack("-o", "4,6", netns.name, ifaces, "mstk0").stdout)
    assert view["index"]["mstk0"] == -19  # ENODEV: the host has no mstk0
    assert "mstk0" not in view["getifaddrs"]


def test_null_netlink_answers_enodev(ifaces: str) -> None:
    for lock in ([], ["--lock"]):
        view = json.loads(mstack(*lock, "-o", "n", "null", ifaces, "lo").stdout)
        assert view["index"] == {"lo": -19}, lock
        assert view["ifconf"] == []
