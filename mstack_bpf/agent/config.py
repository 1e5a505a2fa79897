"""The agent's configuration, ``/etc/mstack/agent.toml`` (pure apart from reading it).

It bounds what containers may name (mstack-agent(8), CONFIGURATION)::

    allow = ["/run/netns/*"]          # the default: every /run/netns name, nothing else
    annotations = true                # honour io.mstack.* annotations without metadata
    policy_dir = "/etc/mstack/policy" # where io.mstack.policy=NAME finds NAME.toml

An ``allow`` item is an absolute path (that namespace file), ``DIR/*`` (any name directly in
DIR) or a bare NAME (``/run/netns/NAME``). ``null`` and the container's own namespace
(``native``) are always allowed: neither gives a container a network it did not have.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass

from mstack_bpf.agent.request import RequestError
from mstack_bpf.core.errors import UsageError
from mstack_bpf.core.model import BUILTIN, Stack, StackKind
from mstack_bpf.stacks.resolve import NETNS_RUN_DIR

DEFAULT_PATH = "/etc/mstack/agent.toml"
DEFAULT_POLICY_DIR = "/etc/mstack/policy"
MAX_SIZE = 64 << 10
_KEYS = ("allow", "annotations", "policy_dir")


class ConfigError(UsageError):
    """A configuration the agent refuses to start with."""


def _bare(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and (
        name.isprintable() and len(name) <= 255)


def _path_of(name: str) -> str | None:
    """The namespace file a stack name stands for (None: not a name or absolute path)."""
    if name.startswith("/") and name.isprintable():
        return os.path.normpath(name)
    return f"{NETNS_RUN_DIR}/{name}" if _bare(name) else None


@dataclass(frozen=True)
class AgentConfig:
    allow: tuple[str, ...] = (f"{NETNS_RUN_DIR}/*",)
    annotations: bool = True
    policy_dir: str = DEFAULT_POLICY_DIR
    source: str = "the default configuration"

    def allows(self, path: str) -> bool:
        """Whether a container may name the namespace file ``path`` (normalised)."""
        for item in self.allow:
            if item.endswith("/*"):
                parent, name = os.path.split(path)
                if parent == item[:-2] and _bare(name):
                    return True
            elif path == item:
                return True
        return False

    def stack(self, name: str) -> Stack:
        """The stack a container names, if it may; RequestError says why not."""
        if name in BUILTIN:
            return BUILTIN[name]
        path = _path_of(name)
        if path is None:
            raise RequestError(f"stack {name!r}: neither a name nor an absolute path")
        if not self.allows(path):
            raise RequestError(f"stack {name!r} ({path}) is not allowed by {self.source} "
                               f"(allow = {list(self.allow)})")
        return Stack(StackKind.NETNS, name, path)


def parse_config(text: str, source: str) -> AgentConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: {e}") from None
    unknown = sorted(set(doc) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    allow = doc.get("allow", list(AgentConfig.allow))
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ConfigError(f"{source}: allow must be an array of strings")
    items = []
    for item in allow:
        wild = item.endswith("/*")
        path = _path_of(item[:-2] if wild else item)
        if path is None or (wild and not item.startswith("/")):
            raise ConfigError(f"{source}: allow: {item!r} is not a NAME, an absolute path "
                              "or DIR/*")
        items.append(path + "/*" if wild else path)
    annotations = doc.get("annotations", True)
    if not isinstance(annotations, bool):
        raise ConfigError(f"{source}: annotations must be true or false")
    policy_dir = doc.get("policy_dir", DEFAULT_POLICY_DIR)
    if not isinstance(policy_dir, str) or not policy_dir.startswith("/"):
        raise ConfigError(f"{source}: policy_dir must be an absolute path")
    return AgentConfig(tuple(items), annotations, policy_dir, source)


def load_config(path: str, required: bool) -> AgentConfig:
    """The configuration in ``path``; the defaults if it does not exist and not ``required``."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIZE + 1)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file") from None
        return AgentConfig()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) > MAX_SIZE:
        raise ConfigError(f"{path}: larger than {MAX_SIZE >> 10} KiB")
    try:
        return parse_config(data.decode("utf-8"), path)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
