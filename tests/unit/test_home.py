"""Where the command lives and the mapping seen from there (core/home.py), every shape."""

from __future__ import annotations

import pytest

from mstack_bpf.core.families import (
    AF_INET,
    AF_INET6,
    AF_NETLINK,
    AF_PACKET,
    AF_UNIX,
    ALL_FAMILIES,
    parse_lists,
)
from mstack_bpf.core.home import home_of, own, relative
from mstack_bpf.core.model import NATIVE, NULL, Mapping, Stack, StackKind
from mstack_bpf.seccomp.filter import ALLOW, NOTIFY, FilterSpec

A = Stack(StackKind.NETNS, "a", "/run/netns/a")
B = Stack(StackKind.NETNS, "b", "/run/netns/b")
START = Stack(StackKind.NETNS, "native", "netns:[4026531833]")
IP = frozenset({AF_INET, AF_INET6, AF_NETLINK, AF_PACKET})


def anywhere(stack: Stack) -> bool:
    return True


def nowhere(stack: Stack) -> bool:
    return False


@pytest.mark.parametrize(("lists", "home"), [
    (["ip"], A), (["-unix"], A), ([], A), (["6"], None), (["4"], A), (["unix"], None),
])
def test_home_is_the_stack_of_ipv4(lists: list[str], home: Stack | None) -> None:
    mapping = Mapping().with_families(parse_lists(lists), A)
    assert home_of(mapping, anywhere) == home


def test_no_home_where_mstack_may_not_enter_or_is_told_not_to() -> None:
    mapping = Mapping().with_families(IP, A)
    assert home_of(mapping, nowhere) is None
    assert home_of(mapping, anywhere, keep_namespace=True) is None
    assert home_of(Mapping().with_families(IP, NULL), anywhere) is None
    assert home_of(Mapping(), anywhere) is None


def test_relative_mapping_of_ip_in_a_stack() -> None:
    seen = relative(Mapping().with_families(IP, A), A, START)
    for family in IP:
        assert seen.stack_of(family) == own(A) and seen.stack_of(family).kind is StackKind.NATIVE
    for family in ALL_FAMILIES - IP:
        assert seen.stack_of(family) == START
    # the kernel serves the IP families itself; native ones go to the supervisor
    spec = FilterSpec.from_mapping(seen.locked_all())
    assert spec.socket[AF_INET] == ALLOW and spec.socket[AF_UNIX] == NOTIFY
    assert spec.lock_native and spec.supervised


def test_every_family_in_the_home_needs_no_supervisor_under_a_lock() -> None:
    seen = relative(Mapping().with_families(ALL_FAMILIES, A).locked_all(), A, START)
    spec = FilterSpec.from_mapping(seen)
    assert not spec.supervised and set(spec.socket.values()) == {ALLOW}


def test_policy_with_several_stacks_keeps_the_others() -> None:
    mapping = (Mapping().with_families({AF_INET}, A).with_families({AF_INET6}, B)
               .with_families({AF_PACKET}, NULL))
    mapping = Mapping(mapping.table, frozenset({AF_INET}), (A, B, NATIVE), restricted=True)
    seen = relative(mapping, A, START)
    assert seen.stack_of(AF_INET) == own(A) and seen.stack_of(AF_INET6) == B
    assert seen.stack_of(AF_PACKET) == NULL and seen.stack_of(AF_UNIX) == START
    assert seen.locked == frozenset({AF_INET}) and seen.restricted
    assert seen.allowed == (own(A), B, START)
