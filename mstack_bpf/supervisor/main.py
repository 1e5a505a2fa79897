"""Set-up of the supervisor process: take the listener, probe it, report ready, serve."""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import sys

from mstack_bpf.core.model import NATIVE
from mstack_bpf.launch import handshake, nested
from mstack_bpf.launch.config import RunConfig
from mstack_bpf.linux import seccomp
from mstack_bpf.linux.ffi import SyscallError
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


def _enter_stacks(sockets: StackSockets, config: RunConfig) -> str | None:
    """Make a socket in every stack now, so that one we cannot use fails mstack (exit 125)
    instead of every later call; the socket then serves the interface ioctls."""
    for opened in config.stacks:
        try:
            sockets.ioctl_socket(opened.fd, opened.ino)
        except OSError as e:
            return (f"{opened.stack.path}: cannot make sockets in this stack "
                    f"({e.strerror or e}); is it yours, or are you root?")
    return None


def _raise_fd_limit() -> None:
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
    _raise_fd_limit()
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
    listener = seccomp.Listener(offered)
    problem = _probe_addfd(listener)
    if problem:
        handshake.failed(channel, problem)
        return
    try:
        listener.set_sync_wakeup()
        synchronous = True
    except SyscallError as e:
        log.debug("no synchronous wake-ups: %s", e)
        synchronous = False
    sockets = StackSockets(_rootless_helper)
    problem = _enter_stacks(sockets, config)
    if problem:
        handshake.failed(channel, problem)
        return
    budget = FdBudget.of_this_process()
    home = next((o for o in config.stacks if o.stack == config.home), None)
    registry = StackRegistry(config.stacks, config.mapping, budget, config.start or NATIVE,
                             own=home.ino if home else start_ino)
    tables = Tables(config.mapping, budget, carrier.start)
    supervisor = Supervisor(listener, tables, registry, sockets,
                            colocate=synchronous and config.colocate, home=home)
    if config.verbose >= 3:
        supervisor.observers.append(lambda *a: log.debug("%s", describe(*a)))
    handshake.ready(channel)
    if report is None:
        supervisor.serve()
    else:
        supervisor.before_exit = report.before_exit
        supervisor.serve(report.handlers(), report.tick, TICK_MS)
        report.finish()  # the listener and the pidfd may report in the same poll
