"""Under -v the command's exit_group reaches the supervisor, so the table comes first."""

from __future__ import annotations

import dataclasses

from mstack_bpf.core.abi import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    NR_EXIT_GROUP_I386,
    NR_EXIT_GROUP_X86_64,
)
from mstack_bpf.core.model import NULL, Mapping, Stack, StackKind
from mstack_bpf.seccomp.filter import ALLOW, NOTIFY, FilterSpec, compile_filter
from tests.unit.bpf_interp import Program

BLUE = Stack(StackKind.NETNS, "blue", "/run/netns/blue")


def test_exit_group_is_held_only_when_asked() -> None:
    spec = FilterSpec.from_mapping(Mapping().with_families({2}, BLUE))
    plain = Program(compile_filter(spec))
    held = Program(compile_filter(dataclasses.replace(spec, hold_exit=True)))
    for arch, nr in ((AUDIT_ARCH_X86_64, NR_EXIT_GROUP_X86_64), (AUDIT_ARCH_I386,
                                                                NR_EXIT_GROUP_I386)):
        assert plain(nr, arch) == ALLOW
        assert held(nr, arch) == NOTIFY
        assert held.const_verdict(arch, 60).verdict == ALLOW  # a thread's exit() is not held


def test_no_supervisor_no_held_exit() -> None:
    spec = FilterSpec.from_mapping(Mapping().with_families({2}, NULL).locked_all())
    held = Program(compile_filter(dataclasses.replace(spec, hold_exit=True)))
    assert held(NR_EXIT_GROUP_X86_64, AUDIT_ARCH_X86_64) == ALLOW
