"""Netlink dumps of one network namespace: its sockets (sock_diag(7)) and its interfaces
and addresses (rtnetlink(7)).

A netlink socket answers for the network namespace it was made in, whoever later holds it:
the caller makes it inside the namespace it asks about (``stacks/inside.py`` does, through
a helper process) and passes its descriptor here. Structures are those of
``linux/netlink.h``, ``linux/sock_diag.h``, ``linux/inet_diag.h``, ``linux/unix_diag.h``,
``linux/netlink_diag.h``, ``linux/packet_diag.h``, ``linux/rtnetlink.h``,
``linux/if_addr.h`` and ``linux/if_link.h``; sizes are checked at import.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from mstack_bpf.linux.ffi import SyscallError

NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4

# linux/netlink.h
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
_RTATTR = struct.Struct("=HH")  # len, type (also struct nlattr)
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

# linux/sock_diag.h, inet_diag.h: struct inet_diag_req_v2 (family, protocol, ext,
# pad/sdiag_raw_protocol, states, struct inet_diag_sockid) and struct inet_diag_msg
SOCK_DIAG_BY_FAMILY = 20
_INET_REQ = struct.Struct("=BBBBI48x")
#: family, state, timer, retrans, sport, dport, src, dst, if, (cookie), expires, rqueue,
#: wqueue, uid, inode
_INET_MSG = struct.Struct("=BBBBHH16s16sI8xIIIII")
assert _INET_REQ.size == 56 and _INET_MSG.size == 72
# unix_diag.h (family, protocol, pad, states, ino, show, cookie) → struct unix_diag_msg
_UNIX_REQ = struct.Struct("=BBHIII8x")
# netlink_diag.h, packet_diag.h (family, protocol, pad, ino, show, cookie)
_ANY_REQ = struct.Struct("=BBHII8x")
assert _UNIX_REQ.size == 24 and _ANY_REQ.size == 20
NDIAG_PROTO_ALL = 255
IPPROTO_RAW = 255
_ALL_STATES = 0xFFFFFFFF
#: where the socket's inode sits in each kind's reply
_INODE_AT = {"unix": 4, "netlink": 16, "packet": 4}

# linux/rtnetlink.h, if_link.h, if_addr.h
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR, RTM_GETROUTE = 16, 18, 20, 22, 26
_RTM_NAMES = {RTM_GETLINK: "RTM_GETLINK", RTM_GETADDR: "RTM_GETADDR"}
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol,
#                                       scope, type, flags
RTA_DST = 1
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_LOOPBACK = 0x8
RT_SCOPE_UNIVERSE = 0


@dataclass(frozen=True)
class DiagSocket:
    """One socket of the namespace: its kind (``tcp``, ``udp``, ``raw``, ``unix``,
    ``netlink``, ``packet``), its inode (``socket:[INODE]`` in /proc/PID/fd; 0 for a
    socket no descriptor holds, such as TIME-WAIT), and for IP sockets the local address,
    port and TCP state."""

    kind: str
    inode: int
    local: str | None = None
    port: int | None = None
    state: int = 0


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # IFLA_INFO_KIND ("veth", "tun", ...); None for lo and plain devices
    loopback: bool


@dataclass(frozen=True)
class Address:
    index: int
    address: str  # IFA_LOCAL, else IFA_ADDRESS
    prefixlen: int
    scope: int


#: (kind, family, what to ask) of every sock_diag dump, as ss(8) makes them
_INET_KINDS = (("tcp", socket.IPPROTO_TCP), ("udp", socket.IPPROTO_UDP),
               ("udplite", 136), ("raw", IPPROTO_RAW))


def _diag_requests() -> Iterator[tuple[str, bytes]]:
    for family in (socket.AF_INET, socket.AF_INET6):
        for kind, proto in _INET_KINDS:
            raw_proto = IPPROTO_RAW if proto == IPPROTO_RAW else 0  # every raw protocol
            yield kind, _INET_REQ.pack(family, proto, 0, raw_proto, _ALL_STATES)
    yield "unix", _UNIX_REQ.pack(socket.AF_UNIX, 0, 0, _ALL_STATES, 0, 0)
    yield "netlink", _ANY_REQ.pack(socket.AF_NETLINK, NDIAG_PROTO_ALL, 0, 0, 0)
    yield "packet", _ANY_REQ.pack(socket.AF_PACKET, 0, 0, 0, 0)


def sockets(diag_fd: int) -> tuple[list[DiagSocket], list[str]]:
    """Every socket of the namespace ``diag_fd`` (a ``NETLINK_SOCK_DIAG`` socket) was made
    in, and the kinds the kernel could not list (no diag module for them: ``ENOENT``)."""
    found: list[DiagSocket] = []
    unlisted: list[str] = []
    for kind, req in _diag_requests():
        try:
            replies = dump(diag_fd, SOCK_DIAG_BY_FAMILY, req, f"sock_diag({kind})")
        except SyscallError as e:
            if e.errno not in (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            if kind not in unlisted:
                unlisted.append(kind)
            continue
        found.extend(parse_diag(kind, body) for body in replies)
    return found, unlisted


def parse_diag(kind: str, body: bytes) -> DiagSocket:
    """One sock_diag reply of ``kind`` as a :class:`DiagSocket`."""
    if kind in _INODE_AT:
        return DiagSocket(kind, struct.unpack_from("=I", body, _INODE_AT[kind])[0])
    fam, state, _, _, sport, _, src, *_, inode = _INET_MSG.unpack_from(body)
    raw = src[:4] if fam == socket.AF_INET else src
    return DiagSocket(kind, inode, str(ipaddress.ip_address(raw)), socket.ntohs(sport), state)


def links(route_fd: int) -> list[Link]:
    """The interfaces of the namespace ``route_fd`` (a ``NETLINK_ROUTE`` socket) was made in."""
    out: list[Link] = []
    for (_, _, index, flags, _), attrs in _rt_dump(route_fd, RTM_GETLINK, _IFINFOMSG):
        kind = dict(attributes(attrs.get(IFLA_LINKINFO, b""))).get(IFLA_INFO_KIND)
        out.append(Link(index, _cstr(attrs.get(IFLA_IFNAME, b"")),
                        _cstr(kind) if kind else None, bool(flags & IFF_LOOPBACK)))
    return out


def addresses(route_fd: int) -> list[Address]:
    """The IPv4 and IPv6 addresses of the namespace ``route_fd`` was made in."""
    out: list[Address] = []
    for (family, prefixlen, _, scope, index), attrs in _rt_dump(route_fd, RTM_GETADDR,
                                                                 _IFADDRMSG):
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if family in (socket.AF_INET, socket.AF_INET6) and raw:
            out.append(Address(index, str(ipaddress.ip_address(raw)), prefixlen, scope))
    return out


def _rt_dump(route_fd: int, msg_type: int,
             header: struct.Struct) -> Iterator[tuple[tuple[int, ...], dict[int, bytes]]]:
    """Dump ``msg_type`` for every family: each reply's fixed ``header`` and attributes."""
    req = bytes(header.size)  # family AF_UNSPEC (0) and no filter: every field 0
    for body in dump(route_fd, msg_type, req, f"rtnetlink({_RTM_NAMES[msg_type]})"):
        yield header.unpack_from(body), dict(attributes(body[header.size :]))


def has_route(route_fd: int, address: str) -> bool:
    """Whether the namespace ``route_fd`` was made in has a route to ``address`` (what
    ``ip route get ADDRESS`` asks); False on ``ENETUNREACH``/``EHOSTUNREACH``."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    req = _RTMSG.pack(family, ip.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    req += _RTATTR.pack(_RTATTR.size + len(ip.packed), RTA_DST) + ip.packed
    try:
        ask(route_fd, RTM_GETROUTE, req, "rtnetlink(RTM_GETROUTE)")
    except SyscallError as e:
        if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return False
        raise
    return True


def attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The (type, payload) pairs of a run of ``struct rtattr``/``nlattr`` (4-byte aligned)."""
    at = 0
    while at + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, at)
        if length < _RTATTR.size:
            return
        yield kind & _NLA_TYPE_MASK, data[at + _RTATTR.size : at + length]
        at += (length + 3) & ~3


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def dump(fd: int, msg_type: int, payload: bytes, call: str) -> list[bytes]:
    """Send one ``NLM_F_DUMP`` request on netlink socket ``fd``; the payloads of every reply
    up to ``NLMSG_DONE``. An ``NLMSG_ERROR`` reply raises :class:`SyscallError` (``call``)."""
    return _exchange(fd, msg_type, NLM_F_REQUEST | NLM_F_DUMP, payload, call)


def ask(fd: int, msg_type: int, payload: bytes, call: str) -> bytes:
    """Send one plain request on netlink socket ``fd``; the payload of its one reply."""
    return _exchange(fd, msg_type, NLM_F_REQUEST, payload, call)[0]


def _exchange(fd: int, msg_type: int, flags: int, payload: bytes, call: str) -> list[bytes]:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, 1, 0) + payload)
        out: list[bytes] = []
        while True:
            data = sock.recv(1 << 16)
            for kind, body in messages(data):
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", body)[0]
                    raise SyscallError(err or errno.EPROTO, call)
                out.append(body)
                if not flags & NLM_F_DUMP:
                    return out
            if not data:
                raise SyscallError(errno.EPROTO, call, "(no NLMSG_DONE)")
    except OSError as e:
        if isinstance(e, SyscallError):
            raise
        raise SyscallError(e.errno or errno.EIO, call) from None
    finally:
        sock.close()


def messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The (type, payload) of each ``struct nlmsghdr`` in one datagram (4-byte aligned)."""
    at = 0
    while at + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, at)
        if length < _NLMSGHDR.size:
            return
        yield kind, data[at + _NLMSGHDR.size : at + length]
        at += (length + 3) & ~3
