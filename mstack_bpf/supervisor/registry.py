"""The namespaces a supervisor holds open, and opening a msocket path as the target would.

Every namespace stack has one canonical :class:`Stack` value per namespace (by inode), so
``blue``, ``/run/netns/blue`` and ``/proc/PID/ns/net`` of a process in blue are one stack.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from typing import NamedTuple

from mstack_bpf.core.model import BUILTIN, NATIVE, Mapping, Stack, StackKind
from mstack_bpf.linux import creds as creds_mod
from mstack_bpf.linux import fs, netns
from mstack_bpf.stacks.resolve import NETNS_RUN_DIR, OpenStack, user_stack
from mstack_bpf.supervisor.factory import StackSockets
from mstack_bpf.supervisor.fdbudget import FdBudget
from mstack_bpf.supervisor.targetview import TargetView, canonical

CAP_SYS_ADMIN = 21
MAX_NAMED = 1024  # namespaces a tree may name in msocket beyond those of its mapping
_BUILTIN = {name.encode(): stack for name, stack in BUILTIN.items()}


class Located(NamedTuple):
    """A namespace a msocket path names, opened (the fd is the holder's to close)."""

    name: str
    fd: int


class StackRegistry:
    def __init__(self, opened: Iterable[OpenStack], mapping: Mapping | None = None,
                 budget: FdBudget | None = None, native: Stack = NATIVE,
                 own: int | None = None) -> None:
        self._by_ino: dict[int, OpenStack] = {}
        self._by_stack: dict[Stack, OpenStack] = {}
        for item in opened:
            self._add(item)
        #: under a policy, msocket may name only these (namespaces: those opened at start)
        self._nameable = mapping.nameable() if mapping and mapping.restricted else None
        self._limit = len(self._by_ino) + MAX_NAMED
        self._budget = budget or FdBudget()
        #: what "native" names: the namespace mstack started in (a namespace stack of its
        #: own once the command lives in another, core/home.py)
        self._native = native
        #: the namespace a caller naming its own is served in by the kernel itself (the home,
        #: or where mstack started): naming it means "my own namespace", nothing more
        self._own = own

    def _add(self, item: OpenStack) -> OpenStack:
        """Register a namespace; an existing entry is never replaced (a target must not be
        able to swap what a stack of the mapping means)."""
        self._by_ino.setdefault(item.ino, item)
        self._by_stack.setdefault(item.stack, item)
        return self._by_ino[item.ino]

    def get(self, stack: Stack) -> OpenStack:
        return self._by_stack[stack]

    def open_for_target(self, raw: bytes, tid: int, sockets: StackSockets,
                        still_valid: Callable[[], bool]) -> Stack:
        """The stack msocket's ``raw`` path names: :meth:`locate`, then :meth:`admit`."""
        ids = self.opening_ids(tid, sockets)
        return self.admit(self.locate(raw, tid, ids), tid, still_valid)

    @staticmethod
    def opening_ids(tid: int, sockets: StackSockets) -> creds_mod.FsIds | None:
        """The filesystem ids to open the target's paths with (None: ours are the same)."""
        ids = creds_mod.read_fs_ids(tid) if sockets.privileged else None
        if ids is not None and (ids.fsuid, ids.fsgid) == (sockets.own.uids[3],
                                                          sockets.own.gids[3]):
            ids = None  # opening as ourselves is opening as the target
        return ids

    @staticmethod
    def locate(raw: bytes, tid: int, ids: creds_mod.FsIds | None) -> Stack | Located:
        """Find what ``raw`` names, opened in the target's root and cwd with its filesystem
        ids ``ids``: a built-in stack, or an open namespace. OSError ENOENT (no file),
        ENOTSUP (not a stack). It may wait on the target's filesystems (FUSE) as long as
        they like, and touches nothing of the registry: it runs off the supervisor loop."""
        if raw in _BUILTIN:
            return _BUILTIN[raw]
        if not raw:
            raise OSError(errno.ENOENT, "empty path")  # as open("") answers
        name = raw.decode("utf-8", "surrogateescape")
        candidates = StackRegistry._candidates(name, tid)
        if name.startswith("/dev/net/") and raw[9:] in _BUILTIN and not any(
                _exists(opener) for _, opener in candidates):
            return _BUILTIN[raw[9:]]
        return Located(name, StackRegistry._open_first(candidates, ids))

    def admit(self, found: Stack | Located, tid: int, still_valid: Callable[[], bool]) -> Stack:
        """The stack for what :meth:`locate` found (its fd is ours to keep or close); OSError
        EACCES for an unprivileged target naming a stack it has no claim to.

        Everything here goes through /proc/TID: a new stack is kept only if ``still_valid()``
        confirms afterwards that TID is still the caller (not a reused tid)."""
        if isinstance(found, Stack):
            return self._permit(self._native if found == NATIVE else found)
        name, fd = found
        ino = netns.ns_inode(fd)
        if ino == self._own and _is_own(ino, tid):  # where it lives: the kernel's own
            os.close(fd)
            return self._permit(Stack(StackKind.NATIVE, name))
        if ino in self._by_ino:
            os.close(fd)
            return self._permit(self._by_ino[ino].stack)
        if self._nameable is not None or not self._may_name(fd, creds_mod.read_creds(tid)):
            os.close(fd)
            raise OSError(errno.EACCES, f"{name}: not a stack this process may name")
        if not still_valid():
            os.close(fd)
            raise OSError(errno.ENOENT, "caller gone")
        try:  # each is an fd held for the tree's lifetime
            if len(self._by_ino) >= self._limit:
                raise OSError(errno.EAGAIN, "too many stacks named in this tree")
            self._budget.take("named stacks")
        except OSError:
            os.close(fd)
            raise
        # Named by its inode: the same path may mean another namespace to another process
        # (a mount namespace of its own), so a new namespace never equals a mapped stack.
        stack = Stack(StackKind.NETNS, name, f"netns:[{ino}]")
        return self._add(OpenStack(stack, fd, ino)).stack

    def _permit(self, stack: Stack) -> Stack:
        if self._nameable is not None and stack not in self._nameable and not (
                stack.kind is StackKind.NATIVE
                and any(s.kind is StackKind.NATIVE for s in self._nameable)):
            raise OSError(errno.EACCES, f"{stack.name}: not a stack the policy allows")
        return stack

    @staticmethod
    def _candidates(name: str, tid: int) -> list[tuple[str, Callable[[], int]]]:
        """Where ``name`` may be, each with a way to open it ``O_PATH`` as the target."""
        view = TargetView(tid)
        name = canonical(name)
        if name.startswith(("/proc/self/", "/proc/thread-self/")):
            return [(name, lambda: _opened(view.open_own(name)))]
        if name.startswith("/"):
            return [(name, lambda: view.open(name))]
        if "/" in name:
            return [(name, lambda: view.open_relative(name))]
        found = [(name, lambda: view.open(f"{NETNS_RUN_DIR}/{name}"))]
        user = _callers_user_stack(name, tid)
        return [*found, (user, lambda: fs.open_path(user))] if user else found

    @staticmethod
    def _open_first(candidates: list[tuple[str, Callable[[], int]]],
                    target: creds_mod.FsIds | None) -> int:
        error: OSError = OSError(errno.ENOENT, "no such stack")
        for label, opener in candidates:
            try:
                if target is None:
                    return netns.open_netns_at(opener(), label)
                with creds_mod.as_filesystem_user(target):
                    return netns.open_netns_at(opener(), label)
            except OSError as e:
                error = e
                if e.errno != errno.ENOENT:
                    break
        raise error

    @staticmethod
    def _may_name(fd: int, who: creds_mod.Creds) -> bool:
        """Whether the target could have entered this namespace itself: setns(2) needs
        CAP_SYS_ADMIN over it, decided as the kernel's cap_capable() does. Walking up from
        the namespace's owning user namespace: reaching the target's own, its effective
        capabilities count; a user namespace whose parent is the target's and whose owner
        is the target's euid gives it every capability (a rootless stack it made). Stacks
        already used in the tree were accepted before this is asked."""
        try:
            ns = netns.owning_userns(fd)
        except OSError:
            return False
        try:
            while os.fstat(ns).st_ino != who.userns:
                try:
                    parent = netns.parent_userns(ns)
                except OSError:  # the top of our view: the target's is not an ancestor
                    return False
                try:
                    owned = netns.owner_uid(ns) == who.uids[1]
                finally:
                    os.close(ns)
                    ns = parent
                if owned and os.fstat(ns).st_ino == who.userns:
                    return True
            return bool(who.cap_eff & (1 << CAP_SYS_ADMIN))
        finally:
            os.close(ns)

    def close(self) -> None:
        for item in self._by_ino.values():
            os.close(item.fd)


def _callers_user_stack(name: str, tid: int) -> str | None:
    """The caller's own rootless stack ``name``, where mstack-stack keeps it for the
    caller's real uid and (initial) ``XDG_RUNTIME_DIR``: not ours, when we are root."""
    try:
        uid = creds_mod.read_creds(tid).uids[0]
        with open(f"/proc/{tid}/environ", "rb") as f:  # slow lane: may wait on its memory
            environ = f.read(1 << 20).split(b"\0")
    except OSError:
        return None
    xdg = next((e[16:] for e in environ if e.startswith(b"XDG_RUNTIME_DIR=")), None)
    env = {} if xdg is None else {"XDG_RUNTIME_DIR": os.fsdecode(xdg)}
    return user_stack(name, uid, env)


def _is_own(ino: int, tid: int) -> bool:
    """The namespace is the caller's own current one: it is in it already."""
    try:
        return os.stat(f"/proc/{tid}/ns/net").st_ino == ino
    except OSError:
        return False


def _exists(opener: Callable[[], int]) -> bool:
    try:
        os.close(opener())
    except OSError as e:
        return e.errno != errno.ENOENT
    return True


def _opened(fd: int | None) -> int:
    if fd is None:
        raise OSError(errno.ENOENT, "no such stack")
    return fd
