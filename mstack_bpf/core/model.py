"""The values everything else passes around: stacks and family → stack mappings.

Pure data: resolving a name to a namespace lives in :mod:`mstack_bpf.stacks`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from mstack_bpf.core.families import ALL_FAMILIES, family_name


class StackKind(enum.Enum):
    NATIVE = "native"
    NULL = "null"
    NETNS = "netns"


@dataclass(frozen=True)
class Stack:
    """A stack as the user named it. ``path`` is the namespace file for ``NETNS`` stacks."""

    kind: StackKind
    name: str
    path: str | None = None

    def __str__(self) -> str:
        return self.name


NATIVE = Stack(StackKind.NATIVE, "native")
NULL = Stack(StackKind.NULL, "null")
#: the built-in stacks by name: no file is looked up for these
BUILTIN = {"null": NULL, "native": NATIVE}


@dataclass(frozen=True)
class Mapping:
    """Which stack each family uses, and which families nothing below may change."""

    table: dict[int, Stack] = field(default_factory=lambda: dict.fromkeys(ALL_FAMILIES, NATIVE))
    locked: frozenset[int] = frozenset()
    #: stacks msocket may name explicitly beyond those in ``table`` (policies only)
    allowed: tuple[Stack, ...] = ()
    #: a policy's mapping: msocket may name only the table's stacks and ``allowed``
    restricted: bool = False

    def stack_of(self, family: int) -> Stack:
        return self.table.get(family, NATIVE)

    def with_families(self, families: Iterable[int], stack: Stack) -> Mapping:
        table = dict(self.table)
        table.update(dict.fromkeys(families, stack))
        return Mapping(table, self.locked, self.allowed, self.restricted)

    def locked_all(self) -> Mapping:
        return Mapping(dict(self.table), ALL_FAMILIES, self.allowed, self.restricted)

    def nameable(self) -> set[Stack]:
        """Stacks a restricted msocket may name: the table's and the allowed ones, and null."""
        return {*self.table.values(), *self.allowed, NULL}

    def netns_stacks(self) -> list[Stack]:
        """Every namespace stack named by the table or allowed, once, in a stable order."""
        seen: dict[Stack, None] = {}
        for family in sorted(self.table):
            if self.table[family].kind is StackKind.NETNS:
                seen.setdefault(self.table[family])
        for stack in self.allowed:
            seen.setdefault(stack)
        return list(seen)

    def needs_supervisor(self) -> bool:
        """A supervisor is needed unless every family is locked to native or null."""
        return any(
            family not in self.locked or self.stack_of(family).kind is StackKind.NETNS
            for family in ALL_FAMILIES
        )

    def describe(self) -> list[str]:
        """One line per group of families sharing a stack, for ``-v``; the largest group of
        a long table reads "all other families" and comes last."""
        groups: dict[tuple[Stack, bool], list[int]] = {}
        for family in sorted(ALL_FAMILIES):
            key = (self.stack_of(family), family in self.locked)
            groups.setdefault(key, []).append(family)
        largest = max(groups, key=lambda k: len(groups[k]))
        lines: list[str] = []
        general: list[str] = []
        for (stack, locked), families in groups.items():
            if len(families) == len(ALL_FAMILIES):
                names = "all families"
            elif (stack, locked) == largest and len(families) > 8:
                names = "all other families"
            else:
                names = ",".join(family_name(f) for f in families)
            where = stack.name
            if stack.path and stack.path != stack.name:
                where += f" ({stack.path})"
            lock = " (locked)" if locked else ""
            # "all other families" reads as "the rest": after the specific lines
            (general if names.startswith("all") else lines).append(f"{names} -> {where}{lock}")
        return lines + general
