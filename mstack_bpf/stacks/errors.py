"""Errors of stack management; the CLI maps each to one line and an exit code.

Every error is an ``OSError`` subclass only where a system call failed
(:class:`mstack_bpf.linux.ffi.SyscallError`); the rest derive from :class:`ManageError`,
an :class:`MstackError` whose exit code says whether the request itself was wrong (2) or
carrying it out failed (125).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mstack_bpf.core.errors import EXIT_USAGE, MstackError

if TYPE_CHECKING:
    from mstack_bpf.stacks.procs import User


class ManageError(MstackError):
    """A stack operation that cannot be done; ``str()`` is the one-line message."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)


class InvalidName(ManageError):
    exit_code = EXIT_USAGE

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"invalid stack name {name!r}: {why}")


class StackExists(ManageError):
    def __init__(self, name: str, where: str) -> None:
        super().__init__(f"stack {name!r} already exists ({where})")


class NoSuchStack(ManageError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no such stack: {name!r}")


class NotManaged(ManageError):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(
            f"{path} was not made by mstack-stack; remove it with 'ip netns del {name}'"
        )
        self.path = path


_HOW_TEXT = {"member": "lives in it", "socket": "has a socket in it", "fd": "holds it open"}


def users_text(users: Sequence[User]) -> str:
    """``pid 1234 (python3, has a socket in it), pid 1240 (mstack-sv, holds it open)``."""
    return ", ".join(f"pid {u.pid} ({u.comm}, {_HOW_TEXT.get(u.how, u.how)})" for u in users)


class InUse(ManageError):
    """``del`` of a stack processes still use."""

    def __init__(self, name: str, users: Sequence[User]) -> None:
        super().__init__(
            f"stack {name!r} is in use by {users_text(users)}",
            hint=f"stop them first, or 'mstack-stack del --force {name}' (their sockets keep "
                 "the namespace alive until they close; only the name goes)",
        )
        self.users = list(users)


class NoResolver(ManageError):
    """``dns`` of a stack with no resolver that can answer inside it."""

    def __init__(self, name: str, why: str, hint: str | None = None) -> None:
        super().__init__(f"stack {name!r} has no usable resolver: {why}", hint)


class MissingTool(ManageError):
    def __init__(self, tool: str, package: str) -> None:
        super().__init__(f"{tool} not found: install it with 'apt-get install {package}'")
        self.tool = tool
        self.package = package


class AddressClash(ManageError):
    def __init__(self, subnet: str, other: str) -> None:
        super().__init__(f"address clash: {subnet} overlaps {other} already on this host")


class NoFreeSubnet(ManageError):
    def __init__(self, rng: str) -> None:
        super().__init__(f"no free subnet left in {rng} (every one clashes with the host)")


class NeedsRoot(ManageError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs root (without root, use --user-net or no option)")


class UnsafeStateDir(ManageError):
    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"refusing state directory {path}: {why}")


class CommandFailed(ManageError):
    """An external tool (ip, pasta, slirp4netns, nft) failed; the message quotes its stderr."""

    def __init__(self, argv: list[str], detail: str) -> None:
        detail = detail.strip().splitlines()[-1] if detail.strip() else "failed"
        super().__init__(f"{argv[0]} {' '.join(argv[1:3])}: {detail}")
        self.argv = argv


class InvalidAddress(ManageError):
    exit_code = EXIT_USAGE

    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"invalid address {text!r}: {why}")
