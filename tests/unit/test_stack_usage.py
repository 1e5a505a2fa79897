"""The pure parts of looking inside a stack: netlink message and attribute parsing, what a
namespace's links and addresses say, whether a resolver can answer, how users are named
(no privileges)."""

from __future__ import annotations

import socket
import struct

import pytest

from mstack_bpf.linux import netlink
from mstack_bpf.linux.netlink import Address, DiagSocket, Link
from mstack_bpf.stacks import procs, usage
from mstack_bpf.stacks.errors import InUse, users_text


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def test_attributes_aligned_and_nested_flag_masked() -> None:
    data = _attr(3, b"eth0\0") + _attr(0x8000 | 18, _attr(1, b"veth\0"))
    got = dict(netlink.attributes(data))
    assert got[3] == b"eth0\0"
    assert dict(netlink.attributes(got[18])) == {1: b"veth\0"}
    assert list(netlink.attributes(struct.pack("=HH", 2, 1))) == []  # a bad length ends it


def test_messages_split_a_datagram() -> None:
    one = struct.pack("=IHHII", 16 + 3, 20, 0, 1, 0) + b"abc" + b"\0"
    two = struct.pack("=IHHII", 16, netlink.NLMSG_DONE, 0, 1, 0)
    assert list(netlink.messages(one + two)) == [(20, b"abc"), (netlink.NLMSG_DONE, b"")]


def test_parse_inet_and_unix_replies() -> None:
    sockid = struct.pack("!HH", 53, 0) + socket.inet_aton("127.0.0.1") + bytes(12) + bytes(16)
    sockid += bytes(4 + 8)
    body = struct.pack("=BBBB", socket.AF_INET, 7, 0, 0) + sockid + struct.pack("=IIIII",
                                                                                 0, 0, 0, 0, 99)
    assert netlink.parse_diag("udp", body) == DiagSocket("udp", 99, "127.0.0.1", 53, 7)
    unix = struct.pack("=BBBBI8x", socket.AF_UNIX, 1, 10, 0, 1234)
    assert netlink.parse_diag("unix", unix) == DiagSocket("unix", 1234)
    nl = struct.pack("=BBBBIIII8x", socket.AF_NETLINK, 3, 0, 0, 1, 0, 0, 4321)
    assert netlink.parse_diag("netlink", nl).inode == 4321


def test_describe_net_and_addresses() -> None:
    lo = Link(1, "lo", None, True)
    assert usage.describe_net([lo]) == "loopback"
    assert usage.describe_net([lo, Link(2, "a", "veth", False), Link(3, "t", "tun", False),
                               Link(4, "b", "veth", False)]) == "tun+veth"
    assert usage.describe_net([lo, Link(5, "eth1", None, False)]) == "device"
    addrs = [Address(1, "127.0.0.1", 8, 254), Address(2, "10.1.0.2", 30, 0),
             Address(2, "fe80::1", 64, 253), Address(2, "fd00::2", 64, 0)]
    assert usage.global_addresses(addrs) == ["10.1.0.2/30", "fd00::2/64"]


@pytest.mark.parametrize(("sock", "address", "serves"), [
    (DiagSocket("udp", 1, "127.0.0.1", 53), "127.0.0.1", True),
    (DiagSocket("udp", 1, "0.0.0.0", 53), "127.0.0.53", True),
    (DiagSocket("udp", 1, "::", 53), "127.0.0.1", True),
    (DiagSocket("udp", 1, "0.0.0.0", 53), "::1", False),
    (DiagSocket("udp", 1, "127.0.0.2", 53), "127.0.0.1", False),
    (DiagSocket("udp", 1, "127.0.0.1", 5353), "127.0.0.1", False),
    (DiagSocket("tcp", 1, "127.0.0.1", 53, usage.TCP_LISTEN), "127.0.0.1", True),
    (DiagSocket("tcp", 1, "127.0.0.1", 53, 1), "127.0.0.1", False),  # a connection, no server
    (DiagSocket("raw", 1, "0.0.0.0", 53), "127.0.0.1", False),
])
def test_serves_dns(sock: DiagSocket, address: str, serves: bool) -> None:
    assert usage.serves_dns([sock], address) is serves


def test_dns_problem_says_what_is_missing() -> None:
    listening = [DiagSocket("udp", 1, "127.0.0.1", 53)]
    assert usage.dns_problem("127.0.0.1", "/etc/resolv.conf", listening, False) is None
    why = usage.dns_problem("127.0.0.53", "/etc/resolv.conf", listening, True)
    assert why == ("127.0.0.53 (from /etc/resolv.conf), but nothing in it listens on port 53 "
                   "there")
    assert usage.dns_problem("10.0.0.2", "f", [], True) is None
    assert usage.dns_problem("10.0.0.2", "f", [], False) == "10.0.0.2 (from f), but it has no " \
                                                            "route to 10.0.0.2"


def test_socket_inodes_skip_unowned() -> None:
    assert usage.socket_inodes([DiagSocket("tcp", 0), DiagSocket("tcp", 7)]) == {7}


def test_users_named_in_one_line() -> None:
    users = [procs.User(10, "python3", "socket"), procs.User(11, "mstack-sv", "fd"),
             procs.User(12, "sh", "member")]
    assert users_text(users) == ("pid 10 (python3, has a socket in it), pid 11 (mstack-sv, "
                                 "holds it open), pid 12 (sh, lives in it)")
    err = InUse("blue", users)
    assert "\n" not in str(err) and err.hint and "del --force blue" in err.hint
    assert procs.only_supervisors(users[1:2]) and not procs.only_supervisors(users)
    assert not procs.only_supervisors([])
