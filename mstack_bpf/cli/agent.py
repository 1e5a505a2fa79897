"""``mstack-agent``: the OCI seccomp agent that gives containers per-family stacks.

    mstack-agent serve [-v] [--socket PATH] [--config FILE]
    mstack-agent profile [--base FILE] [--socket PATH] [--metadata STR]

Exit status: 0, 2 usage (a bad configuration or metadata included), 125 failure; ``serve``
runs until it is killed. See mstack-agent(8).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, NoReturn

import click

from mstack_bpf.agent.config import DEFAULT_PATH, load_config
from mstack_bpf.agent.profile import (
    DEFAULT_BASE,
    DEFAULT_SOCKET,
    ProfileError,
    notify_profile,
    oci_seccomp,
    spo_profile,
    to_yaml,
)
from mstack_bpf.agent.request import RequestError, parse_metadata
from mstack_bpf.cli.common import run
from mstack_bpf.core.errors import MstackError, UsageError

PROG = "mstack-agent"
EPILOG = """\b
Examples:
  mstack-agent serve &
  mstack-agent profile > /etc/mstack/agent-seccomp.json
  podman run --security-opt seccomp=/etc/mstack/agent-seccomp.json \\
      --annotation io.mstack.stack=vpn --annotation io.mstack.families=ipv4 IMAGE
  mstack-agent profile --metadata 'stack=vpn; families=ipv4' > vpn-ipv4.json
"""


class MetadataType(click.ParamType[str, str]):
    name = "STR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            parse_metadata(str(value))
        except RequestError as e:
            self.fail(str(e), param, ctx)
        return str(value)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Give containers per-family network stacks (an OCI seccomp agent)."""


@main.command(epilog=EPILOG)
@click.option("--socket", "path", default=DEFAULT_SOCKET, show_default=True,
              help="Where the runtimes connect (the profile's listenerPath).")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help=f"Allow-list and options [default: {DEFAULT_PATH}, if it exists].")
@click.option("-v", "--verbose", count=True,
              help="-v: also one line per socket call; -vv: debug logging.")
def serve(path: str, config_path: str | None, verbose: int) -> None:
    """Serve the containers' socket calls until killed."""
    from mstack_bpf.agent.agent import Agent
    from mstack_bpf.agent.server import listen
    from mstack_bpf.linux import prctl
    from mstack_bpf.supervisor import visitor
    from mstack_bpf.supervisor.main import raise_fd_limit

    config = load_config(config_path or DEFAULT_PATH, required=config_path is not None)
    if os.geteuid() != 0:
        raise MstackError("serve needs root (it serves the containers of root's runtimes)")
    logging.basicConfig(stream=sys.stderr, format=f"{PROG}: %(message)s",
                        level=logging.DEBUG if verbose >= 2 else logging.INFO)
    raise_fd_limit()
    # Not dumpable, as mstack's supervisor: the children that make a container's sockets in
    # its cgroup share our memory and take its ids (supervisor/visitor.py).
    prctl.set_dumpable(False)
    # Never the OOM killer's pick: those children are in the containers' memory cgroups, and
    # a container that runs out of memory (or has memory.oom.group) would kill us with them.
    visitor.shield()
    sock = listen(path)
    logging.getLogger("mstack.agent").info("serving %s (%s)", path, config.source)
    Agent(config, sock, verbose).serve()


@main.command(epilog=EPILOG)
@click.option("--base", default=None, metavar="FILE",
              help=f"The profile to start from [default: {DEFAULT_BASE}].")
@click.option("--socket", "path", default=DEFAULT_SOCKET, show_default=True,
              help="The agent's socket (listenerPath).")
@click.option("--metadata", default=None, type=MetadataType(),
              help="The mapping for every container under this profile (listenerMetadata).")
@click.option("--spo", "spo_name", default=None, metavar="NAME",
              help="Print it as the Security Profiles Operator's SeccompProfile NAME (YAML).")
@click.option("--oci", is_flag=True,
              help="Print it as runtime-spec linux.seccomp (ctr run --seccomp-profile).")
@click.option("--wait-killable", is_flag=True,
              help="Ask the runtime for SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: the agent then "
                   "answers on the caller's CPU (crun takes it; runc 1.1.5 refuses it).")
def profile(base: str | None, path: str, metadata: str | None, spo_name: str | None,
            oci: bool, wait_killable: bool) -> None:
    """Print a seccomp profile that sends every socket call to the agent."""
    source = base or DEFAULT_BASE
    try:
        with open(source, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        hint = None if base else "give one with --base FILE (containers-common ships it)"
        raise MstackError(f"{source}: cannot read: {e.strerror}", hint=hint) from None
    except (ValueError, RecursionError) as e:
        raise UsageError(f"{source}: not JSON: {e}") from None
    try:
        out = notify_profile(doc, os.path.abspath(path), metadata, wait_killable)
    except ProfileError as e:
        raise UsageError(f"{source}: {e}") from None
    if spo_name is not None and oci:
        raise click.UsageError("--spo and --oci are two formats: choose one")
    if spo_name is None:
        click.echo(json.dumps(oci_seccomp(out) if oci else out, indent=1))
    else:
        click.echo(f"# mstack-agent profile --spo {spo_name}" + (
            f" --metadata '{metadata}'" if metadata else "") + (
            " --wait-killable" if wait_killable else "") + "\n" + to_yaml(
                spo_profile(out, spo_name)))


def entry() -> NoReturn:
    run(main, PROG)


if __name__ == "__main__":
    entry()
