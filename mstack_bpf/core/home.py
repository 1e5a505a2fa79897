"""Which stack the command lives in — its *home* — and the mapping as seen from there (pure).

When mstack may enter the stack of AF_INET (root, or generally CAP_SYS_ADMIN over the stack's
owning user namespace without joining another), the command runs inside it, as under
``ip netns exec``: the families mapped there are then the kernel's own (CONTINUE, or ALLOW
under a lock), ``/proc/net`` shows that stack, and every child inherits it through fork,
exec and closefrom. The families left on ``native`` — the namespace mstack started in,
View-OS' real stack — are redirected *there* by the supervisor, which holds a descriptor of
it. The supervisor and the filter read the relative mapping: the home stack's families are
on the caller's own namespace (a ``NATIVE``-kind stack named after the home), and native is
a namespace stack like any other.
"""

from __future__ import annotations

from collections.abc import Callable

from mstack_bpf.core.families import AF_INET, ALL_FAMILIES
from mstack_bpf.core.model import Mapping, Stack, StackKind


def home_of(mapping: Mapping, may_enter: Callable[[Stack], bool],
            keep_namespace: bool = False) -> Stack | None:
    """The stack the command will live in: AF_INET's, where it is a namespace mstack may
    enter; None where the command keeps its namespace (``keep_namespace``, AF_INET on null
    or native, a stack mstack may not enter)."""
    stack = mapping.stack_of(AF_INET)
    if keep_namespace or stack.kind is not StackKind.NETNS:
        return None
    return stack if may_enter(stack) else None


def own(home: Stack) -> Stack:
    """The caller's own namespace, which is ``home``: what the kernel itself serves."""
    return Stack(StackKind.NATIVE, home.name, home.path)


def relative(mapping: Mapping, home: Stack, start: Stack) -> Mapping:
    """``mapping`` read from inside ``home``: its families are the caller's own namespace's,
    and native ones are redirected to ``start`` (the namespace mstack started in)."""
    def moved(stack: Stack) -> Stack:
        if stack == home:
            return own(home)
        return start if stack.kind is StackKind.NATIVE else stack

    table = {family: moved(mapping.stack_of(family)) for family in ALL_FAMILIES}
    allowed = tuple(moved(stack) for stack in mapping.allowed)
    return Mapping(table, mapping.locked, allowed, mapping.restricted)
