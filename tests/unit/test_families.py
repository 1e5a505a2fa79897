"""The ``-o`` list grammar of mstack(1) (docs/design.md, "The -o grammar")."""

from __future__ import annotations

import socket

import pytest

from mstack_bpf.core.families import (
    ALL_FAMILIES,
    FamilyListError,
    apply_list,
    family_name,
    parse_item,
    parse_lists,
)

ALL = frozenset(range(1, 46))
IP = frozenset({2, 10, 16, 17})


def test_all_is_every_family_below_af_max() -> None:
    assert ALL_FAMILIES == ALL
    assert parse_item("all") == ALL


@pytest.mark.parametrize(
    ("names", "family"),
    [
        (("unix", "u"), 1),
        (("ipv4", "4"), 2),
        (("ipv6", "6"), 10),
        (("netlink", "n"), 16),
        (("packet", "p"), 17),
        (("irda", "i"), 23),
        (("bluetooth", "b"), 31),
    ],
)
def test_every_name_and_abbreviation(names: tuple[str, ...], family: int) -> None:
    for name in names:
        assert parse_item(name) == {family}
        assert parse_item(name.upper()) == {family}
        assert parse_item(f"  {name}\t") == {family}
        assert parse_lists([name]) == {family}


def test_ip_is_ipv4_ipv6_netlink_packet() -> None:
    assert parse_item("ip") == IP
    assert parse_lists(["ip"]) == IP


@pytest.mark.parametrize("number", [1, 2, 16, 45])
def test_family_number(number: int) -> None:
    assert parse_item(f"#{number}") == {number}
    assert parse_item(f"#0{number}") == {number}


def test_without_o_all_families() -> None:
    assert parse_lists([]) == ALL


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("-unix", ALL - {1}),
        ("+ip,-ipv6", {2, 16, 17}),
        ("ip,-ipv6", {2, 16, 17}),
        ("4,6", {2, 10}),
        ("#16", {16}),
        ("-ip,+4", ALL - {10, 16, 17}),
        ("-all", set()),
        ("-all,unix", {1}),
        ("all,-unix,-#45", ALL - {1, 45}),
        ("u,u,+u", {1}),
        ("4,-4", set()),
        (" -unix , +IPv4 ", ALL - {1}),
        ("b,i,#40", {31, 23, 40}),
    ],
)
def test_lists(spec: str, expected: set[int]) -> None:
    assert parse_lists([spec]) == expected


def test_each_item_has_its_own_sign() -> None:
    # the original leaked a sign onto the following items: "-unix,ipv4" removed ipv4 too
    assert parse_lists(["-unix,ipv4"]) == ALL - {1}
    assert parse_lists(["-unix,ipv4,-ipv6"]) == ALL - {1, 10}


def test_several_lists_apply_in_order_to_one_set() -> None:
    assert parse_lists(["ip", "-ipv6"]) == {2, 16, 17}
    assert parse_lists(["unix", "4"]) == {1, 2}
    assert parse_lists(["-unix", "-ip"]) == ALL - IP - {1}
    assert parse_lists(["4", "-4", "6"]) == {10}
    # only the first list may start from all: a later "-x" continues from what is there
    assert parse_lists(["unix", "-ipv4"]) == {1}


def test_apply_list_starts_from_all_or_none() -> None:
    assert apply_list(None, "-unix") == ALL - {1}
    assert apply_list(None, "unix") == {1}
    assert apply_list(None, "+unix") == {1}
    assert apply_list(frozenset({2}), "-unix") == {2}
    assert apply_list(frozenset({2}), "unix") == {1, 2}


@pytest.mark.parametrize(
    ("spec", "item"),
    [
        ("ethernet", "ethernet"),
        ("ip,bogus", "bogus"),
        ("-ipx", "ipx"),
        ("#0", "#0"),
        ("#46", "#46"),
        ("#x", "#x"),
        ("#", "#"),
        ("#-1", "#-1"),
        ("#1_0", "#1_0"),
        ("#" + "1" * 5000, "#" + "1" * 5000),  # past int()'s 4,300 digits: no ValueError
        ("#00000000002", "#00000000002"),
        ("af_inet", "af_inet"),
    ],
)
def test_errors_name_the_item(spec: str, item: str) -> None:
    with pytest.raises(FamilyListError) as info:
        parse_lists([spec])
    assert info.value.item == item
    assert repr(item) in str(info.value)


@pytest.mark.parametrize("spec", ["", "4,,6", "4,", ",4", " , "])
def test_empty_items_are_errors(spec: str) -> None:
    with pytest.raises(FamilyListError, match="empty"):
        parse_lists([spec])


def test_error_in_a_later_list() -> None:
    with pytest.raises(FamilyListError) as info:
        parse_lists(["ip", "-nope"])
    assert info.value.item == "nope"


def test_out_of_range_reason_mentions_the_range() -> None:
    with pytest.raises(FamilyListError, match="1..45"):
        parse_item("#46")


def test_family_list_error_is_a_value_error() -> None:
    assert issubclass(FamilyListError, ValueError)


@pytest.mark.parametrize(
    ("family", "name"),
    [(1, "unix"), (2, "ipv4"), (10, "ipv6"), (16, "netlink"), (17, "packet"), (23, "irda"),
     (31, "bluetooth"), (1000, "#1000"), (-1, "#-1")],
)
def test_family_name(family: int, name: str) -> None:
    assert family_name(family) == name


def test_family_name_of_other_families() -> None:
    assert family_name(3) == "ax25"  # from the socket module, lower case, no AF_
    assert family_name(socket.AF_CAN) == "can"
    for family in range(0, 64):
        name = family_name(family)
        assert name and name == name.lower() and not name.startswith("af_")
