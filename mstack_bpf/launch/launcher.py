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
from dataclasses import dataclass, field
from typing import NoReturn

from mstack_bpf.core.errors import CommandNotExecutable, CommandNotFound, MstackError, Unsupported
from mstack_bpf.core.families import ALL_FAMILIES
from mstack_bpf.core.model import Mapping
from mstack_bpf.launch import nested
from mstack_bpf.linux import prctl, seccomp
from mstack_bpf.linux._ffi import SyscallError
from mstack_bpf.seccomp.filter import FilterSpec, compile_filter
from mstack_bpf.seccomp.program import (
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    SECCOMP_RET_USER_NOTIF,
    Instruction,
)
from mstack_bpf.stacks.resolve import OpenStack, open_stack

_SUPERVISOR_IGNORES = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGHUP,
                       signal.SIGTTOU, signal.SIGTTIN, signal.SIGPIPE)


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``mstack`` run needs, validated before anything forks."""

    mapping: Mapping
    argv: tuple[str, ...]
    verbose: int = 0
    no_new_privs: bool = False
    stacks: tuple[OpenStack, ...] = field(default=(), compare=False)
    #: the families this mstack was asked to set (a nested mstack changes only those)
    chosen: frozenset[int] = ALL_FAMILIES
    #: meet a caller that makes sockets back to back on the supervisor's CPU (colocate.py)
    colocate: bool = True


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
    seccomp.check_notif_sizes()


def run(config: RunConfig) -> NoReturn:
    """Set up and execve ``config.argv``; raises :class:`MstackError` if that cannot be done."""
    path = find_command(config.argv[0])
    check_kernel()
    if nested.outer_supervisor():
        # The kernel refuses a second listener (EBUSY): the outer supervisor takes our table.
        nested.set_defaults(config.mapping, config.chosen)
        if config.mapping.locked:
            _lock_below(config)
        _exec(path, config.argv)
    spec = FilterSpec.from_mapping(config.mapping)
    if config.verbose:
        spec = dataclasses.replace(spec, hold_exit=True)
    program = compile_filter(spec)
    if config.no_new_privs or os.geteuid() != 0:
        prctl.set_no_new_privs()  # the kernel requires it without CAP_SYS_ADMIN
    if spec.supervised:
        channel = _start_supervisor(config)
        _install_and_hand_over(program, channel)
    else:
        if config.verbose:  # nothing to supervise, but -v wants the socket table
            _await_ready(_start_supervisor(config), send=b"W")
        _install(program, 0)
    _exec(path, config.argv)


def _lock_below(config: RunConfig) -> None:
    if config.no_new_privs or os.geteuid() != 0:
        prctl.set_no_new_privs()
    _install(compile_filter(FilterSpec.nested_lock(config.mapping, config.chosen)), 0)


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


def _install(program: list[Instruction], flags: int) -> int:
    try:
        return seccomp.install_filter(program, flags)
    except SyscallError as e:
        raise _install_error(e) from None


def _install_and_hand_over(program: list[Instruction], channel: socket.socket) -> None:
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER
    try:
        listener = seccomp.install_filter(
            program, flags | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
    except SyscallError as e:
        if e.errno != errno.EINVAL:  # EINVAL: a kernel before 5.19, without the flag
            raise _install_error(e) from None
        listener = _install(program, flags)
    try:
        socket.send_fds(channel, [b"L"], [listener])
    finally:
        os.close(listener)  # the target never holds the listener
    _await_ready(channel)


def _await_ready(channel: socket.socket, send: bytes | None = None) -> None:
    if send is not None:
        channel.send(send)
    answer = channel.recv(4096)
    channel.close()
    if answer != b"R":
        raise Unsupported(answer[1:].decode(errors="replace") or "the supervisor did not start")


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
    from mstack_bpf.supervisor.main import serve_forever

    prctl.set_name("mstack-sv")
    # Not dumpable: /proc/PID of the supervisor is root's, so a target of the same uid can
    # neither write its memory (/proc/PID/mem, which no filter can see) nor reach its fds.
    prctl.set_dumpable(False)
    for sig in _SUPERVISOR_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    try:
        serve_forever(channel, config, root_pid)
    finally:
        os._exit(0)
