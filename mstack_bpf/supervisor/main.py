"""Set-up of the supervisor process: take the listener, probe it, report ready, serve."""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import sys
from collections.abc import Callable, Iterable

from mstack_bpf.core.model import NATIVE, Mapping, Stack
from mstack_bpf.launch import handshake, nested
from mstack_bpf.launch.config import RunConfig
from mstack_bpf.linux import seccomp
from mstack_bpf.linux.ffi import SyscallError
from mstack_bpf.stacks.resolve import OpenStack
from mstack_bpf.supervisor import carrier
from mstack_bpf.supervisor.factory import SocketMaker, StackSockets
from mstack_bpf.supervisor.fdbudget import FdBudget
from mstack_bpf.supervisor.loop import Supervisor, describe
from mstack_bpf.supervisor.registry import StackRegistry
from mstack_bpf.supervisor.tables import Tables
from mstack_bpf.trace.report import TICK_MS, SocketReport, watch

log = logging.getLogger("mstack.supervisor")


def _close_other_fds(keep: set[int]) -> None:
    """Hold nothing of the command's: an inherited pipe kept open would stall its reader."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd not in keep:
            os.dup2(devnull, fd)
    os.close(devnull)
    keep = keep | {0, 1, 2}
    previous = -1
    for fd in sorted(keep):
        if fd - previous > 1:
            os.closerange(previous + 1, fd)
        previous = fd
    os.closerange(previous + 1, os.sysconf("SC_OPEN_MAX"))


def _probe_addfd(listener: seccomp.Listener) -> str | None:
    """ADDFD with SEND and an id that cannot exist: ENOENT means the kernel knows both (it
    refuses a flag it does not know, EINVAL, before it looks the id up)."""
    try:
        listener.addfd(0xFFFFFFFFFFFFFFFF, 0, cloexec=True, send=True)
    except SyscallError as e:
        if e.errno == errno.ENOENT:
            return None
        return (f"kernel lacks SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SEND "
                f"({e.strerror}); needs Linux >= 5.14")
    return None


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose >= 3 else logging.INFO if verbose >= 2 else logging.WARNING
    logging.basicConfig(stream=sys.stderr, level=level, format="mstack supervisor: %(message)s")


def _rootless_helper(ns_fd: int) -> SocketMaker:
    """A process resident in a namespace we may not setns() into ourselves (a rootless
    stack: it enters the owning user namespace first). It inherits ``ns_fd`` at the fork."""
    from mstack_bpf.supervisor.helper import NetnsSocketHelper

    return NetnsSocketHelper(f"/proc/self/fd/{ns_fd}")


def _enter_stacks(sockets: StackSockets, stacks: Iterable[OpenStack]) -> str | None:
    """Make a socket in every stack now, so that one we cannot use fails at start (mstack
    exits 125) instead of every later call; the socket then serves the interface ioctls."""
    for opened in stacks:
        try:
            sockets.ioctl_socket(opened.fd, opened.ino)
        except OSError as e:
            return (f"{opened.stack.path}: cannot make sockets in this stack "
                    f"({e.strerror or e}); is it yours, or are you root?")
    return None


class SetupError(Exception):
    """A listener that cannot be served; the message says why, on one line."""


def build(listener_fd: int, mapping: Mapping, stacks: tuple[OpenStack, ...], *,
          colocate: bool, home: OpenStack | None = None, native: Stack = NATIVE,
          own: int | None = None, refuse: int = 0,
          carried: Callable[[], carrier.Carrier | None] | None = None) -> Supervisor:
    """A supervisor ready to serve ``listener_fd`` (ours from now on) with ``mapping``:
    the kernel probed, the listener set up, every stack of ``stacks`` tried. The one way
    both front doors (mstack's supervisor process, mstack-agent) start serving.
    ``own``: the namespace a caller naming its own is served in by the kernel (registry.py);
    ``refuse``: an errno for every call instead (loop.py); ``carried``: starts the eBPF
    carrier of per-process tables when a tree first sets one (tables.py).
    """
    listener = seccomp.Listener(listener_fd)
    problem = _probe_addfd(listener)
    if problem:
        raise SetupError(problem)
    try:
        listener.set_sync_wakeup()
        synchronous = True
    except SyscallError as e:
        log.debug("no synchronous wake-ups: %s", e)
        synchronous = False
    sockets = StackSockets(_rootless_helper)
    problem = _enter_stacks(sockets, stacks)
    if problem:
        sockets.close()
        raise SetupError(problem)
    budget = FdBudget.of_this_process()
    registry = StackRegistry(stacks, mapping, budget, native, own=own)
    return Supervisor(listener, Tables(mapping, budget, carried), registry, sockets,
                      colocate=synchronous and colocate, home=home, refuse=refuse)


def raise_fd_limit() -> None:
    """Tables, stacks and status files each hold a descriptor: take the hard limit (what a
    tree may make us keep is then bounded by it: fdbudget.py)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_forever(channel: socket.socket, config: RunConfig, root_pid: int) -> None:
    # where mstack started (we have entered no stack yet): what "own" means without a home
    start_ino = os.stat("/proc/thread-self/ns/net").st_ino
    keep = {channel.fileno(), *(s.fd for s in config.stacks)}
    if config.verbose:
        keep.add(2)
    _close_other_fds(keep)
    raise_fd_limit()
    _setup_logging(config.verbose)
    try:
        offered = handshake.take_offer(channel)
    except OSError:
        return
    report = SocketReport(root_pid, config.mapping, config.stacks, config.verbose,
                          native=nested.outer_native() if config.nested else None) if (
        config.verbose) else None
    if offered is None:  # no listener: a watcher for -v (under a lock, or nested)
        if report is not None:
            handshake.ready(channel)
            watch(report)
        return
    home = next((o for o in config.stacks if o.stack == config.home), None)
    try:
        supervisor = build(offered, config.mapping, config.stacks, colocate=config.colocate,
                           home=home, native=config.start or NATIVE,
                           own=home.ino if home else start_ino, carried=carrier.start)
    except SetupError as e:
        handshake.failed(channel, str(e))
        return
    if config.verbose >= 3:
        supervisor.observers.append(lambda *a: log.debug("%s", describe(*a)))
    handshake.ready(channel)
    if report is None:
        supervisor.serve()
    else:
        supervisor.before_exit = report.before_exit
        supervisor.serve(report.handlers(), report.tick, TICK_MS)
        report.finish()  # the listener and the pidfd may report in the same poll
