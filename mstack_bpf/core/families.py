"""Address families and the ``-o`` list grammar of mstack(1).

Pure logic: no I/O. The grammar is View-OS's, without its bugs: every item carries its own
sign, ``all`` means every family, and an unknown item is an error that names the item.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

#: AF_MAX of the running kernel's generation (include/linux/socket.h, Linux 6.x).
AF_MAX = 46

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
AF_PACKET = 17
AF_IRDA = 23
AF_BLUETOOTH = 31

ALL_FAMILIES: frozenset[int] = frozenset(range(1, AF_MAX))

_GROUPS: dict[str, frozenset[int]] = {
    "all": ALL_FAMILIES,
    "unix": frozenset({AF_UNIX}),
    "u": frozenset({AF_UNIX}),
    "ipv4": frozenset({AF_INET}),
    "4": frozenset({AF_INET}),
    "ipv6": frozenset({AF_INET6}),
    "6": frozenset({AF_INET6}),
    "netlink": frozenset({AF_NETLINK}),
    "n": frozenset({AF_NETLINK}),
    "packet": frozenset({AF_PACKET}),
    "p": frozenset({AF_PACKET}),
    "irda": frozenset({AF_IRDA}),
    "i": frozenset({AF_IRDA}),
    "bluetooth": frozenset({AF_BLUETOOTH}),
    "b": frozenset({AF_BLUETOOTH}),
    "ip": frozenset({AF_INET, AF_INET6, AF_NETLINK, AF_PACKET}),
}

_SHORT_NAMES = {
    AF_UNIX: "unix",
    AF_INET: "ipv4",
    AF_INET6: "ipv6",
    AF_NETLINK: "netlink",
    AF_PACKET: "packet",
    AF_IRDA: "irda",
    AF_BLUETOOTH: "bluetooth",
}


class FamilyListError(ValueError):
    """An item of a family list that is not a family; ``item`` is the offending text."""

    def __init__(self, item: str, reason: str) -> None:
        super().__init__(f"{reason}: {item!r}")
        self.item = item
        self.reason = reason


def family_name(family: int) -> str:
    """A short, stable name for ``family``: ``ipv4``, ``netlink``, or ``#N``."""
    if family in _SHORT_NAMES:
        return _SHORT_NAMES[family]
    try:
        return socket.AddressFamily(family).name.removeprefix("AF_").lower()
    except ValueError:
        return f"#{family}"


def parse_item(item: str) -> frozenset[int]:
    """The families named by one unsigned item: a name, an abbreviation or ``#N``."""
    text = item.strip().lower()
    if not text:
        raise FamilyListError(item, "empty family item")
    if text in _GROUPS:
        return _GROUPS[text]
    if text.startswith("#"):
        digits = text[1:]
        if not (digits.isascii() and digits.isdigit()):
            raise FamilyListError(item, "not a family number")
        if len(digits) > 9:  # int() would refuse 4,301 digits with a ValueError
            raise FamilyListError(item, "family number too long")
        number = int(digits)
        if not 1 <= number < AF_MAX:
            raise FamilyListError(item, f"family number out of range 1..{AF_MAX - 1}")
        return frozenset({number})
    raise FamilyListError(item, "unknown family")


def split_sign(item: str) -> tuple[str, str]:
    """An ``-o`` item's own sign (``+``, ``-`` or none) and what it names."""
    text = item.strip()
    sign = text[:1] if text[:1] in ("+", "-") else ""
    return sign, text[len(sign):]


def apply_item(current: frozenset[int] | None, sign: str,
               families: frozenset[int]) -> frozenset[int]:
    """One signed item applied to ``current``; the very first item (``current`` None)
    starts from all families if it removes (``-``), else from none."""
    if current is None:
        current = ALL_FAMILIES if sign == "-" else frozenset()
    return current - families if sign == "-" else current | families


def apply_list(current: frozenset[int] | None, spec: str) -> frozenset[int]:
    """Apply one ``-o`` list to ``current`` (None: no ``-o`` seen yet) and return the set.
    Each item's sign is its own (View-OS leaked a sign onto the following items)."""
    for raw in spec.split(","):
        sign, rest = split_sign(raw)
        if sign and not rest.strip():
            raise FamilyListError(raw.strip(), "a sign without a family")
        current = apply_item(current, sign, parse_item(rest))
    assert current is not None  # split always yields an item
    return current


def parse_lists(specs: Iterable[str]) -> frozenset[int]:
    """The family set selected by every ``-o`` option in order; all families without any."""
    current: frozenset[int] | None = None
    for spec in specs:
        current = apply_list(current, spec)
    return ALL_FAMILIES if current is None else current
