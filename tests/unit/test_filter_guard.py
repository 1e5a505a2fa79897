"""A nested --lock keeps its table's marker: the filter refuses every call that could drop,
replace or close-on-exec fd 1023, and only that descriptor."""

from __future__ import annotations

import errno

import pytest

from mstack_bpf.core.abi import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    F_SETFD,
    FIOCLEX,
    GUARD_NRS,
    MARKER_FD,
)
from mstack_bpf.core.model import Mapping, Stack, StackKind
from mstack_bpf.seccomp.filter import ALLOW, FilterSpec, compile_filter, errno_ret
from tests.unit.bpf_interp import Program

BLUE = Stack(StackKind.NETNS, "blue", "/run/netns/blue")
EPERM = errno_ret(errno.EPERM)
HIGH = 0xFFFF_FFFF_0000_0000  # the kernel reads unsigned ints: high halves are noise


@pytest.fixture(scope="module")
def guarded() -> Program:
    mapping = Mapping().with_families({2}, BLUE).locked_all()
    return Program(compile_filter(FilterSpec.nested_lock(mapping, frozenset({2}))))


@pytest.mark.parametrize("arch", [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386])
def test_the_marker_cannot_be_dropped(guarded: Program, arch: int) -> None:
    close, dup2, dup3, close_range, fcntls, ioctl = GUARD_NRS[arch]
    fd = MARKER_FD
    assert guarded(close, arch, (fd,)) == EPERM
    assert guarded(close, arch, (fd | HIGH,)) == EPERM
    assert guarded(close, arch, (fd - 1,)) == ALLOW
    for dup in (dup2, dup3):
        assert guarded(dup, arch, (3, fd, 0)) == EPERM
        assert guarded(dup, arch, (fd, 3, 0)) == ALLOW  # copying it is fine
    assert guarded(close_range, arch, (3, 0xFFFFFFFF, 0)) == EPERM
    assert guarded(close_range, arch, (fd, fd, 4)) == EPERM  # CLOSE_RANGE_CLOEXEC too
    assert guarded(close_range, arch, (3, fd - 1, 0)) == ALLOW
    assert guarded(close_range, arch, (fd + 1, 0xFFFFFFFF, 0)) == ALLOW
    for fcntl in fcntls:
        assert guarded(fcntl, arch, (fd, F_SETFD, 1)) == EPERM
        assert guarded(fcntl, arch, (fd, 1, 0)) == ALLOW  # F_GETFD
        assert guarded(fcntl, arch, (4, F_SETFD, 1)) == ALLOW
    assert guarded(ioctl, arch, (fd, FIOCLEX, 0)) == EPERM
    assert guarded(ioctl, arch, (4, FIOCLEX, 0)) == ALLOW


def test_other_filters_leave_descriptor_calls_to_the_action_cache() -> None:
    plain = Program(compile_filter(FilterSpec.from_mapping(
        Mapping().with_families({2}, BLUE).locked_all())))
    for close, dup2, dup3, close_range, fcntls, _ in (GUARD_NRS[AUDIT_ARCH_X86_64],):
        for nr in (close, dup2, dup3, close_range, *fcntls):
            verdict = plain.const_verdict(AUDIT_ARCH_X86_64, nr)
            assert verdict.cacheable and verdict.verdict == ALLOW, nr
