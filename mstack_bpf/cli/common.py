"""The one place where an error becomes a line on stderr and an exit code.

Every front end runs its click command through :func:`run`: a usage error is one line
naming the option or argument and where the help is (exit 2); a :class:`MstackError` is its
message (one line per error of a policy file) and an optional ``hint:`` line, with the
error's own exit code; any other failed system call is one line (exit 125); Ctrl-C before
the command starts is exit 130. Never a traceback for something a user can cause or meet.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from mstack_bpf.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, MstackError


def usage_line(prog: str, err: click.UsageError) -> str:
    """click's usage error as one line: its message, and where the help is."""
    lines = [line.strip() for line in err.format_message().splitlines() if line.strip()]
    text = "; ".join(lines).rstrip(".") or "usage error"
    if text[:1].isupper() and text[1:2].islower():  # "No such option" but not "STACK"
        text = text[0].lower() + text[1:]
    where = err.ctx.command_path if err.ctx is not None else prog
    return f"{prog}: {text} (see {where} --help)"


def fail(prog: str, err: BaseException) -> NoReturn:
    """Report ``err`` as ``prog``'s one line (and hint) and exit with its code."""
    if isinstance(err, click.UsageError):
        click.echo(usage_line(prog, err), err=True)
        sys.exit(EXIT_USAGE)
    if isinstance(err, click.ClickException):
        click.echo(f"{prog}: {err.format_message()}", err=True)
        sys.exit(EXIT_FAILED)
    if isinstance(err, click.Abort | KeyboardInterrupt):
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if isinstance(err, MstackError):
        for line in str(err).splitlines() or [""]:  # a PolicyError has one line per error
            click.echo(f"{prog}: {line}", err=True)
        if err.hint:
            click.echo(f"{prog}: hint: {err.hint}", err=True)
        sys.exit(err.exit_code)
    click.echo(f"{prog}: {err}", err=True)  # OSError: SyscallError names the call
    sys.exit(EXIT_FAILED)


def run(command: click.Command, prog: str, **kwargs: Any) -> NoReturn:
    """Run a click command, every failure ending as :func:`fail` says."""
    try:
        # not standalone: click would print four lines (usage, "Try", blank, "Error:")
        rv = command.main(prog_name=prog, standalone_mode=False, **kwargs)
    except (click.ClickException, click.Abort, KeyboardInterrupt, MstackError, OSError) as e:
        fail(prog, e)
    sys.exit(rv if isinstance(rv, int) else 0)
