"""Decoding a notification (calls) and deciding its answer (decide): pure functions."""

from __future__ import annotations

import errno
import socket

import pytest

from mstack_bpf.core.abi import SOCK_CLOEXEC, SOCK_NONBLOCK
from mstack_bpf.core.calls import (
    MsocketCall,
    OtherCall,
    SocketCall,
    SocketcallCall,
    SocketPairCall,
    decode,
    decode_socketcall,
    needs_full_credentials,
)
from mstack_bpf.core.decide import (
    Continue,
    Create,
    CreatePair,
    Fail,
    Msocket,
    ReadSocketcall,
    decide,
)
from mstack_bpf.core.model import NATIVE, NULL, Mapping, Stack, StackKind

X86_64 = 0xC000003E
I386 = 0x40000003
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17
STREAM, DGRAM, RAW = 1, 2, 3
BLUE = Stack(StackKind.NETNS, "blue", "/run/netns/blue")


def regs(*args: int) -> tuple[int, ...]:
    """Six 64-bit registers as seccomp_data carries them (negative ints two's-complement)."""
    padded = (*args, *(0,) * (6 - len(args)))
    return tuple(a & (1 << 64) - 1 for a in padded)


# --- calls.decode --------------------------------------------------------------------------


def test_decode_x86_64_socket() -> None:
    flags = STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK
    call = decode(X86_64, 41, regs(AF_INET, flags, 6))
    assert call == SocketCall(AF_INET, flags, 6)
    assert isinstance(call, SocketCall) and call.type & SOCK_CLOEXEC and not call.from_memory
    plain = decode(X86_64, 41, regs(AF_UNIX, STREAM, 0))
    assert isinstance(plain, SocketCall) and not plain.type & SOCK_CLOEXEC


def test_decode_x86_64_socketpair() -> None:
    call = decode(X86_64, 53, regs(AF_UNIX, STREAM, 0, 0x7FFC0000))
    assert call == SocketPairCall(AF_UNIX, STREAM, 0, 0x7FFC0000)


def test_decode_ignores_the_high_32_bits() -> None:
    # socket(2) takes ints: 0x100000002 is AF_INET for the kernel
    args = regs(0x100000002, 0xFFFFFFFF00000001, 0x1_00000000)
    assert decode(X86_64, 41, args) == SocketCall(AF_INET, STREAM, 0)
    assert decode(X86_64, 53, regs(0xDEAD000000000001)) == SocketPairCall(AF_UNIX)
    assert decode(X86_64, 41 | 1 << 32, regs(AF_INET, STREAM)) == SocketCall(AF_INET, STREAM, 0)


def test_decode_negative_values_as_int() -> None:
    assert decode(X86_64, 41, regs(-1, -2, 0x80000000)) == SocketCall(-1, -2, -(1 << 31))
    assert decode(X86_64, 41, regs(0xFFFFFFFF)) == SocketCall(-1, 0, 0)


@pytest.mark.parametrize("nr", [-5, 0xFFFFFFFB, 0xFFFFFFFFFFFFFFFB])
def test_decode_msocket(nr: int) -> None:
    path = 0x7FFD_1234_5678
    call = decode(X86_64, nr, regs(path, AF_INET, STREAM | SOCK_CLOEXEC, 0x1_00000006))
    assert call == MsocketCall(path, AF_INET, STREAM | SOCK_CLOEXEC, 6)
    assert decode(X86_64, nr, regs(0, 0, 0, 0)) == MsocketCall(0, 0, 0, 0)  # NULL path


def test_decode_i386() -> None:
    assert decode(I386, 359, regs(AF_INET6, DGRAM, 17)) == SocketCall(AF_INET6, DGRAM, 17)
    call = decode(I386, 360, regs(AF_UNIX, STREAM, 0, 0xFFFFFFFF_FFFFD000))
    assert call == SocketPairCall(AF_UNIX, STREAM, 0, 0xFFFFD000)
    assert decode(I386, 102, regs(1, 0xFFFFD000)) == SocketcallCall(1, 0xFFFFD000)
    assert decode(I386, 102, regs(8, 0x1_FFFFD000)) == SocketcallCall(8, 0xFFFFD000)


def test_decode_numbers_belong_to_their_arch() -> None:
    assert decode(I386, 41, regs(AF_INET)) == OtherCall(I386, 41)  # dup on i386
    assert decode(X86_64, 359, regs(AF_INET)) == OtherCall(X86_64, 359)
    assert decode(X86_64, 102, regs(1, 0x1000)) == OtherCall(X86_64, 102)  # getuid
    assert decode(I386, 0xFFFFFFFB, regs(0, AF_INET)) == OtherCall(I386, 0xFFFFFFFB)
    assert decode(X86_64, 41 | 0x40000000, regs(AF_INET)) == OtherCall(X86_64, 0x40000029)


@pytest.mark.parametrize("arch", [0, 0xC00000B7, 0x3E, 0x4000003E])
def test_decode_unknown_arch(arch: int) -> None:
    assert decode(arch, 41, regs(AF_INET, STREAM)) == OtherCall(arch, 41)


# --- calls.decode_socketcall ---------------------------------------------------------------


def test_decode_socketcall_socket_comes_from_memory() -> None:
    call = decode_socketcall(1, (AF_INET, STREAM | SOCK_CLOEXEC, 0))
    assert call == SocketCall(AF_INET, STREAM | SOCK_CLOEXEC, 0, from_memory=True)


def test_decode_socketcall_socketpair_and_others() -> None:
    call = decode_socketcall(8, (AF_UNIX, STREAM, 0, 0xFFFFD100))
    assert call == SocketPairCall(AF_UNIX, STREAM, 0, 0xFFFFD100, from_memory=True)
    for sub in (2, 3, 5, 18, 0, 99):
        assert isinstance(decode_socketcall(sub, (AF_INET, STREAM, 0)), OtherCall)


def test_decode_socketcall_words_are_ints() -> None:
    assert decode_socketcall(1, (0xFFFFFFFF, 0xFFFFFFFE, 0)) == SocketCall(-1, -2, 0, True)


# --- calls.needs_full_credentials ----------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "sock_type", "protocol", "full"),
    [
        (AF_INET, STREAM, 0, False),
        (AF_INET, STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 6, False),
        (AF_INET, DGRAM, 17, False),
        (AF_INET6, DGRAM, 0, False),
        (AF_UNIX, STREAM, 0, False),
        (AF_UNIX, DGRAM, 0, False),
        (AF_NETLINK, RAW, 0, False),  # netlink checks the sender at send time
        (AF_INET, RAW, 1, True),
        (AF_INET6, RAW | SOCK_CLOEXEC, 58, True),
        (AF_INET, DGRAM, socket.IPPROTO_ICMP, True),  # ping sockets check the group range
        (AF_INET6, DGRAM, socket.IPPROTO_ICMPV6, True),
        (AF_PACKET, RAW, 0, True),
        (AF_PACKET, DGRAM, 0, True),
        (31, STREAM, 0, True),  # any other family
        (40, STREAM, 0, True),
    ],
)
def test_needs_full_credentials(family: int, sock_type: int, protocol: int, full: bool) -> None:
    assert needs_full_credentials(family, sock_type, protocol) is full


# --- decide.decide -------------------------------------------------------------------------


def table(locked: bool = False) -> Mapping:
    """unix and netlink native, ipv4 null, ipv6 and packet in ``blue``."""
    m = Mapping().with_families({AF_INET}, NULL).with_families({AF_INET6, AF_PACKET}, BLUE)
    return m.locked_all() if locked else m


LOCKS = pytest.mark.parametrize("locked", [False, True], ids=["unlocked", "locked"])


@LOCKS
def test_native_from_registers_continues(locked: bool) -> None:
    for family in (AF_UNIX, AF_NETLINK):
        assert decide(SocketCall(family, STREAM, 0), table(locked)) == Continue()


@LOCKS
def test_native_from_memory_is_created_in_native(locked: bool) -> None:
    call = SocketCall(AF_UNIX, STREAM | SOCK_CLOEXEC, 0, from_memory=True)
    assert decide(call, table(locked)) == Create(NATIVE, AF_UNIX, STREAM | SOCK_CLOEXEC, 0)


@LOCKS
def test_null_fails_with_eafnosupport(locked: bool) -> None:
    for from_memory in (False, True):
        call = SocketCall(AF_INET, STREAM, 0, from_memory)
        assert decide(call, table(locked)) == Fail(errno.EAFNOSUPPORT)


@LOCKS
def test_netns_is_created_there(locked: bool) -> None:
    flags = DGRAM | SOCK_NONBLOCK
    for from_memory in (False, True):
        for family in (AF_INET6, AF_PACKET):
            call = SocketCall(family, flags, 17, from_memory)
            assert decide(call, table(locked)) == Create(BLUE, family, flags, 17)


@LOCKS
def test_socketpair(locked: bool) -> None:
    assert decide(SocketPairCall(AF_INET), table(locked)) == Fail(errno.EAFNOSUPPORT)
    for family in (AF_UNIX, AF_NETLINK):
        assert decide(SocketPairCall(family), table(locked)) == Continue()
    # made in its stack: an AF_UNIX datagram end could otherwise reach abstract names of
    # the caller's own namespace
    call = SocketPairCall(AF_INET6, DGRAM, 0, 0x7FFC0000)
    assert decide(call, table(locked)) == CreatePair(BLUE, AF_INET6, DGRAM, 0, 0x7FFC0000)
    from_memory = SocketPairCall(AF_UNIX, DGRAM, 0, 0xFFFFD100, from_memory=True)
    assert decide(from_memory, table(locked)) == CreatePair(NATIVE, AF_UNIX, DGRAM, 0,
                                                            0xFFFFD100)


@pytest.mark.parametrize("family", [0, 46, 47, 1000, -1, -(1 << 31)])
def test_family_out_of_range_is_native(family: int) -> None:
    everything_null = Mapping().with_families(range(1, 46), NULL)
    assert decide(SocketCall(family, STREAM, 0), everything_null) == Continue()
    call = SocketCall(family, STREAM, 0, from_memory=True)
    assert decide(call, everything_null) == Create(NATIVE, family, STREAM, 0)
    assert decide(SocketPairCall(family), everything_null) == Continue()


def test_socketcall_reads_memory_first() -> None:
    call = SocketcallCall(1, 0xFFFFD000)
    assert decide(call, table()) == ReadSocketcall(1, 0xFFFFD000)
    assert decide(SocketcallCall(8, 0xFFFFD000), table()) == ReadSocketcall(8, 0xFFFFD000)


@pytest.mark.parametrize("sub", [2, 3, 4, 5, 9, 11, 16, 18, 20, 0, 99])
def test_socketcall_making_no_socket_is_the_kernels(sub: int) -> None:
    """An OCI profile sends every socketcall (connect, send, accept...): only SOCKET and
    SOCKETPAIR make a socket of a family, the rest run as made, even with all null."""
    everything_null = Mapping().with_families(range(1, 46), NULL)
    assert decide(SocketcallCall(sub, 0xFFFFD000), everything_null) == Continue()


def test_socketcall_then_socket_from_memory() -> None:
    inner = decode_socketcall(1, (AF_UNIX, STREAM, 0))
    assert decide(inner, table()) == Create(NATIVE, AF_UNIX, STREAM, 0)
    inner = decode_socketcall(1, (AF_INET6, STREAM, 0))
    assert decide(inner, table()) == Create(BLUE, AF_INET6, STREAM, 0)


def test_socketpair_from_memory_never_continues_while_a_family_is_null() -> None:
    # The filter notifies socketcall (ipv4 is in a namespace); the supervisor reads AF_INET,
    # whose pair is allowed, and CONTINUEs; a second thread has meanwhile written AF_UNIX
    # into the block, and the kernel hands out a unix pair although unix is locked to null.
    m = Mapping().with_families({AF_UNIX}, NULL).with_families({AF_INET}, BLUE).locked_all()
    inner = decode_socketcall(8, (AF_INET, STREAM, 0, 0xFFFFD100))
    assert not isinstance(decide(inner, m), Continue)


def test_msocket_is_handed_on() -> None:
    call = MsocketCall(0x1000, AF_INET, STREAM, 0)
    assert decide(call, table()) == Msocket(call)


def test_other_calls_fail_with_enosys() -> None:
    assert decide(OtherCall(X86_64, 39), table()) == Fail(errno.ENOSYS)
    assert decide(OtherCall(I386, 102), table()) == Fail(errno.ENOSYS)
