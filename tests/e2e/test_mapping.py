"""Where sockets land, checked from inside the target with SO_NETNS_COOKIE."""

from __future__ import annotations

import pytest

from tests.conftest import Netns, mstack, needs_root, probe

pytestmark = needs_root

FAMILIES = ("1", "2", "10", "16", "17")


def where(report: object, ns: Netns, host: int) -> dict[str, str]:
    """family → 'stack', 'native' or the errno, from a probe's families report."""
    out = {}
    assert isinstance(report, dict)
    for family, result in report.items():
        if "errno" in result:
            out[family] = result["errno"]
        else:
            out[family] = {ns.cookie: "stack", host: "native"}.get(result["cookie"], "?")
    return out


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ([], dict.fromkeys(FAMILIES, "stack")),
        (["-o", "ip"], {"1": "native", "2": "stack", "10": "stack", "16": "stack", "17": "stack"}),
        (["-o", "-unix"], {"1": "native", "2": "stack", "10": "stack", "16": "stack",
                           "17": "stack"}),
        (["-o", "+ip,-ipv6"], {"1": "native", "2": "stack", "10": "native", "16": "stack",
                               "17": "stack"}),
        (["-o", "#16"], {"1": "native", "2": "native", "10": "native", "16": "stack",
                         "17": "native"}),
        (["-o", "4,6"], {"1": "native", "2": "stack", "10": "stack", "16": "native",
                         "17": "native"}),
        (["-o", "all,-4", "-o", "-6"], {"1": "stack", "2": "native", "10": "native",
                                        "16": "stack", "17": "stack"}),
    ],
    ids=["all", "ip", "-unix", "+ip,-ipv6", "#16", "4,6", "two-lists"],
)
def test_families_land_where_the_manual_says(netns: Netns, host_cookie: int, option: list[str],
                                             expected: dict[str, str]) -> None:
    report = probe(*option, netns.name, command=("families", *FAMILIES))
    assert where(report, netns, host_cookie) == expected


def test_path_and_proc_forms_name_the_same_stack(netns: Netns, host_cookie: int) -> None:
    by_path = probe("-o", "4", netns.path, command=("families", "2"))
    assert where(by_path, netns, host_cookie) == {"2": "stack"}


def test_null_refuses_every_family_including_unix(netns: Netns) -> None:
    for name in ("null", "/dev/net/null"):
        report = probe(name, command=("families", *FAMILIES))
        assert report == {f: {"errno": "EAFNOSUPPORT"} for f in FAMILIES}


def test_native_stack_is_the_callers_own(host_cookie: int) -> None:
    report = probe("native", command=("families", "2"))
    assert report == {"2": {"cookie": host_cookie, "uid": 0}}


def test_children_threads_and_grandchildren_keep_the_mapping(netns: Netns) -> None:
    report = probe("-o", "ip", netns.name, command=("tree",))
    assert isinstance(report, dict)
    for who in ("process", "thread", "child", "grandchild"):
        assert report[who]["cookie"] == netns.cookie, who


def test_ip_addr_lists_the_stack_s_interfaces(netns: Netns) -> None:
    for name in (netns.name, netns.path):
        cp = mstack("-o", "ip", name, "ip", "-br", "addr")
        assert cp.returncode == 0, cp.stderr
        names = {line.split()[0].split("@")[0] for line in cp.stdout.splitlines()}
        assert names == {"lo", "mstk0", "mstk1"}
    route = mstack("-o", "ip", netns.name, "ip", "route", "show", "table", "local")
    assert "127.0.0.0/8" in route.stdout


def test_null_ip_addr_says_cannot_open_netlink() -> None:
    cp = mstack("null", "ip", "addr")
    assert cp.returncode == 1
    assert "Cannot open netlink socket: Address family not supported" in cp.stderr


def test_socket_flags_are_honoured(netns: Netns) -> None:
    report = probe("-o", "ip", netns.name, command=("flags",))
    assert report == {
        "plain": {"cloexec": False, "nonblock": False},
        "cloexec": {"cloexec": True, "nonblock": False},
        "nonblock": {"cloexec": False, "nonblock": True},
    }


def test_vectors_every_abi_lands_in_the_stack_or_is_refused(netns: Netns, vectors: str) -> None:
    import json

    cp = mstack("-o", "ip", netns.name, vectors, "2")
    result = json.loads(cp.stdout)
    for vector in ("x86_64", "high32", "i386_socket", "i386_socketcall"):
        assert result[vector]["cookie"] == netns.cookie, vector
    assert result["x32"]["errno"] == "ENOSYS"
    assert result["io_uring_setup"]["errno"] == "ENOSYS"
    assert result["i386_io_uring_setup"]["errno"] == "ENOSYS"
    assert result["i386_socketcall_efault"]["errno"] == "EFAULT"


def test_vectors_under_null_are_all_refused(vectors: str) -> None:
    import json

    for lock in ([], ["--lock"]):
        result = json.loads(mstack(*lock, "null", vectors, "2").stdout)
        for vector in ("x86_64", "high32", "i386_socket"):
            assert result[vector]["errno"] == "EAFNOSUPPORT", (lock, vector)
        assert result["x32"]["errno"] == "ENOSYS"
        assert "cookie" not in result["i386_socketcall"]
        assert result["io_uring_setup"]["errno"] == "ENOSYS"


def test_unix_vectors_stay_native_under_ip(netns: Netns, vectors: str, host_cookie: int) -> None:
    import json

    result = json.loads(mstack("--lock", "-o", "ip", netns.name, vectors, "1").stdout)
    for vector in ("x86_64", "high32", "i386_socket", "i386_socketcall"):
        assert result[vector]["cookie"] == host_cookie, vector
