"""One run's configuration, validated before anything forks (shared by the launcher and
the supervisor it starts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mstack_bpf.core.families import ALL_FAMILIES
from mstack_bpf.core.model import Mapping, Stack
from mstack_bpf.stacks.resolve import OpenStack


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``mstack`` run needs."""

    mapping: Mapping
    argv: tuple[str, ...]
    verbose: int = 0
    no_new_privs: bool = False
    stacks: tuple[OpenStack, ...] = field(default=(), compare=False)
    #: the families this mstack was asked to set (a nested mstack changes only those)
    chosen: frozenset[int] = ALL_FAMILIES
    #: meet a caller that makes sockets back to back on the supervisor's CPU (colocate.py)
    colocate: bool = True
    #: never make the command live in the stack of its IP families (core/home.py)
    keep_namespace: bool = False
    #: set by the launcher once it knows: the stack the command lives in, and the namespace
    #: mstack started in as a stack of its own (what "native" then names)
    home: Stack | None = None
    start: Stack | None = None
    #: set by the launcher: an outer mstack's supervisor serves this run (launch/nested.py)
    nested: bool = False
