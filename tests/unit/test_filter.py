"""The compiled seccomp filter, run through the test interpreter for many mappings.

Expectations are derived here from the mapping and docs/design.md ("The filter", "Every
path to a socket", "Seccomp action cache", "Locks", "Interface ioctls") — never from
FilterSpec — with the syscall numbers taken from arch/x86/entry/syscalls/syscall_{64,32}.tbl
rather than from the filter module. The filter is deterministic: every expectation is one
verdict, never a set of acceptable ones.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pytest

from mstack_bpf.core.model import NATIVE, NULL, Mapping, Stack, StackKind
from mstack_bpf.seccomp.filter import FilterSpec, compile_filter
from tests.unit.bpf_interp import ConstVerdict, Program

AF_MAX = 46
FAMILIES = frozenset(range(1, AF_MAX))
IP = frozenset({2, 10, 16, 17})

ARCH_X86_64 = 0xC000003E
ARCH_I386 = 0x40000003
ALLOW = 0x7FFF0000
NOTIFY = 0x7FC00000
KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
X32_BIT = 0x40000000
MSOCKET = 0xFFFFFFFB  # -5
NEW_LISTENER = 1 << 3
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWPID = 0x00020000, 0x04000000, 0x20000000
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
SIGCHLD, CLONE_VM, CLONE_FS = 17, 0x100, 0x200


def err(code: int) -> int:
    return RET_ERRNO | code


EAFNOSUPPORT, ENOSYS, EPERM = err(errno.EAFNOSUPPORT), err(errno.ENOSYS), err(errno.EPERM)


@dataclass(frozen=True)
class Nrs:
    arch: int
    socket: int
    socketpair: int
    socketcall: int | None
    io_uring_setup: int
    seccomp: int
    unshare: int
    clone: int
    clone3: int
    setns: int
    ptrace: int
    pidfd_getfd: int
    process_vm_writev: int
    process_vm_readv: int
    getpid: int
    ioctl: int


X86_64 = Nrs(ARCH_X86_64, socket=41, socketpair=53, socketcall=None, io_uring_setup=425,
             seccomp=317, unshare=272, clone=56, clone3=435, setns=308, ptrace=101,
             pidfd_getfd=438, process_vm_writev=311, process_vm_readv=310, getpid=39, ioctl=16)
I386 = Nrs(ARCH_I386, socket=359, socketpair=360, socketcall=102, io_uring_setup=425,
           seccomp=354, unshare=310, clone=120, clone3=435, setns=346, ptrace=26,
           pidfd_getfd=438, process_vm_writev=348, process_vm_readv=347, getpid=20, ioctl=54)
ABIS = (X86_64, I386)

#: every family, then values whose low 32 bits are a family (the kernel's ``int family``),
#: and negative ints
FAMILY_VALUES: tuple[int, ...] = (
    *range(64),
    0x100000002, 0x10000000A, 0xFFFFFFFF00000001, 0x8000000000000011, 1 << 32,
    0x80000002, 0xFFFFFFFF, -1, -2, -10, -(1 << 31), -(1 << 63), (1 << 64) - 1,
)


class Expect:
    """What the filter must answer for one mapping, from first principles."""

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping
        kinds = {f: mapping.table.get(f, NATIVE).kind for f in FAMILIES}
        self.kinds = kinds
        self.final_native = {f for f in mapping.locked if kinds.get(f) is StackKind.NATIVE}
        self.final_null = {f for f in mapping.locked if kinds.get(f) is StackKind.NULL}
        self.final_netns = {f for f in mapping.locked if kinds.get(f) is StackKind.NETNS}
        self.all_native_locked = self.final_native == FAMILIES
        # no listener exactly when every family's answer is fixed in the kernel
        self.supervised = self.final_native | self.final_null != FAMILIES
        self.lock_any = bool(mapping.locked)
        self.lock_native = bool(self.final_native)

    def _family(self, value: int) -> int:
        family = value & 0xFFFFFFFF  # socket(2) takes an int
        if self.all_native_locked:
            return ALLOW  # every answer is the kernel's: the call is not even looked at
        if not 1 <= family < AF_MAX:
            # Not a family: EAFNOSUPPORT, as this kernel answers, given by the filter itself
            # so that a newer kernel's new family is never let through where one may be null.
            return EAFNOSUPPORT
        if family in self.final_native:
            return ALLOW
        if family in self.final_null:
            return EAFNOSUPPORT
        return NOTIFY  # a pair too: its abstract names would be the caller's namespace's

    def socket(self, value: int) -> int:
        return self._family(value)

    def socketpair(self, value: int) -> int:
        return self._family(value)

    def socketcall_creating(self) -> int:
        """socketcall(SOCKET or SOCKETPAIR): arguments in memory, out of the filter's reach."""
        if self.all_native_locked:
            return ALLOW
        if self.supervised:
            return NOTIFY
        return ENOSYS  # nobody can read the family: the whole path is refused, as an old
        # kernel without socketcall would (callers fall back to socket(2))

    def msocket(self) -> int:
        return NOTIFY if self.supervised else EPERM

    def io_uring(self) -> int:
        return ALLOW if self.all_native_locked else ENOSYS

    def lock_extras(self, n: Nrs) -> Iterator[tuple[int, tuple[int, ...], int]]:
        """(nr, args, verdict) for the calls a lock refuses, and their harmless neighbours."""
        for flags in (0, 1, 2, NEW_LISTENER, NEW_LISTENER | 1, 1 << 32, 1 << 32 | NEW_LISTENER):
            refused = self.lock_any and flags & 0xFFFFFFFF & NEW_LISTENER
            for op in (0, 1, 2, 3):
                yield n.seccomp, (op, flags, 0x1000), EPERM if refused else ALLOW
        for request in (0, 1, 16, 0x4206, 0x4207, 24):
            refused = self.lock_any and request != 0  # all but PTRACE_TRACEME
            yield n.ptrace, (request, 1234, 0, 0), EPERM if refused else ALLOW
        for nr in (n.pidfd_getfd, n.process_vm_writev):
            yield nr, (3, 4, 0), EPERM if self.lock_any else ALLOW
        yield n.process_vm_readv, (1234, 0, 1, 0, 1, 0), ALLOW
        for flags in (0, SIGCHLD, CLONE_VM | CLONE_FS | SIGCHLD, CLONE_NEWNS, CLONE_NEWPID,
                      CLONE_NEWUTS, CLONE_NEWNET, CLONE_NEWUSER, CLONE_NEWNET | CLONE_NEWUSER,
                      CLONE_NEWUSER | CLONE_NEWNS | SIGCHLD):
            refused = self.lock_native and flags & (CLONE_NEWNET | CLONE_NEWUSER)
            for nr in (n.unshare, n.clone):
                yield nr, (flags, 0, 0, 0, 0), EPERM if refused else ALLOW
        for nstype in (0, CLONE_NEWNET, CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWUTS,
                       CLONE_NEWNET | CLONE_NEWUSER | CLONE_NEWPID):
            refused = self.lock_native and (nstype == 0 or nstype & CLONE_NEWNET)
            yield n.setns, (3, nstype), EPERM if refused else ALLOW
        yield n.clone3, (0x1000, 88), ENOSYS if self.lock_native else ALLOW

    def interface_get(self) -> int:
        """An interface *get* ioctl answers from the netlink stack (§5 "Interface ioctls")."""
        if 16 in self.final_native:
            return ALLOW
        if 16 in self.final_null:
            return err(errno.ENODEV)
        return NOTIFY

    def not_cacheable(self, n: Nrs) -> set[int]:
        """Syscall numbers whose verdict may depend on arguments or is not a constant ALLOW."""
        nrs: set[int] = set()
        if self.interface_get() != ALLOW:
            nrs.add(n.ioctl)
        if not self.all_native_locked:
            nrs |= {n.socket, n.io_uring_setup}
            if n.socketcall is not None:
                nrs.add(n.socketcall)
        if self.final_native != FAMILIES:  # some pair is refused or made in a stack
            nrs.add(n.socketpair)
        if self.lock_any:
            nrs |= {n.seccomp, n.ptrace, n.pidfd_getfd, n.process_vm_writev}
        if self.lock_native:
            nrs |= {n.unshare, n.clone, n.setns, n.clone3}
        return nrs


# --- mappings ------------------------------------------------------------------------------

BLUE = Stack(StackKind.NETNS, "blue", "/run/netns/blue")
RED = Stack(StackKind.NETNS, "/tmp/red", "/tmp/red")


def mapping(*parts: tuple[Iterable[int], Stack], locked: Iterable[int] = ()) -> Mapping:
    m = Mapping()
    for families, stack in parts:
        m = m.with_families(families, stack)
    return Mapping(dict(m.table), frozenset(locked))


_MIXED = ((IP, BLUE), ({31, 23}, NULL), ({40}, RED), ({1}, NATIVE))

MAPPINGS: dict[str, Mapping] = {
    "native": mapping(),
    "native-locked": mapping(locked=FAMILIES),
    "null": mapping((FAMILIES, NULL)),
    "null-locked": mapping((FAMILIES, NULL), locked=FAMILIES),
    "ip-netns": mapping((IP, BLUE)),
    "ip-netns-locked": mapping((IP, BLUE), locked=FAMILIES),
    "ip-null": mapping((IP, NULL)),
    "ip-null-locked": mapping((IP, NULL), locked=FAMILIES),
    "all-but-unix-netns": mapping((FAMILIES - {1}, BLUE)),
    "all-netns-locked": mapping((FAMILIES, BLUE), locked=FAMILIES),
    "mixed": mapping(*_MIXED),
    "mixed-locked": mapping(*_MIXED, locked=FAMILIES),
    "mixed-partly-locked": mapping(*_MIXED, locked={1, 2, 31}),
    "lock-one-native": mapping(({10}, BLUE), locked={2}),
    "lock-one-null": mapping(({1}, NULL), locked={1}),
    "lock-one-netns": mapping((IP, BLUE), locked={2}),
    "native-null-alternating-locked": mapping((range(1, AF_MAX, 2), NULL), locked=FAMILIES),
    "three-way-locked": mapping((range(1, AF_MAX, 3), NULL), (range(2, AF_MAX, 3), BLUE),
                                locked=FAMILIES),
    "three-way": mapping((range(1, AF_MAX, 3), NULL), (range(2, AF_MAX, 3), BLUE)),
}

_PROGRAMS: dict[str, Program] = {}


def program_for(name: str, m: Mapping) -> Program:
    if name not in _PROGRAMS:
        _PROGRAMS[name] = Program(compile_filter(FilterSpec.from_mapping(m)))  # checked on load
    return _PROGRAMS[name]


@pytest.fixture(params=sorted(MAPPINGS))
def case(request: pytest.FixtureRequest) -> tuple[Expect, Program]:
    name: str = request.param
    return Expect(MAPPINGS[name]), program_for(name, MAPPINGS[name])


def _args_for(abi: Nrs, *args: int) -> tuple[int, ...]:
    """i386 arguments reach seccomp zero-extended from 32-bit registers."""
    return tuple(a & 0xFFFFFFFF for a in args) if abi is I386 else args


# --- checks --------------------------------------------------------------------------------


def check_socket_calls(e: Expect, prog: Program) -> None:
    for abi in ABIS:
        for value in FAMILY_VALUES:
            args = _args_for(abi, value, 1, 0, -1, -1, -1)
            got = prog(abi.socket, abi.arch, args)
            assert got == e.socket(value), (abi.arch, "socket", value, hex(got))
            got = prog(abi.socketpair, abi.arch, args)
            assert got == e.socketpair(value), (abi.arch, "socketpair", value, hex(got))


def check_cache(e: Expect, prog: Program, abi: Nrs) -> None:
    exceptions = e.not_cacheable(abi)
    for nr in range(471):
        got = prog.const_verdict(abi.arch, nr)
        if nr in exceptions:
            assert not got.cacheable, (abi.arch, nr, got)
        else:
            assert got == ConstVerdict(True, ALLOW), (abi.arch, nr, got)


def test_socket_and_socketpair_every_family(case: tuple[Expect, Program]) -> None:
    check_socket_calls(*case)


@pytest.mark.parametrize("call", [1, 8])
def test_socketcall_creating_a_socket(case: tuple[Expect, Program], call: int) -> None:
    e, prog = case
    for argp in (0, 0xFFFFD000, 0xFFFFFFFF):
        got = prog(102, ARCH_I386, (call, argp))
        assert got == e.socketcall_creating(), (call, hex(got))


@pytest.mark.parametrize("call", [0, 2, 3, 4, 5, 6, 7, 9, 10, 15, 18, 20, 21, 0x101, 0xFFFFFFFF])
def test_socketcall_other_calls_are_allowed(case: tuple[Expect, Program], call: int) -> None:
    _, prog = case
    assert prog(102, ARCH_I386, (call, 0xFFFFD000)) == ALLOW


X32_NRS = (0, 1, 39, 41, 53, 56, 101, 272, 308, 317, 425, 435, 438, 512, 519, 547, 0x3FFFFFFF)


def test_x32_numbers_are_enosys_never_a_socket(case: tuple[Expect, Program]) -> None:
    _, prog = case
    for nr in X32_NRS:
        for family in (1, 2, 10, 0x100000002):
            assert prog(nr | X32_BIT, ARCH_X86_64, (family, 1, 0)) == ENOSYS, hex(nr)


def test_msocket_minus_5_is_not_x32(case: tuple[Expect, Program]) -> None:
    e, prog = case
    for nr in (-5, MSOCKET):
        for args in ((0, 2, 1, 0), (0x7FFF0000, 0, 0, 0), (0, 1 << 32 | 1, 0, 0)):
            assert prog(nr, ARCH_X86_64, args) == e.msocket()


def test_minus_5_on_i386_is_no_socket(case: tuple[Expect, Program]) -> None:
    """-5 is no i386 call: the filter lets it through untouched and the kernel answers it
    ENOSYS (msocket is an x86_64 call only)."""
    _, prog = case
    assert prog(MSOCKET, ARCH_I386, (0, 2, 1, 0)) == ALLOW


def test_io_uring_setup_on_both_arches(case: tuple[Expect, Program]) -> None:
    e, prog = case
    for abi in ABIS:
        assert prog(abi.io_uring_setup, abi.arch, (8, 0x1000)) == e.io_uring(), abi.arch


@pytest.mark.parametrize("arch", [0, 0x3E, 0x4000003E, 0xC00000B7, 0x40000028, 0xC0000003,
                                  0xFFFFFFFF])
def test_unknown_arch_kills(case: tuple[Expect, Program], arch: int) -> None:
    _, prog = case
    for nr in (0, 39, 41, 102, 359, MSOCKET, 41 | X32_BIT):
        assert prog(nr, arch, (2, 1, 0)) == KILL_PROCESS


@pytest.mark.parametrize("abi", ABIS, ids=["x86_64", "i386"])
def test_lock_extras(case: tuple[Expect, Program], abi: Nrs) -> None:
    e, prog = case
    for nr, args, expected in e.lock_extras(abi):
        got = prog(nr, abi.arch, args)
        assert got == expected, (abi.arch, nr, [hex(a) for a in args], hex(got))


@pytest.mark.parametrize("abi", ABIS, ids=["x86_64", "i386"])
def test_action_cache_eligibility(case: tuple[Expect, Program], abi: Nrs) -> None:
    check_cache(*case, abi)


def test_ordinary_syscalls_allowed_whatever_the_arguments(case: tuple[Expect, Program]) -> None:
    _, prog = case
    for abi in ABIS:
        for args in ((0,), (2, 1, 0), (-1, -1, -1, -1, -1, -1)):
            assert prog(abi.getpid, abi.arch, args) == ALLOW


INTERFACE_GETS = (0x8910, 0x8912, 0x8913, 0x8915, 0x8917, 0x8919, 0x891B, 0x891D, 0x8921,
                  0x8927, 0x8933)
#: sets (SIOCSIF*), per-socket requests (SIOCGSTAMP, SIOCATMARK, FIONREAD, SIOCGSKNS, the
#: private range) and unrelated ioctls (TCGETS) never leave the kernel
OTHER_IOCTLS = (0x8911, 0x8914, 0x8916, 0x8922, 0x8923, 0x8924, 0x8934, 0x8943, 0x8906, 0x8905,
                0x541B, 0x894C, 0x89E0, 0x89FF, 0x5401, 0)


@pytest.mark.parametrize("abi", ABIS, ids=["x86_64", "i386"])
def test_interface_ioctls(case: tuple[Expect, Program], abi: Nrs) -> None:
    e, prog = case
    for request in INTERFACE_GETS:
        for value in {request, *_args_for(abi, 1 << 32 | request)}:  # an unsigned int request
            got = prog(abi.ioctl, abi.arch, (3, value, 0xFFFFD000))
            assert got == e.interface_get(), (hex(value), hex(got))
    for request in OTHER_IOCTLS:
        assert prog(abi.ioctl, abi.arch, (3, request, 0xFFFFD000)) == ALLOW, hex(request)


def test_program_size_and_supervised_flag(case: tuple[Expect, Program]) -> None:
    e, prog = case
    assert len(prog) < 4096
    assert FilterSpec.from_mapping(e.mapping).supervised is e.supervised


# --- every family on its own ---------------------------------------------------------------

SINGLES: dict[str, Mapping] = {}
for _f in sorted(FAMILIES):
    SINGLES[f"netns-{_f}"] = mapping(({_f}, BLUE))
    SINGLES[f"netns-{_f}-locked"] = mapping(({_f}, BLUE), locked=FAMILIES)
    SINGLES[f"null-{_f}-locked"] = mapping(({_f}, NULL), locked=FAMILIES)
    SINGLES[f"null-{_f}-alone-locked"] = mapping(({_f}, NULL), locked={_f})


@pytest.mark.parametrize("name", sorted(SINGLES))
def test_each_family_redirected_alone(name: str) -> None:
    e, prog = Expect(SINGLES[name]), program_for(name, SINGLES[name])
    check_socket_calls(e, prog)
    for abi in ABIS:
        for nr, args, expected in e.lock_extras(abi):
            assert prog(nr, abi.arch, args) == expected, (abi.arch, nr, args)
        assert prog(abi.io_uring_setup, abi.arch) == e.io_uring()
    assert prog(MSOCKET, ARCH_X86_64, (0, 2, 1, 0)) == e.msocket()
    assert prog(41 | X32_BIT, ARCH_X86_64, (2, 1, 0)) == ENOSYS
    check_cache(e, prog, X86_64)
    assert FilterSpec.from_mapping(e.mapping).supervised is e.supervised


# --- the expectations themselves -----------------------------------------------------------


def test_expect_supervised_only_when_something_is_not_final() -> None:
    assert not Expect(MAPPINGS["native-locked"]).supervised
    assert not Expect(MAPPINGS["null-locked"]).supervised
    assert not Expect(MAPPINGS["ip-null-locked"]).supervised
    assert Expect(MAPPINGS["all-netns-locked"]).supervised
    assert Expect(MAPPINGS["lock-one-null"]).supervised
    assert Expect(MAPPINGS["native"]).supervised

