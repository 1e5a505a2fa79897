"""Start the supervisor, install the filter, exec the command in place.

    mstack ─fork─▶ (setsid, fork) ─▶ supervisor          (not under the filter)
      │ install filter (NEW_LISTENER) ─▶ send listener fd ─▶ close it ─▶ wait "ready"
      └ execve(COMMAND): same PID, COMMAND's exit status is mstack's

The supervisor double-forks and leaves the session, so Ctrl-C at the terminal reaches the
command, not the supervisor, and a command that waits for its children never waits for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from typing import NoReturn

from mstack_bpf.core.errors import CommandNotExecutable, CommandNotFound, MstackError, Unsupported
from mstack_bpf.core.families import AF_INET
from mstack_bpf.core.home import home_of, relative
from mstack_bpf.core.model import Mapping, Stack, StackKind
from mstack_bpf.launch import handshake, nested
from mstack_bpf.launch.config import RunConfig
from mstack_bpf.launch.plan import LaunchPlan, plan
from mstack_bpf.linux import netns, prctl, seccomp
from mstack_bpf.linux.ffi import SyscallError
from mstack_bpf.seccomp.program import (
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    SECCOMP_RET_USER_NOTIF,
    Instruction,
)
from mstack_bpf.stacks.resolve import OpenStack, open_stack

_SUPERVISOR_IGNORES = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGHUP,
                       signal.SIGTTOU, signal.SIGTTIN, signal.SIGPIPE)


def find_command(name: str) -> str:
    """The file execve(2) will run, with env(1)'s exit codes for the failures."""
    path = name if "/" in name else shutil.which(name, mode=os.F_OK)
    if path is None or not os.path.exists(path):
        raise CommandNotFound(f"{name}: command not found")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise CommandNotExecutable(f"{name}: Permission denied")
    return path


def open_stacks(mapping: Mapping) -> tuple[OpenStack, ...]:
    return tuple(open_stack(stack) for stack in mapping.netns_stacks())


def check_kernel() -> None:
    if not seccomp.action_available(SECCOMP_RET_USER_NOTIF):
        raise Unsupported("kernel lacks seccomp user notification (SECCOMP_RET_USER_NOTIF)",
                          hint="mstack needs Linux >= 5.14 with CONFIG_SECCOMP_FILTER")
    try:
        seccomp.check_notif_sizes()
    except RuntimeError as e:
        raise Unsupported(str(e), hint="mstack does not know this kernel's seccomp ABI") from None


def run(config: RunConfig) -> NoReturn:
    """Set up and execve ``config.argv``; raises :class:`MstackError` if that cannot be done."""
    path = find_command(config.argv[0])
    check_kernel()
    is_nested = nested.outer_supervisor()  # first: it marks us as mstack's for the tracer
    asked = config.mapping
    config = dataclasses.replace(settle_home(config, is_nested), nested=is_nested)
    carry_out(plan(config.mapping, config.chosen, verbose=config.verbose,
                   no_new_privs=config.no_new_privs, root=os.geteuid() == 0,
                   nested=is_nested, home=config.start is not None), config)
    if config.verbose:  # only once the run is set up: an error (125) shows no mapping
        _flush()
        for line in [*asked.describe(), where_it_lives(config)]:
            print(f"mstack: {line}", file=sys.stderr)
    _exec(path, config.argv)


def settle_home(config: RunConfig, is_nested: bool) -> RunConfig:
    """Decide where the command lives (core/home.py). Unless nested (an outer supervisor
    serves us), the mapping becomes the one seen from there, and the namespace we started
    in a stack of its own, which the supervisor holds."""
    opened = {o.stack: o for o in config.stacks}
    home = home_of(config.mapping, lambda stack: stack in opened and _may_enter(
        opened[stack].fd), config.keep_namespace)
    if home is None:
        return config
    if is_nested:
        return dataclasses.replace(config, home=home)
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    ino = os.fstat(fd).st_ino
    start = Stack(StackKind.NETNS, "native", f"netns:[{ino}]")
    return dataclasses.replace(
        config, mapping=relative(config.mapping, home, start), home=home, start=start,
        stacks=(*config.stacks, OpenStack(start, fd, ino)))


def where_it_lives(config: RunConfig) -> str:
    """``-v``'s line on the command's network namespace."""
    if config.home is not None:
        return (f"lives in {config.home.name}: its families there are the kernel's own; "
                "native ones are redirected to where mstack started")
    inet = config.mapping.stack_of(AF_INET)
    if inet.kind is not StackKind.NETNS:
        return "lives where mstack started (ipv4 is not on a namespace stack)"
    why = "--keep-namespace" if config.keep_namespace else "mstack may not enter it"
    return f"lives where mstack started; ipv4 redirected to {inet.name} ({why})"


def _may_enter(fd: int) -> bool:
    """Whether this process may setns(2) into namespace ``fd``: tried by a child process
    that exits at once (a thread would do, but creating one makes glibc take over signal
    dispositions COMMAND would otherwise inherit)."""
    _flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            netns.setns(fd)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def carry_out(p: LaunchPlan, config: RunConfig) -> None:
    """Everything before the exec, in order. The supervisor is forked before we enter the
    home stack (it stays where mstack started); the filter is installed after (a lock
    refuses setns)."""
    channel = _start_supervisor(config) if p.supervised or p.watcher else None
    if config.home is not None:
        home = next(o for o in config.stacks if o.stack == config.home)
        netns.setns(home.fd)
    if p.nested:
        nested.set_defaults(config.mapping, config.chosen, config.home)
    if p.no_new_privs:
        prctl.set_no_new_privs()
    if p.supervised:
        assert p.filter is not None and channel is not None
        handshake.offer(channel, _install_with_listener(p.filter))
        handshake.await_ready(channel)
        return
    if channel is not None:  # a watcher: nothing to supervise, but -v wants the table
        handshake.offer(channel, None)
        handshake.await_ready(channel)
    if p.filter is not None:
        _install(p.filter, 0)


def _start_supervisor(config: RunConfig) -> socket.socket:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    root_pid = os.getpid()  # the command's pid, once we exec
    _flush()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            os.setsid()
            if os.fork() == 0:
                _supervisor_process(theirs, config, root_pid)
        finally:
            os._exit(0)
    theirs.close()
    os.waitpid(pid, 0)
    return ours


def _install_error(e: SyscallError) -> MstackError:
    if e.errno == errno.EBUSY:
        return MstackError("another seccomp listener is already installed above this process",
                           hint="a nested mstack reaches its outer supervisor through msocket")
    return MstackError(f"cannot install the seccomp filter: {e}")


def _install(program: Sequence[Instruction], flags: int) -> int:
    try:
        return seccomp.install_filter(list(program), flags)
    except SyscallError as e:
        raise _install_error(e) from None


def _install_with_listener(program: Sequence[Instruction]) -> int:
    """Install ``program`` with a listener (waiting killably where the kernel can)."""
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER
    try:
        return seccomp.install_filter(list(program),
                                      flags | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
    except SyscallError as e:
        if e.errno != errno.EINVAL:  # EINVAL: a kernel before 5.19, without the flag
            raise _install_error(e) from None
        return _install(program, flags)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None when mstack was started with that fd closed
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


def _exec(path: str, argv: Sequence[str]) -> NoReturn:
    _flush()
    # Python ignores SIGPIPE and SIGXFSZ at start-up; the command must not inherit that.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execv(path, list(argv))
    except OSError as e:
        if e.errno == errno.ENOEXEC:  # a script without #!: run it as execvp(3) would
            with contextlib.suppress(OSError):
                os.execv("/bin/sh", ["/bin/sh", path, *argv[1:]])
        cls = CommandNotFound if e.errno == errno.ENOENT else CommandNotExecutable
        raise cls(f"{argv[0]}: {e.strerror}") from None


def _supervisor_process(channel: socket.socket, config: RunConfig, root_pid: int) -> NoReturn:
    """Body of the supervisor (grandchild); never returns."""
    from mstack_bpf.supervisor import visitor
    from mstack_bpf.supervisor.main import serve_forever

    prctl.set_name("mstack-sv")
    # Not dumpable: /proc/PID of the supervisor is root's, so a target of the same uid can
    # neither write its memory (/proc/PID/mem, which no filter can see) nor reach its fds.
    prctl.set_dumpable(False)
    # Never the OOM killer's pick: the children that make sockets in callers' cgroups share
    # our memory, and it would kill us with them (supervisor/visitor.py). Rootless: they fork.
    visitor.shield()
    for sig in _SUPERVISOR_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    try:
        serve_forever(channel, config, root_pid)
    finally:
        os._exit(0)
