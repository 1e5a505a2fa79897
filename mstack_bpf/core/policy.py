"""Policy files (mstack-policy(5)): TOML that names stacks, maps families and locks them.

Parsing is pure apart from reading the file: stack names stay unresolved until run time,
when :func:`open_policy` resolves them (:func:`mstack_bpf.stacks.resolve.resolve`) and an unusable
stack fails with its ``FILE:LINE``. Every error is collected, never just the first, as
``FILE:LINE: message`` (docs/design.md, "Policies"). tomllib gives no line numbers for keys and
only the first syntax error, so key lines come from scanning the source text
(:mod:`mstack_bpf.core.tomlscan`). Whatever the file holds, the only error is
:class:`PolicyError`: the file must be regular and at most MAX_SIZE bytes, and what would
make tomllib recurse too deep or take quadratic time is refused before tomllib sees it.

Precedence: ``all`` in ``[families]`` is the default for families no other key names; any
other key (a family or a group such as ``ip``) is a mapping, and a family that two mappings
name is an error ("mapped twice"). Families neither mapped nor covered by ``all`` are native.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mstack_bpf.core.errors import UsageError
from mstack_bpf.core.families import (
    ALL_FAMILIES,
    FamilyListError,
    apply_item,
    family_name,
    parse_item,
    split_sign,
)
from mstack_bpf.core.model import BUILTIN, NATIVE, Mapping, Stack, StackKind
from mstack_bpf.core.tomlscan import Lines

_TOP_KEYS = ("description", "stacks", "families", "lock", "msocket", "options")
_SECTION_KEYS = {"lock": ("families",), "msocket": ("allow",),
                 "options": ("no_new_privs", "keep_namespace")}
_STACK_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class PolicyError(UsageError):
    """A policy file that cannot be used; ``errors`` are ``FILE:LINE: message`` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class StackDef:
    """One ``[stacks]`` entry: the policy's ``name`` for ``ref`` (a bare NAME or a path)."""

    name: str
    ref: str
    line: int


@dataclass(frozen=True)
class Policy:
    """A parsed policy. ``mapping``'s namespace stacks are unresolved: ``Stack(NETNS, name)``
    with ``path=None``; :func:`open_policy` turns them into open namespaces."""

    source: str
    mapping: Mapping
    stacks: tuple[StackDef, ...] = ()
    no_new_privs: bool = False
    description: str = ""
    keep_namespace: bool = False

    def stack_def(self, name: str) -> StackDef:
        return next(d for d in self.stacks if d.name == name)


def shown(key: str) -> str:
    """``key`` for a message: quoted unless it prints on one line as it is."""
    return key if key.isprintable() else repr(key)


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


# --- parsing ------------------------------------------------------------------------------


@dataclass
class _Parser:
    source: str
    lines: Lines
    errors: list[tuple[int, str]] = field(default_factory=list)

    def error(self, line: int, message: str) -> None:
        self.errors.append((line, message))

    def table(self, doc: dict[str, object], name: str) -> dict[str, object]:
        value = doc.get(name, {})
        if isinstance(value, dict):
            return value
        self.error(self.lines.of(name), f"{name} must be a table, not {_type_name(value)}")
        return {}

    def unknown_keys(self, doc: dict[str, object]) -> None:
        for key, value in doc.items():
            if key not in _TOP_KEYS:
                what = "table" if isinstance(value, dict) else "key"
                self.error(self.lines.of(key), f"unknown {what} {key!r} (known: "
                           + ", ".join(_TOP_KEYS) + ")")
        for section, known in _SECTION_KEYS.items():
            for key in self.table(doc, section):
                if key not in known:
                    self.error(self.lines.of(section, key), f"[{section}] unknown key {key!r}"
                               f" (known: {', '.join(known)})")

    def stacks(self, table: dict[str, object]) -> dict[str, StackDef]:
        defs: dict[str, StackDef] = {}
        for name, ref in table.items():
            line = self.lines.of("stacks", name)
            where = f"[stacks] {shown(name)}"
            if name in BUILTIN:
                self.error(line, f"{where}: {name!r} is built in and cannot be redefined")
            elif not _STACK_NAME.fullmatch(name):
                self.error(line, f"{where}: a stack name is letters, digits, '_', '-', '.'")
            elif not isinstance(ref, str):
                self.error(line, f"{where}: must be a string, not {_type_name(ref)}")
            elif not ref:
                self.error(line, f"{where}: empty stack reference")
            elif not ref.isprintable():  # a NUL would fail open(2) with ValueError
                self.error(line, f"{where}: {ref!r}: a stack reference is printable text")
            elif ref in BUILTIN or ref.removeprefix("/dev/net/") in BUILTIN:
                self.error(line, f"{where}: {ref!r} is built in: use it in [families] directly")
            elif "/" in ref and not ref.startswith("/"):
                self.error(line, f"{where}: relative path {ref!r}: write it absolute")
            else:
                defs[name] = StackDef(name, ref, line)
        return defs

    def stack_value(self, value: object, where: str, line: int,
                    defs: dict[str, StackDef]) -> Stack | None:
        if not isinstance(value, str):
            self.error(line, f"{where}: a stack name must be a string, not {_type_name(value)}")
            return None
        if value in BUILTIN:
            return BUILTIN[value]
        if value in defs:
            return Stack(StackKind.NETNS, value)
        hint = " (paths go in [stacks])" if "/" in value else " (define it in [stacks])"
        self.error(line, f"{where}: undefined stack {value!r}{hint}")
        return None

    def families(self, table: dict[str, object], defs: dict[str, StackDef],
                 locked: frozenset[int]) -> dict[int, Stack]:
        table_out = dict.fromkeys(ALL_FAMILIES, NATIVE)
        default: tuple[str, Stack] | None = None
        owner: dict[int, str] = {}
        for key, value in table.items():
            line = self.lines.of("families", key)
            where = f"[families] {shown(key)}"
            is_default = key.strip().lower() == "all"
            chosen = frozenset() if is_default else self.family_item(key, where, line)
            stack = self.stack_value(value, where, line, defs)
            if is_default:
                if default is not None:
                    self.error(line, f"{where}: default given twice (also {default[0]!r})")
                elif stack is not None:
                    default = key, stack
                continue
            twice = sorted(f for f in chosen if f in owner)
            for other in dict.fromkeys(owner[f] for f in twice):
                both = [f for f in twice if owner[f] == other]
                lock = " locked and" if locked & set(both) else ""
                self.error(line, f"{where}: {','.join(family_name(f) for f in both)}{lock}"
                           f" mapped twice (also by {other!r}"
                           f" at line {self.lines.of('families', other)})")
            for family in chosen - owner.keys():
                owner[family] = key
                if stack is not None:
                    table_out[family] = stack
        if default is not None:
            table_out.update(dict.fromkeys(ALL_FAMILIES - owner.keys(), default[1]))
        return table_out

    def family_item(self, item: str, where: str, line: int) -> frozenset[int]:
        try:
            return parse_item(item)
        except FamilyListError as e:
            self.error(line, f"{where}: {e.reason}: {e.item!r}")
        return frozenset()

    def string_list(self, value: object, path: tuple[str, str]) -> Iterator[tuple[str, int]]:
        """The items of a string or an array of strings, each with its line."""
        line = self.lines.of(*path)
        where = f"[{path[0]}] {path[1]}"
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            self.error(line, f"{where}: must be an array of strings, not {_type_name(value)}")
            return
        for index, item in enumerate(items):
            if isinstance(item, str):
                yield item, self.lines.of_item(index, *path)
            else:
                self.error(line, f"{where}: items must be strings, not {_type_name(item)}")

    def lock(self, table: dict[str, object]) -> frozenset[int]:
        """``families`` of ``[lock]``: true/false, or ``-o`` items with their own signs."""
        value = table.get("families", False)
        if isinstance(value, bool):
            return ALL_FAMILIES if value else frozenset()
        path = ("lock", "families")
        result: frozenset[int] | None = None
        for item, line in self.string_list(value, path):
            sign, rest = split_sign(item)
            result = apply_item(result, sign, self.family_item(rest, "[lock] families", line))
        return result or frozenset()

    def allow(self, table: dict[str, object], defs: dict[str, StackDef]) -> tuple[Stack, ...]:
        allowed: dict[Stack, None] = {}
        for name, line in self.string_list(table.get("allow", []), ("msocket", "allow")):
            where = "[msocket] allow"
            if name in BUILTIN:
                self.error(line, f"{where}: {name!r} is built in: msocket may always name it")
            elif (stack := self.stack_value(name, where, line, defs)) is not None:
                allowed.setdefault(stack)
        return tuple(allowed)

    def flag(self, doc: dict[str, object], key: str) -> bool:
        value = self.table(doc, "options").get(key, False)
        if not isinstance(value, bool):
            self.error(self.lines.of("options", key),
                       f"[options] {key} must be true or false, not {_type_name(value)}")
            return False
        return value

    def options(self, doc: dict[str, object]) -> tuple[bool, str]:
        nnp = self.flag(doc, "no_new_privs")
        description = doc.get("description", "")
        if not isinstance(description, str):
            self.error(self.lines.of("description"),
                       f"description must be a string, not {_type_name(description)}")
            description = ""
        return nnp, description


def _syntax_error(source: str, text: str, e: tomllib.TOMLDecodeError) -> str:
    message = str(e)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if m is not None:
        return f"{source}:{m.group(1)}: TOML syntax: {message[:m.start()]} (column {m.group(2)})"
    m = re.search(r"\s*\(at end of document\)$", message)
    line = max(1, text.count("\n") + int(not text.endswith("\n")))
    return f"{source}:{line}: TOML syntax: {message[:m.start()] if m else message}"


# a decimal integer as a value: not in a float, a date or 0x/0o/0b (int() limits none of them)
_INTEGER = re.compile(r"[=\[{,]\s*([+-]?[0-9](?:_?[0-9])*)(?![\w.:-])")


def _number_error(source: str, text: str, e: ValueError) -> str:
    """The error for an integer that int() refuses: sys.get_int_max_str_digits() (4300)."""
    limit = sys.get_int_max_str_digits()
    for m in _INTEGER.finditer(text):
        if limit and len(m.group(1).lstrip("+-").replace("_", "")) > limit:
            line = text.count("\n", 0, m.start(1)) + 1
            return f"{source}:{line}: TOML: an integer of more than {limit} digits"
    return f"{source}: TOML: {shown(str(e))}"


def _toml(text: str, source: str, lines: Lines) -> dict[str, Any]:
    """tomllib's document of ``text``; every way that fails raises :class:`PolicyError`."""
    if lines.too_much is not None:
        raise PolicyError([f"{source}:{lines.too_much[0]}: {lines.too_much[1]}"])
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError([_syntax_error(source, text, e)]) from None
    except RecursionError:  # not within MAX_DEPTH, unless the stack was deep already
        raise PolicyError([f"{source}:{lines.deepest[1]}: TOML: arrays or inline tables"
                           " nested too deep"]) from None
    except ValueError as e:  # after TOMLDecodeError, a subclass: a long integer
        raise PolicyError([_number_error(source, text, e)]) from None


def parse_policy(text: str, source: str) -> Policy:
    """The policy in ``text`` (read from ``source``); raises :class:`PolicyError`."""
    lines = Lines(text)
    doc = _toml(text, source, lines)
    p = _Parser(source, lines)
    p.unknown_keys(doc)
    defs = p.stacks(p.table(doc, "stacks"))
    locked = p.lock(p.table(doc, "lock"))
    table = p.families(p.table(doc, "families"), defs, locked)
    allowed = p.allow(p.table(doc, "msocket"), defs)
    no_new_privs, description = p.options(doc)
    keep_namespace = p.flag(doc, "keep_namespace")
    if p.errors:
        p.errors.sort(key=lambda e: e[0])
        raise PolicyError([f"{source}:{line}: {message}" for line, message in p.errors])
    return Policy(source, Mapping(table, locked, allowed, restricted=True), tuple(defs.values()),
                  no_new_privs, description, keep_namespace)
