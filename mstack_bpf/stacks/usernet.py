"""User-mode networking backends: pasta (package ``passt``, preferred) and slirp4netns.

Both connect a stack to the outside through a tap device served by an ordinary user
process that makes host sockets on the stack's behalf, so the host's interfaces, routes and
firewall stay untouched and no privilege is needed (rootless stacks need ``/dev/net/tun``
to be usable by the user — Debian's udev makes it mode 0666).

=============  ===============================  =============================================
               pasta                            slirp4netns
=============  ===============================  =============================================
addresses      copies the host's (e.g. eth0)    10.0.2.100/24 on tap0, gateway 10.0.2.2
DNS recorded   host's resolver address when it  10.0.2.3 (slirp's forwarder to the host's
               is not loopback: pasta answers   resolver)
               it (``--dns-forward``), so an
               unchanged /etc/resolv.conf works;
               else the gateway
host loopback  ``--host-loopback``: the gateway ``--host-loopback``: 10.0.2.2 reaches host
               address reaches host 127.0.0.1   127.0.0.1
               (pasta's gateway mapping)
=============  ===============================  =============================================

Host loopback access is off unless asked for: services bound to the host's 127.0.0.1
trust their callers more than the network. pasta's automatic port forwarding
(``-t/-u/-T/-U auto``) is switched off for the same reason.

Root stacks: pasta runs with ``--runas 0`` because this pasta version, after dropping to
``nobody``, can no longer enter a namespace owned by root (measured: "Couldn't switch to
pasta namespaces"); it still confines itself (its own namespaces and seccomp filter).
Rootless stacks: both tools are given the holder's pid and join its user namespace first.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import subprocess
import time
from dataclasses import dataclass

from mstack_bpf.stacks import tools
from mstack_bpf.stacks.errors import CommandFailed, ManageError
from mstack_bpf.stacks.state import Proc

BACKENDS = ("pasta", "slirp4netns")
SLIRP_DNS = "10.0.2.3"
SLIRP_HOST = "10.0.2.2"
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Target:
    """Where a backend attaches: a mounted namespace (root) or a holder's pid (rootless)."""

    netns_path: str | None = None
    holder_pid: int | None = None

    def spec(self) -> list[str]:
        if self.holder_pid is not None:
            return [str(self.holder_pid)]
        assert self.netns_path is not None
        return ["--netns", self.netns_path]


@dataclass(frozen=True)
class UserNet:
    backend: str
    proc: Proc
    dns: str | None
    host_alias: str | None


def pasta_argv(
    target: Target, pidfile: str, host_loopback: bool, dns_forward: str | None
) -> list[str]:
    argv = ["pasta", "--config-net", "-q", "-P", pidfile]
    argv += ["-t", "none", "-u", "none", "-T", "none", "-U", "none"]
    if target.holder_pid is None and os.geteuid() == 0:
        argv += ["--runas", "0"]
    if not host_loopback:
        argv.append("--no-map-gw")
    if dns_forward:
        argv += ["--dns-forward", dns_forward]
    return argv + target.spec()


def slirp_argv(target: Target, ready_fd: int, host_loopback: bool) -> list[str]:
    argv = ["slirp4netns", "--configure", "--mtu=65520", f"--ready-fd={ready_fd}"]
    if not host_loopback:
        argv.append("--disable-host-loopback")
    if target.holder_pid is not None:
        return [*argv, str(target.holder_pid), "tap0"]
    assert target.netns_path is not None
    return [*argv, "--netns-type=path", target.netns_path, "tap0"]


def pasta_dns(resolver: str | None, gateway: str | None) -> str | None:
    """The address pasta should answer DNS on: the host's resolver itself when a stack can
    route to it (not loopback), so programs keep using /etc/resolv.conf; else the gateway."""
    if resolver is not None and not ipaddress.ip_address(resolver).is_loopback:
        return resolver
    return gateway


def host_resolver(path: str = "/etc/resolv.conf") -> str | None:
    """The first ``nameserver`` of resolv.conf(5), or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    ipaddress.ip_address(parts[1].split("%")[0])
                    return parts[1]
    except (OSError, ValueError):
        return None
    return None


def host_gateway4() -> str | None:
    """The gateway of the host's IPv4 default route (what pasta copies into the stack)."""
    try:
        routes = json.loads(tools.run(["ip", "-j", "-4", "route", "show", "default"]) or "[]")
    except (ManageError, ValueError):
        return None
    for r in routes:
        if isinstance(r, dict) and isinstance(r.get("gateway"), str):
            return str(r["gateway"])
    return None


def start(
    backend: str, target: Target, state_dir: str, *, host_loopback: bool, dns: str | None
) -> UserNet:
    """Start ``backend`` for ``target``; return once the stack's interface is configured.

    ``dns`` overrides the recorded resolver (and, for pasta, turns its forwarder off: the
    caller runs a resolver at that address, e.g. on host loopback).
    """
    if backend == "pasta":
        return _start_pasta(target, state_dir, host_loopback, dns)
    if backend == "slirp4netns":
        return _start_slirp(target, state_dir, host_loopback, dns)
    raise ValueError(backend)


def _start_pasta(target: Target, state_dir: str, host_loopback: bool, dns: str | None) -> UserNet:
    tools.which("pasta")
    gateway = host_gateway4()
    forward = None if dns else pasta_dns(host_resolver(), gateway)
    pidfile = os.path.join(state_dir, "pasta.pid")
    argv = pasta_argv(target, pidfile, host_loopback, forward)
    log = os.path.join(state_dir, "pasta.log")
    with open(log, "w", encoding="utf-8") as err:
        try:
            # pasta configures the namespace, then daemonizes; the foreground part exits.
            res = subprocess.run(
                [tools.which("pasta"), *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                timeout=START_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CommandFailed(argv, "did not start in time") from None
    pid = _read_pidfile(pidfile) if res.returncode == 0 else None
    if pid is None:
        with open(log, encoding="utf-8", errors="replace") as f:
            detail = tools.clean_stderr(f.read())
        raise CommandFailed(argv, detail or f"exit status {res.returncode}")
    alias = gateway if host_loopback else None
    return UserNet("pasta", Proc.of(pid, "pasta"), dns or forward, alias)


def _read_pidfile(path: str) -> int | None:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return None


def _start_slirp(target: Target, state_dir: str, host_loopback: bool, dns: str | None) -> UserNet:
    exe = tools.which("slirp4netns")
    r, w = os.pipe()
    argv = slirp_argv(target, w, host_loopback)
    log = os.path.join(state_dir, "slirp4netns.log")
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [exe, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            pass_fds=(w,),
            start_new_session=True,  # no terminal signals; it outlives mstack-stack
        )
    os.close(w)
    try:
        ready = _wait_ready(r, proc)
    finally:
        os.close(r)
    if not ready:
        _kill(proc)
        with open(log, encoding="utf-8", errors="replace") as f:
            raise CommandFailed(argv, f.read() or "exited before it was ready")
    alias = SLIRP_HOST if host_loopback else None
    return UserNet("slirp4netns", Proc.of(proc.pid, "slirp4netns"), dns or SLIRP_DNS, alias)


def _wait_ready(r: int, proc: subprocess.Popen[bytes]) -> bool:
    """slirp4netns writes "1" on --ready-fd once tap0 is configured."""
    deadline = time.monotonic() + START_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([r], [], [], left)
        if ready:
            return os.read(r, 1) == b"1"
        if proc.poll() is not None:
            return False
    return False


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()
