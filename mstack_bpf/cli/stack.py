"""``mstack-stack``: create, list and remove stacks (network namespaces) for mstack.

Exit status 0 success, 2 usage, 125 failure; every failure is one line
(:mod:`mstack_bpf.cli.common`), a usage error ``mstack-stack: MESSAGE (see mstack-stack add
--help)``. See mstack-stack(1).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from typing import Any, NoReturn

import click

from mstack_bpf.cli.common import fail
from mstack_bpf.core.errors import MstackError
from mstack_bpf.stacks import create, manage, paths, usernet
from mstack_bpf.stacks.errors import InvalidName, ManageError, users_text

EPILOG = """\b
Examples:
  mstack-stack add lan --veth --addr 10.9.0.0/30   # host 10.9.0.1, stack 10.9.0.2
  mstack-stack add out --user-net                  # outbound TCP/UDP/DNS via pasta
  mstack-stack add iso                             # loopback only
  mstack -o ip out curl https://example.org/
  mstack-stack list
  mstack-stack del out
"""


class NameType(click.ParamType[str, str]):
    name = "NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return paths.check_name(str(value))
        except InvalidName as e:
            self.fail(str(e), param, ctx)


class IPType(click.ParamType[str, str]):
    name = "ADDR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return str(ipaddress.ip_address(str(value)))
        except ValueError:
            self.fail(f"{value!r} is not an IPv4 or IPv6 address", param, ctx)


class CIDRType(click.ParamType[str, str]):
    name = "CIDR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            ipaddress.ip_network(str(value), strict=False)
        except ValueError as e:
            self.fail(f"{value!r}: {e}", param, ctx)
        if "/" not in str(value):
            self.fail(f"{value!r} needs a prefix length, e.g. 10.9.0.0/30", param, ctx)
        return str(value)


def _fail(err: BaseException) -> NoReturn:
    fail("mstack-stack", err)


class OneLineErrors(click.Group):
    """A group whose failures are one line on stderr (cli/common.py), not click's four."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        kwargs.setdefault("prog_name", "mstack-stack")
        try:
            rv = super().main(*args, **kwargs)
        except (click.ClickException, click.Abort, KeyboardInterrupt, MstackError,
                OSError) as e:
            fail("mstack-stack", e)
        sys.exit(rv if isinstance(rv, int) else 0)


def _refuse_unsafe_base(name: str | None = None) -> None:
    """Fail when the caller's rootless state directory exists but is not safely theirs (e.g.
    planted in /tmp by another user), rather than showing it as empty. Root, and a root
    stack's NAME, never use that directory."""
    if os.geteuid() == 0 or (name is not None and os.path.lexists(paths.root_netns_path(name))):
        return
    err = paths.unsafe_user_base()
    if err is not None:
        _fail(err)


@click.group(
    cls=OneLineErrors,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=False,  # no COMMAND is a usage error ("missing command"), not a help page
)
def main() -> None:
    """Create, list and remove network stacks (namespaces) for mstack."""


@main.command(epilog=EPILOG)
@click.argument("name", type=NameType())
@click.option("--veth", is_flag=True, help="Connect the stack to the host with a veth pair.")
@click.option("--addr", type=CIDRType(), help="--veth: subnet of the pair (host .1, stack .2).")
@click.option("--range", "rng", type=CIDRType(), help="--veth: pick a free /30 from here.")
@click.option("--nat", is_flag=True, help="--veth: masquerade the stack's traffic (nftables).")
@click.option("--user-net", is_flag=True, help="User-mode networking (pasta or slirp4netns).")
@click.option("--backend", type=click.Choice(usernet.BACKENDS), help="--user-net backend.")
@click.option(
    "--host-loopback", is_flag=True, help="--user-net: let the stack reach host 127.0.0.1."
)
@click.option("--dns", type=IPType(), help="Resolver address to record for the stack.")
def add(
    name: str,
    veth: bool,
    addr: str | None,
    rng: str | None,
    nat: bool,
    user_net: bool,
    backend: str | None,
    host_loopback: bool,
    dns: str | None,
) -> None:
    """Create stack NAME (loopback only unless --veth or --user-net)."""
    if veth and user_net:
        raise click.UsageError("--veth and --user-net exclude each other")
    if (addr or rng or nat) and not veth:
        raise click.UsageError("--addr, --range and --nat need --veth")
    if addr and rng:
        raise click.UsageError("--addr and --range exclude each other")
    if (backend or host_loopback) and not user_net:
        raise click.UsageError("--backend and --host-loopback need --user-net")
    net = "veth" if veth else "user-net" if user_net else "loopback"
    req = create.AddRequest(name, net, addr, rng, nat, backend or "pasta", host_loopback, dns)
    try:
        st = create.add(req)
    except (ManageError, OSError) as e:
        _fail(e)
    click.echo(f"{st.name}: {_describe(st.net, st.backend)} {' '.join(st.addresses) or '-'}"
               f" dns {st.dns or '-'} path {st.netns_path}")  # fmt: skip


def _describe(net: str, backend: str | None) -> str:
    return f"user-net/{backend}" if net == "user-net" else net


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array with every field.")
def list_cmd(as_json: bool) -> None:
    """Show stacks: type, addresses, DNS, helper pids, processes using them."""
    _refuse_unsafe_base()
    try:
        infos = manage.list_stacks()
    except (ManageError, OSError) as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps([i.to_json() for i in infos], indent=1))
        return
    rows = [("NAME", "TYPE", "OWNER", "ADDRESSES", "DNS", "HELPERS", "USED BY")]
    for i in infos:
        st = i.state
        helpers = ",".join(f"{p.role}:{p.pid}" for p in st.procs) or "-"
        users = ",".join(f"{u.comm}:{u.pid}" for u in i.users) or "-"
        owner = i.owner_name if i.live else f"{i.owner_name}(dead)"
        rows.append((st.name, i.kind, owner, ",".join(st.addresses) or "-", st.dns or "-",
                     helpers, users))  # fmt: skip
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])


@main.command(name="del")
@click.argument("name", type=NameType())
@click.option("--force", is_flag=True,
              help="Remove it even while processes use it (their sockets keep it alive).")
def del_cmd(name: str, force: bool) -> None:
    """Remove stack NAME and everything it started (a missing stack is not an error).

    Refused while a process lives in it, holds a socket in it or holds it open."""
    _refuse_unsafe_base(name)
    try:
        left = manage.delete(name, force=force)
    except (ManageError, OSError) as e:
        _fail(e)
    if left:
        click.echo(f"mstack-stack: removed {name!r} while in use by {users_text(left)}: "
                   "their sockets keep the namespace alive until they close; the name is "
                   "gone", err=True)


@main.command()
@click.argument("name", type=NameType())
def dns(name: str) -> None:
    """Print the resolver address that works from inside stack NAME.

    For a namespace mstack-stack did not make: the one it would use (/etc/netns/NAME/
    resolv.conf, as ip netns exec binds it, else /etc/resolv.conf)."""
    _refuse_unsafe_base(name)
    try:
        addr = manage.dns(name)
    except (ManageError, OSError) as e:
        _fail(e)
    if addr is None:
        _fail(ManageError(f"stack {name!r} has no resolver (give one with 'add --dns ADDR')"))
    click.echo(addr)


@main.command()
@click.argument("name", type=NameType())
def path(name: str) -> None:
    """Print a path that opens stack NAME's network namespace."""
    _refuse_unsafe_base(name)
    try:
        click.echo(manage.netns_path(name))
    except (ManageError, OSError) as e:
        _fail(e)


if __name__ == "__main__":
    main()
