"""Decode a seccomp notification into the socket call it stands for (pure)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from mstack_bpf.core.abi import (
    I386,
    MSOCKET_NR,
    NR_EXIT_GROUP_I386,
    NR_EXIT_GROUP_X86_64,
    NR_IOCTL_I386,
    NR_IOCTL_X86_64,
    SOCK_PACKET,
    SOCK_TYPE_MASK,
    SYS_SOCKET,
    SYS_SOCKETPAIR,
    X86_64,
)


def _s32(value: int) -> int:
    """The low 32 bits of a register as the kernel's ``int`` sees them."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


@dataclass(frozen=True)
class SocketCall:
    """socket(2), from registers (``from_memory`` False) or from i386 socketcall's block."""

    family: int
    type: int
    protocol: int
    from_memory: bool = False


@dataclass(frozen=True)
class SocketPairCall:
    """socketpair(2); ``sv`` is the address of the caller's ``int[2]``."""

    family: int
    type: int = 0
    protocol: int = 0
    sv: int = 0
    from_memory: bool = False


@dataclass(frozen=True)
class SocketcallCall:
    """i386 ``socketcall(call, args)``: the arguments are 32-bit words at ``argp``."""

    call: int
    argp: int


@dataclass(frozen=True)
class MsocketCall:
    """The virtual ``msocket(path, domain, type, protocol)`` call, number -5 (as in VUOS)."""

    path_ptr: int
    family: int
    type: int
    protocol: int


@dataclass(frozen=True)
class IoctlCall:
    """An interface *get* ioctl (``SIOCGIF*``) on descriptor ``fd``; ``argp`` in memory."""

    fd: int
    request: int
    argp: int
    compat: bool = False  # from i386 code: 32-byte ifreq, 32-bit pointers


@dataclass(frozen=True)
class ExitGroupCall:
    """exit_group(2), sent to the supervisor only under ``-v``: the table goes out first."""


@dataclass(frozen=True)
class OtherCall:
    arch: int
    nr: int


Call = (SocketCall | SocketPairCall | SocketcallCall | MsocketCall | IoctlCall | ExitGroupCall
        | OtherCall)


def decode(arch: int, nr: int, args: tuple[int, ...]) -> Call:
    nr &= 0xFFFFFFFF
    if arch == X86_64.arch:
        if nr == MSOCKET_NR:
            return MsocketCall(args[0], _s32(args[1]), _s32(args[2]), _s32(args[3]))
        if nr == NR_IOCTL_X86_64:
            return IoctlCall(_s32(args[0]), args[1] & 0xFFFFFFFF, args[2])
        if nr == NR_EXIT_GROUP_X86_64:
            return ExitGroupCall()
        abi = X86_64
    elif arch == I386.arch:
        abi = I386
        if nr == I386.socketcall:
            return SocketcallCall(_s32(args[0]), args[1] & 0xFFFFFFFF)
        if nr == NR_IOCTL_I386:
            return IoctlCall(_s32(args[0]), args[1] & 0xFFFFFFFF, args[2] & 0xFFFFFFFF, True)
        if nr == NR_EXIT_GROUP_I386:
            return ExitGroupCall()
    else:
        return OtherCall(arch, nr)
    if nr == abi.socket:
        return SocketCall(_s32(args[0]), _s32(args[1]), _s32(args[2]))
    if nr == abi.socketpair:
        sv = args[3] & 0xFFFFFFFF if abi is I386 else args[3]
        return SocketPairCall(_s32(args[0]), _s32(args[1]), _s32(args[2]), sv)
    return OtherCall(arch, nr)


def decode_socketcall(call: int, words: tuple[int, ...]) -> Call:
    """The call inside i386 socketcall, given the 32-bit words read at its ``argp``."""
    if call == SYS_SOCKET:
        return SocketCall(_s32(words[0]), _s32(words[1]), _s32(words[2]), from_memory=True)
    if call == SYS_SOCKETPAIR:
        return SocketPairCall(_s32(words[0]), _s32(words[1]), _s32(words[2]), words[3],
                              from_memory=True)
    return OtherCall(I386.arch, call)


def socketcall_words(call: int) -> int:
    """How many 32-bit words i386 socketcall reads at ``argp`` for ``call`` (net/socket.c
    ``nargs``): no more, or a block at the end of a mapping would fault for us only."""
    return 4 if call == SYS_SOCKETPAIR else 3


def effective_family(family: int, sock_type: int) -> int:
    """The family the kernel really makes: ``socket(AF_INET, SOCK_PACKET)`` is AF_PACKET."""
    if family == socket.AF_INET and sock_type & SOCK_TYPE_MASK == SOCK_PACKET:
        return socket.AF_PACKET
    return family


def needs_full_credentials(family: int, sock_type: int, protocol: int) -> bool:
    """Whether creating this socket checks more than the owner (capabilities, groups).

    Only TCP, UDP and SCTP-style sockets of AF_INET/AF_INET6, UNIX and netlink sockets merely
    record their owner at creation; raw, packet (SOCK_PACKET included), ICMP ("ping") and
    every other family may check capabilities or groups, and take the full switch.
    """
    if family in (socket.AF_UNIX, socket.AF_NETLINK):
        return False
    if family in (socket.AF_INET, socket.AF_INET6):
        base = sock_type & SOCK_TYPE_MASK
        if base not in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
            return True
        return protocol in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6)
    return True
