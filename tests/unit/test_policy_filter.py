"""Policy → filter: each example policy compiled and run through the BPF interpreter, for
every family and both ABIs, must give the verdict the policy asks for."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from mstack_bpf.core.abi import AUDIT_ARCH_I386, AUDIT_ARCH_X86_64
from mstack_bpf.core.families import AF_INET, AF_MAX, AF_PACKET
from mstack_bpf.core.model import Mapping, StackKind
from mstack_bpf.launch.policy import load_policy
from mstack_bpf.seccomp.filter import ALLOW, NOTIFY, FilterSpec, compile_filter, errno_ret
from tests.unit.bpf_interp import Program

POLICIES = sorted((Path(__file__).resolve().parents[2] / "policy").glob("*.toml"))
SOCKET = {AUDIT_ARCH_X86_64: 41, AUDIT_ARCH_I386: 359}
REFUSED = errno_ret(errno.EAFNOSUPPORT)


def expected(mapping: Mapping, family: int) -> int:
    if not 1 <= family < AF_MAX:
        return REFUSED
    kind = mapping.stack_of(family).kind
    if family not in mapping.locked or kind is StackKind.NETNS:
        return NOTIFY
    return ALLOW if kind is StackKind.NATIVE else REFUSED


@pytest.mark.parametrize("path", POLICIES, ids=[p.stem for p in POLICIES])
def test_example_policy_compiles_to_what_it_says(path: Path) -> None:
    mapping = load_policy(str(path)).mapping
    program = Program(compile_filter(FilterSpec.from_mapping(mapping)))
    for arch, nr in SOCKET.items():
        for family in range(64):
            for high in (0, 0x1_0000_0000):  # the kernel reads an int: high bits are noise
                got = program(nr, arch, (family | high, 1, 0))
                assert got == expected(mapping, family), (path.name, hex(arch), family, high)
        # SOCK_PACKET on AF_INET is made as AF_PACKET: it takes AF_PACKET's verdict
        assert program(nr, arch, (AF_INET, 10, 0)) == expected(mapping, AF_PACKET)


def test_lockdown_needs_no_supervisor() -> None:
    lockdown = next(p for p in POLICIES if p.stem == "lockdown")
    assert not FilterSpec.from_mapping(load_policy(str(lockdown)).mapping).supervised
