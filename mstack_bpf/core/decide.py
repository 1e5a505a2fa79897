"""Which answer a socket call gets, given the caller's family → stack table (pure).

Handlers return a decision value and do no I/O; the supervisor carries it out. A decision
taken from registers may be answered with CONTINUE (the kernel then makes exactly the socket
that was decided on, with the caller's own credentials); a decision taken from the target's
memory never is (the memory may change after we read it): the supervisor makes that socket.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from mstack_bpf.core.abi import SOCK_DEFAULT, SYS_SOCKET, SYS_SOCKETPAIR
from mstack_bpf.core.calls import (
    Call,
    ExitGroupCall,
    IoctlCall,
    MsocketCall,
    OtherCall,
    SocketCall,
    SocketcallCall,
    SocketPairCall,
    effective_family,
)
from mstack_bpf.core.families import AF_MAX, AF_NETLINK, ALL_FAMILIES
from mstack_bpf.core.model import NATIVE, Mapping, Stack, StackKind

AF_UNSPEC = 0


@dataclass(frozen=True)
class Continue:
    """Let the kernel run the call as the caller made it."""


@dataclass(frozen=True)
class Fail:
    errno: int


@dataclass(frozen=True)
class Create:
    """Make the socket in ``stack`` (native: the caller's own namespace) and inject it."""

    stack: Stack
    family: int
    type: int
    protocol: int


@dataclass(frozen=True)
class CreatePair:
    """Make the socketpair in ``stack`` (native: the caller's own namespace), install both
    ends in the caller and write their numbers to its ``int[2]`` at ``sv``."""

    stack: Stack
    family: int
    type: int
    protocol: int
    sv: int


@dataclass(frozen=True)
class ReadSocketcall:
    """Read i386 socketcall's argument block at ``argp``, then decide again."""

    call: int
    argp: int


@dataclass(frozen=True)
class Msocket:
    """A msocket call: read the path (if any) once, then :func:`decide_msocket`."""

    call: MsocketCall


@dataclass(frozen=True)
class InterfaceIoctl:
    """Answer an interface ioctl from ``stack`` (native: the caller's own namespace)."""

    stack: Stack
    call: IoctlCall


Decision = Continue | Fail | Create | CreatePair | ReadSocketcall | Msocket | InterfaceIoctl


def stack_for(table: Mapping, family: int) -> Stack:
    return table.stack_of(family) if 1 <= family < AF_MAX else NATIVE


def decide(call: Call, table: Mapping) -> Decision:
    match call:
        case SocketCall(family=family, type=sock_type):
            stack = stack_for(table, effective_family(family, sock_type))
            if stack.kind is StackKind.NULL:
                return Fail(errno.EAFNOSUPPORT)
            if stack.kind is StackKind.NATIVE and not call.from_memory:
                return Continue()
            return Create(stack, call.family, call.type, call.protocol)
        case SocketPairCall(family=family):
            # A pair reaches no network, but an AF_UNIX datagram end can send to (and bind)
            # abstract names, which are per namespace: it is made in its family's stack.
            stack = stack_for(table, family)
            if stack.kind is StackKind.NULL:
                return Fail(errno.EAFNOSUPPORT)
            if stack.kind is StackKind.NATIVE and not call.from_memory:
                return Continue()
            return CreatePair(stack, family, call.type, call.protocol, call.sv)
        case SocketcallCall(call=sub, argp=argp):
            if sub not in (SYS_SOCKET, SYS_SOCKETPAIR):
                # connect, send, accept...: no socket of a family made, nothing to decide
                # (only an OCI profile sends them: it cannot tell socketcall's sub-calls
                # apart, mstack-agent(8)); ``sub`` is a register, so the kernel runs this one
                return Continue()
            return ReadSocketcall(sub, argp)
        case MsocketCall():
            return Msocket(call)
        case IoctlCall():
            # As in VUOS: interface ioctls answer from the process's netlink stack, whatever
            # socket they are issued on, so that they agree with what netlink shows.
            netlink = table.stack_of(AF_NETLINK)
            if netlink.kind is StackKind.NULL:
                return Fail(errno.ENODEV)
            return InterfaceIoctl(netlink, call)
        case ExitGroupCall():
            return Continue()
        case OtherCall():
            return Fail(errno.ENOSYS)
    raise AssertionError(call)


@dataclass(frozen=True)
class SetDefault:
    """msocket(path, domain, SOCK_DEFAULT): make ``stack`` the caller's default."""

    families: frozenset[int]
    stack: Stack


def same_stack(a: Stack, b: Stack) -> bool:
    return a == b or (a.kind is b.kind and a.kind is not StackKind.NETNS)


def decide_msocket(call: MsocketCall, table: Mapping, named: Stack | None) -> Decision | SetDefault:
    """msocket(2) once its path has been read and opened (``named``; None for a NULL path).

    Under a lock nothing may move a locked family: not SOCK_DEFAULT, not an explicit path
    naming another stack.
    """
    if call.type == SOCK_DEFAULT:
        if call.family == AF_UNSPEC:
            families = ALL_FAMILIES
        elif 1 <= call.family < AF_MAX:
            families = frozenset({call.family})
        else:
            return Fail(errno.EAFNOSUPPORT)
        if families & table.locked:
            return Fail(errno.EPERM)
        if named is None:
            return Fail(errno.EINVAL)
        return SetDefault(families, named)
    family = effective_family(call.family, call.type)
    default = stack_for(table, family)
    stack = default if named is None else named
    if family in table.locked and not same_stack(stack, default):
        return Fail(errno.EPERM)
    if stack.kind is StackKind.NULL:
        return Fail(errno.EAFNOSUPPORT)
    return Create(stack, call.family, call.type, call.protocol)
