"""``mstack``: run a command with the sockets of chosen address families in another stack.

A thin click layer over :func:`mstack_bpf.launch.launcher.run`; the only place where errors become
one line on stderr and an exit code (click's usage errors included: ``mstack: MESSAGE (see
mstack --help)``, exit 2).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

from mstack_bpf import __version__
from mstack_bpf.cli.common import run as run_cli
from mstack_bpf.core.errors import (
    EXIT_USAGE,
    CommandNotExecutable,
    CommandNotFound,
    StackError,
)
from mstack_bpf.core.families import ALL_FAMILIES, FamilyListError, apply_list, parse_lists
from mstack_bpf.core.model import Mapping, Stack
from mstack_bpf.launch.config import RunConfig
from mstack_bpf.launch.launcher import find_command, open_stacks, run
from mstack_bpf.stacks.resolve import open_stack, resolve

EPILOG = """\b
Families (-o LIST, comma-separated, each item optionally prefixed + or -):
  all, unix|u, ipv4|4, ipv6|6, netlink|n, packet|p, irda|i, bluetooth|b,
  ip (= ipv4,ipv6,netlink,packet), #N (family number, 1..45).
  A list starting with '-' starts from all families, otherwise from none.

\b
Stacks: null, native, NAME (/run/netns/NAME or your own mstack-stack), or a path
  such as /run/netns/blue or /proc/PID/ns/net.

\b
Examples:
  mstack -o ip blue ip -br addr        blue's interfaces
  mstack null curl 127.0.0.1           no network at all
  mstack -o -unix blue bash            all but AF_UNIX from blue
  mstack -o +ip,-ipv6 blue bash        ipv4, netlink, packet from blue
  mstack --lock -o ip null make        no IP for the build, and no way back
  mstack --policy lockdown.toml make   the policy file decides (mstack-policy(5))
  mstack --check-policy lockdown.toml  report every error as FILE:LINE: message

\b
Exit status: COMMAND's; 125 mstack failed; 126 COMMAND not executable;
127 COMMAND not found; 2 usage or policy errors.
"""


class FamilyList(click.ParamType):  # type: ignore[type-arg]
    name = "LIST"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        text = str(value)
        try:
            apply_list(None, text)
        except FamilyListError as e:
            self.fail(f"{e.reason}: {e.item!r}", param, ctx)
        return text


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "allow_interspersed_args": False},
    epilog=EPILOG,
)
@click.option("-o", "families", metavar="LIST", multiple=True, type=FamilyList(),
              help="Families to take from STACK (default: all).")
@click.option("-v", "--verbose", count=True,
              help="On stderr: the mapping, and which stack each socket used when COMMAND "
                   "exits (eBPF); -vv: every socket call; -vvv: debug.")
@click.option("--lock", is_flag=True,
              help="Make this mapping final: nothing below may change any family.")
@click.option("--no-new-privs", is_flag=True,
              help="Set no_new_privs (always set for non-root; disables setuid programs).")
@click.option("--no-colocate", is_flag=True,
              help="Never narrow a caller's CPU affinity to the supervisor's CPU during its "
                   "socket() (slower redirected sockets on an idle machine).")
@click.option("--keep-namespace", is_flag=True,
              help="Leave COMMAND in mstack's own network namespace even where it could live "
                   "in the stack of its IP families (as ip netns exec does).")
@click.option("--policy", "policy_file", metavar="FILE",
              help="Take the whole mapping from FILE (mstack-policy(5)); no STACK, no -o.")
@click.option("--check-policy", "check_file", metavar="FILE",
              help="Check FILE, print every error as FILE:LINE: message; exit 0 or 2.")
@click.version_option(__version__, "--version",
                      message="mstack %(version)s (seccomp user-notification; not View-OS umview)")
@click.argument("args", metavar="STACK COMMAND [ARG]...", nargs=-1)
def mstack(families: tuple[str, ...], verbose: int, lock: bool, no_new_privs: bool,
           no_colocate: bool, keep_namespace: bool, policy_file: str | None,
           check_file: str | None, args: tuple[str, ...]) -> None:
    """Run COMMAND with the sockets of the chosen address families from STACK.

    With --policy FILE there is no STACK: FILE maps every family.
    """
    if check_file is not None:
        if args or families or policy_file is not None or lock:
            raise click.UsageError("--check-policy FILE takes no other arguments")
        _check_policy(check_file, verbose)
    if policy_file is not None:
        _run_policy(policy_file, families, verbose, lock, no_new_privs, not no_colocate,
                    keep_namespace, args)
    stack, command = _stack_and_command(args)
    chosen = parse_lists(families)
    mapping = Mapping().with_families(chosen, _resolve(stack))
    if lock:
        mapping = mapping.locked_all()
    config = RunConfig(mapping, command, verbose, no_new_privs, open_stacks(mapping), chosen,
                       colocate=not no_colocate, keep_namespace=keep_namespace)
    run(config)


def _stack_and_command(args: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Split STACK COMMAND [ARG]...; a ``--`` right after STACK ends mstack's options.

    click stops looking for options at STACK (``allow_interspersed_args=False``, so that
    COMMAND's options stay COMMAND's) and therefore takes a ``--`` after it for an argument;
    getopt(3) users expect it to end the options there as it does before STACK.
    """
    if not args:
        raise click.UsageError("missing STACK")
    stack, command = args[0], args[1:]
    if command[:1] == ("--",):
        command = command[1:]
    if not stack:
        raise click.BadParameter("empty stack name", param_hint="'STACK'")
    if not command:
        raise click.UsageError("missing COMMAND")
    return stack, command


def _resolve(name: str) -> Stack:
    """:func:`resolve`, saying in the hint when the caller's rootless state directory was
    refused (another user's, a symlink, open to others): its stacks were not looked up."""
    try:
        return resolve(name)
    except StackError as e:
        from mstack_bpf.stacks.paths import unsafe_user_base, valid_name

        unsafe = unsafe_user_base() if valid_name(name) else None  # a path is never looked up
        if unsafe is None:
            raise
        raise StackError(str(e), hint=f"{unsafe}; no stack of yours is looked up there") from None


def _check_policy(path: str, verbose: int) -> NoReturn:
    """``--check-policy``: syntax, meaning, then the stacks as they are on this system."""
    from mstack_bpf.launch.policy import check_policy, check_stacks, load_policy

    errors = check_policy(path)
    if not errors:
        policy = load_policy(path)
        errors = check_stacks(policy)
        if verbose and not errors:
            for line in policy.mapping.describe():
                click.echo(f"mstack: {line}", err=True)
    for error in errors:
        click.echo(error, err=True)
    sys.exit(EXIT_USAGE if errors else 0)


def _names_stack(word: str) -> bool:
    """``word`` is a stack, not a command: the user gave a STACK with ``--policy``."""
    try:
        stack = resolve(word)
        if stack.path is not None:
            os.close(open_stack(stack).fd)
    except (StackError, ValueError):
        return False
    return True


def _run_policy(path: str, families: tuple[str, ...], verbose: int, lock: bool,
                no_new_privs: bool, colocate: bool, keep_namespace: bool,
                command: tuple[str, ...]) -> NoReturn:
    if families:
        raise click.UsageError("-o cannot be used with --policy: the policy maps every family")
    if not command:
        raise click.UsageError("missing COMMAND")
    try:
        find_command(command[0])
    except (CommandNotFound, CommandNotExecutable):
        if _names_stack(command[0]):
            raise click.UsageError(
                f"{command[0]!r} is a stack: no STACK argument with --policy") from None
        raise
    from mstack_bpf.launch.policy import load_policy, open_policy

    policy = load_policy(path)
    mapping, stacks = open_policy(policy)
    if lock:
        mapping = mapping.locked_all()
    config = RunConfig(mapping, command, verbose, no_new_privs or policy.no_new_privs, stacks,
                       ALL_FAMILIES, colocate=colocate,
                       keep_namespace=keep_namespace or policy.keep_namespace)
    run(config)


def main() -> NoReturn:
    run_cli(mstack, "mstack")


if __name__ == "__main__":
    main()
