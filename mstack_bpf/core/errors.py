"""Errors the library raises and the exit codes the CLI turns them into, once
(docs/design.md, "Exit codes")."""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130  # Ctrl-C before the command started


class MstackError(Exception):
    """mstack itself failed: one line for the user, plus an optional hint."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(MstackError):
    exit_code = EXIT_USAGE


class StackError(MstackError):
    """A stack that cannot be used: missing, not a network namespace, not openable."""


class CommandNotFound(MstackError):
    exit_code = EXIT_NOT_FOUND


class CommandNotExecutable(MstackError):
    exit_code = EXIT_CANNOT_EXECUTE


class Unsupported(MstackError):
    """The kernel lacks something mstack needs."""


class LockedError(MstackError):
    """An outer ``mstack --lock`` (or locked policy) forbids changing the mapping."""
