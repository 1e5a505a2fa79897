"""What one run will do, decided before anything is done (pure): the launch plan.

The launcher carries a plan out in order — set the defaults through an outer supervisor
(nested), set no_new_privs, start the supervisor, install the filter and hand its listener
over — and then execs the command. Every shape a run can take is one value here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mstack_bpf.core.model import Mapping
from mstack_bpf.seccomp.filter import FilterSpec, compile_filter
from mstack_bpf.seccomp.program import Instruction


@dataclass(frozen=True)
class LaunchPlan:
    #: an outer mstack's supervisor takes our table (msocket SOCK_DEFAULT): no listener of
    #: our own (the kernel refuses a second one)
    nested: bool
    #: the filter to install; None: none (a nested, unlocked mstack)
    filter: tuple[Instruction, ...] | None
    #: the filter has a listener, and a supervisor serves it
    supervised: bool
    #: no listener of its own, but a supervisor process watches the command for -v's
    #: table (everything locked, or nested under another mstack)
    watcher: bool
    #: set no_new_privs before installing (the kernel requires it without CAP_SYS_ADMIN)
    no_new_privs: bool


def plan(mapping: Mapping, chosen: frozenset[int], *, verbose: int, no_new_privs: bool,
         root: bool, nested: bool, home: bool = False) -> LaunchPlan:
    """The plan for ``mapping`` (of which ``chosen`` are the families this mstack sets)."""
    if nested:
        # A nested --lock adds a listener-less filter of its own; a nested unlocked mstack
        # installs nothing.
        spec = FilterSpec.nested_lock(mapping, chosen) if mapping.locked else None
        program = None if spec is None else tuple(compile_filter(spec))
        # With -v a watcher traces this mstack's own subtree (the outer one serves it).
        return LaunchPlan(nested=True, filter=program, supervised=False,
                          watcher=bool(verbose),
                          no_new_privs=program is not None and (no_new_privs or not root))
    spec = FilterSpec.from_mapping(mapping)
    if home and (mapping.locked or mapping.restricted):
        # The home's families follow the caller's namespace: under any lock, or a policy,
        # the caller may not leave it (no setns, no new network or user namespace).
        spec = dataclasses.replace(spec, lock_any=True, lock_native=True)
    if verbose:  # the command's exit_group waits for the table (supervised) or is watched
        spec = dataclasses.replace(spec, hold_exit=True)
    return LaunchPlan(nested=False, filter=tuple(compile_filter(spec)),
                      supervised=spec.supervised, watcher=bool(verbose) and not spec.supervised,
                      no_new_privs=no_new_privs or not root)
