"""Stack names → stacks, and stacks → open namespace fds (docs/design.md, "Names and resolution").

Order: the reserved names ``null`` and ``native`` (also ``/dev/net/null`` and
``/dev/net/native`` when no such file exists); a path with a slash as given; a bare NAME as
``/run/netns/NAME`` (what ``ip netns add`` makes), then as the caller's own rootless stack.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mstack_bpf.core.errors import StackError
from mstack_bpf.core.model import BUILTIN, Stack, StackKind
from mstack_bpf.linux import netns
from mstack_bpf.stacks import paths

NETNS_RUN_DIR = "/run/netns"


def user_stack(name: str, uid: int | None = None,
               environ: Mapping[str, str] | None = None) -> str | None:
    """The namespace path of user ``uid``'s (default: ours) live rootless stack ``name``,
    looked up where ``mstack-stack`` keeps it for that user and environment; or None."""
    return paths.resolve_user_stack(name, uid=uid, environ=environ)


def resolve(name: str) -> Stack:
    """The stack ``name`` refers to; raises :class:`StackError` if there is none."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name.startswith("/dev/net/") and name[9:] in BUILTIN and not os.path.lexists(name):
        return BUILTIN[name[9:]]
    if not name:
        raise StackError("empty stack name")
    if "/" in name:
        return Stack(StackKind.NETNS, name, os.path.abspath(name))
    run_path = os.path.join(NETNS_RUN_DIR, name)
    if os.path.lexists(run_path):
        return Stack(StackKind.NETNS, name, run_path)
    user_path = user_stack(name)
    if user_path is not None:
        return Stack(StackKind.NETNS, name, user_path)
    raise StackError(
        f"{name}: no such stack (not in {NETNS_RUN_DIR}, not a stack of yours)",
        hint="list stacks with 'mstack-stack list' or 'ip netns list'",
    )


@dataclass(frozen=True)
class OpenStack:
    """A namespace stack held open: ``fd`` stays valid whatever happens to its path."""

    stack: Stack
    fd: int
    ino: int


def open_stack(stack: Stack) -> OpenStack:
    if stack.kind is not StackKind.NETNS or stack.path is None:
        raise ValueError(f"{stack} has no namespace")
    try:
        fd = netns.open_netns(stack.path)
    except netns.NotANetns as e:
        raise StackError(f"{stack.path}: not a network namespace ({e.reason})") from None
    except OSError as e:
        raise StackError(f"{stack.path}: {e.strerror}") from None
    return OpenStack(stack, fd, netns.ns_inode(fd))
