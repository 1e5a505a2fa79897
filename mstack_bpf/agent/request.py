"""What a container asks for, from its profile's ``listenerMetadata`` or its annotations
(pure; the grammar of mstack-agent(8)).

One grammar for both: the keys ``stack`` (STACK as on mstack's command line), ``families``
(mstack's ``-o`` LIST, default all) and ``policy`` (the NAME of a policy in the agent's
policy directory). In metadata they are ``KEY=VALUE`` items separated by ``;`` or blanks
(``stack=vpn; families=ipv4``); as annotations they are ``io.mstack.KEY``. The metadata, when
there is any, is authoritative: whoever wrote the profile chose it; the annotations count
only without it (and only if the agent's config honours them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from mstack_bpf.core.families import ALL_FAMILIES, FamilyListError, apply_list

KEYS = ("stack", "families", "policy")
ANNOTATION_PREFIX = "io.mstack."
#: a policy is named, never given as a path: NAME.toml in the agent's policy directory
POLICY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class RequestError(ValueError):
    """A request that cannot be honoured as written; says which part and why."""


@dataclass(frozen=True)
class Request:
    source: str  # "metadata" or "annotations"
    stack: str | None = None
    families: frozenset[int] = ALL_FAMILIES
    policy: str | None = None


def _checked(fields: Mapping[str, str], source: str, key_name: str) -> Request:
    """A request from ``KEY → VALUE``; ``key_name`` shows a key as the source spells it."""
    for key, value in fields.items():
        if key not in KEYS:
            raise RequestError(f"{source}: unknown key {key_name.format(key)!r} "
                               f"(known: {', '.join(key_name.format(k) for k in KEYS)})")
        if not value.strip() or not value.isprintable():
            raise RequestError(f"{source}: {key_name.format(key)}: empty or unprintable value")
    stack, policy, families = fields.get("stack"), fields.get("policy"), fields.get("families")
    if policy is not None:
        if stack is not None or families is not None:
            raise RequestError(f"{source}: {key_name.format('policy')} goes alone (the policy "
                               "maps the families)")
        if not POLICY_NAME.fullmatch(policy):
            raise RequestError(f"{source}: {key_name.format('policy')}: {policy!r} is not a "
                               "policy name (letters, digits, '_', '-', '.')")
        return Request(source, policy=policy)
    if stack is None:
        raise RequestError(f"{source}: {key_name.format('families')} without "
                           f"{key_name.format('stack')}")
    try:
        chosen = apply_list(None, families) if families is not None else ALL_FAMILIES
    except FamilyListError as e:
        raise RequestError(f"{source}: {key_name.format('families')}: {e}") from None
    return Request(source, stack=stack.strip(), families=chosen)


def parse_metadata(text: str) -> Request | None:
    """The request a profile's ``listenerMetadata`` makes (None: it is empty)."""
    items = text.replace(";", " ").split()
    if not items:
        return None
    fields: dict[str, str] = {}
    for item in items:
        key, sign, value = item.partition("=")
        if not sign:
            raise RequestError(f"metadata: {item!r} is not KEY=VALUE")
        if key in fields:
            raise RequestError(f"metadata: {key!r} given twice")
        fields[key] = value
    return _checked(fields, "metadata", "{}")


def from_annotations(annotations: Mapping[str, str]) -> Request | None:
    """The request a container's ``io.mstack.*`` annotations make (None: there are none)."""
    fields = {key.removeprefix(ANNOTATION_PREFIX): value for key, value in annotations.items()
              if key.startswith(ANNOTATION_PREFIX)}
    return _checked(fields, "annotations", ANNOTATION_PREFIX + "{}") if fields else None


def choose(metadata: str, annotations: Mapping[str, str], honour: bool) -> Request | None:
    """The request that counts: the metadata's if it has one, else the annotations' (if
    ``honour``); None: nothing asked, every family is the container's own."""
    asked = parse_metadata(metadata)
    if asked is not None:
        return asked
    if not honour:
        if any(key.startswith(ANNOTATION_PREFIX) for key in annotations):
            raise RequestError(f"annotations: {ANNOTATION_PREFIX}* are not honoured "
                               "(annotations = false in the agent's config)")
        return None
    return from_annotations(annotations)
