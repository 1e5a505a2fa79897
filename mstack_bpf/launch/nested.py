"""mstack under mstack: set the defaults through the outer supervisor instead of a filter.

The virtual msocket call tells the situations apart: ENOSYS, no mstack above; EPERM, an
outer ``--lock`` (or locked policy) forbids any change; anything else, an outer supervisor
that will take our table with msocket(path, family, SOCK_DEFAULT).
"""

from __future__ import annotations

import errno
import os
import socket

from mstack_bpf.core.abi import SELF_MARK, SOCK_DEFAULT
from mstack_bpf.core.errors import LockedError, MstackError
from mstack_bpf.core.families import ALL_FAMILIES, family_name
from mstack_bpf.core.model import Mapping, Stack, StackKind
from mstack_bpf.linux import netns
from mstack_bpf.msocket import NotUnderMstack, call


def outer_supervisor() -> bool:
    """Whether this process runs under an mstack; raises :class:`LockedError` if locked.

    The probe also marks this process as mstack's own for the socket tracer (its events,
    and those of what it forks, are not the command's until it execs): it must come before
    the launcher's first socket call."""
    try:
        call(None, socket.AF_UNSPEC, SOCK_DEFAULT, 0, SELF_MARK)
    except NotUnderMstack:
        return False
    except OSError as e:
        if e.errno == errno.EPERM:
            raise LockedError(
                "the network mapping is locked by an outer mstack --lock (or a locked policy); "
                "a nested mstack cannot change it") from None
    return True


def outer_native() -> int | None:
    """The inode of the namespace the outer mstack calls ``native`` (where the outermost
    mstack started; a nested mstack may live in the outer one's home); None if it cannot
    be learnt (SIOCGSKNS needs CAP_NET_ADMIN there)."""
    try:
        fd = call("native", socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0)
    except OSError:
        return None
    try:
        return netns.socket_netns_inode(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


OWN_NAMESPACE = "/proc/self/ns/net"  # the caller's own: what its kernel serves itself
_HINTS = {
    errno.EMFILE: "the table travels in descriptor 1023: raise 'ulimit -n' above 1024",
    errno.EBUSY: "descriptor 1023, which carries the table, is taken in this process",
    errno.EAGAIN: "the outer supervisor may keep no more tables: its descriptor limit is "
                  "used up; start the outer mstack with a higher 'ulimit -Hn'",
}


def _path(stack: Stack, home: Stack | None) -> str:
    if stack == home:  # we live there now: those families are the kernel's own
        return OWN_NAMESPACE
    if stack.kind is StackKind.NETNS:
        assert stack.path is not None
        return stack.path
    return str(stack.kind.value)


def set_defaults(mapping: Mapping, chosen: frozenset[int], home: Stack | None = None) -> None:
    """Ask the outer supervisor to move the ``chosen`` families to their stacks in
    ``mapping``, one SOCK_DEFAULT call per family (one AF_UNSPEC call for every family);
    families on ``home``, where this process lives now, to its own namespace."""
    groups: dict[Stack, list[int]] = {}
    for family in sorted(chosen):
        groups.setdefault(mapping.stack_of(family), []).append(family)
    for stack, families in groups.items():
        targets = [socket.AF_UNSPEC] if len(families) == len(ALL_FAMILIES) else families
        for family in targets:
            try:
                call(_path(stack, home), family, SOCK_DEFAULT, 0)
            except OSError as e:
                what = "all families" if family == socket.AF_UNSPEC else family_name(family)
                if e.errno == errno.EPERM:
                    raise LockedError(f"{what}: locked by an outer mstack; cannot move it to "
                                      f"{stack.name}") from None
                raise MstackError(f"outer supervisor refused {what} -> {stack.name}: "
                                  f"{e.strerror}", hint=_HINTS.get(e.errno or 0)) from None
