"""``mstack``: run a command with the sockets of chosen address families in another stack.

A thin click layer over :func:`mstack_bpf.launcher.run`; the only place where errors become
one line on stderr and an exit code.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from mstack_bpf import __version__
from mstack_bpf.errors import MstackError
from mstack_bpf.families import FamilyListError, apply_list, parse_lists
from mstack_bpf.launcher import RunConfig, open_stacks, run
from mstack_bpf.model import Mapping
from mstack_bpf.resolve import resolve

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

\b
Exit status: COMMAND's; 125 mstack failed; 126 COMMAND not executable;
127 COMMAND not found; 2 usage.
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
@click.option("-v", "--verbose", count=True, help="Show the mapping on stderr (-vv: every call).")
@click.option("--lock", is_flag=True,
              help="Make this mapping final: nothing below may change any family.")
@click.option("--no-new-privs", is_flag=True,
              help="Set no_new_privs (always set for non-root; disables setuid programs).")
@click.version_option(__version__, "--version",
                      message="mstack %(version)s (seccomp user-notification; not View-OS umview)")
@click.argument("stack", metavar="STACK")
@click.argument("command", metavar="COMMAND [ARG]...", nargs=-1, required=True)
def mstack(families: tuple[str, ...], verbose: int, lock: bool, no_new_privs: bool,
           stack: str, command: tuple[str, ...]) -> None:
    """Run COMMAND with the sockets of the chosen address families from STACK."""
    chosen = parse_lists(families)
    mapping = Mapping().with_families(chosen, resolve(stack))
    if lock:
        mapping = mapping.locked_all()
    config = RunConfig(mapping, command, verbose, no_new_privs, open_stacks(mapping), chosen)
    if verbose:
        for line in mapping.describe():
            click.echo(f"mstack: {line}", err=True)
    run(config)


def main() -> NoReturn:
    try:
        mstack.main(standalone_mode=True)
    except MstackError as e:
        click.echo(f"mstack: {e}", err=True)
        if e.hint:
            click.echo(f"mstack: hint: {e.hint}", err=True)
        sys.exit(e.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()
