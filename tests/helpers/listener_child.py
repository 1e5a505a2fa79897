"""A forked child under a socket()-only notification filter whose listener the test holds:
the test answers the child's socket() call itself. The child reports the fd it got, that
fd's inode, its close-on-exec flag (or the errno) and its affinity right after the call.

The kernel tests get one from the ``caller`` fixture (tests/kernel/conftest.py)."""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mstack_bpf.linux import prctl
from mstack_bpf.linux.seccomp import Action, Listener, install_filter
from mstack_bpf.seccomp.program import (
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    Instruction,
)
from tests.conftest import cpus_allowed

NR_socket = 41
# socket() goes to the listener, everything else runs
PROGRAM = [
    Instruction(0x20, 0, 0, 0),  # ld [nr]
    Instruction(0x15, 0, 1, NR_socket),  # jeq socket
    Instruction(0x06, 0, 0, Action.USER_NOTIF),
    Instruction(0x06, 0, 0, Action.ALLOW),
]


@dataclass
class Caller:
    pid: int
    listener: Listener
    reports: socket.socket
    reaped: bool = False

    def receive(self) -> tuple[int, int]:
        """Wait for the child's socket() call: (notification id, tid)."""
        assert select.select([self.listener.fd], [], [], 10)[0], "no call came"
        notif = self.listener.recv()
        return notif.id, notif.pid

    def report(self) -> dict[str, object]:
        assert select.select([self.reports], [], [], 10)[0], "no report came"
        result: dict[str, object] = json.loads(self.reports.recv(4096))
        return result

    def kill(self) -> None:
        """SIGKILL the child and reap it: its pending call is then gone."""
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.reaped = True


def _child(channel: socket.socket, cpus: list[int] | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    prctl.set_no_new_privs()
    fd = install_filter(PROGRAM, SECCOMP_FILTER_FLAG_NEW_LISTENER
                        | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
    channel.sendmsg([b"l"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    os.close(fd)
    report: dict[str, object]
    try:
        got = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        report = {"fd": got.fileno(), "inode": os.fstat(got.fileno()).st_ino,
                  "cloexec": not os.get_inheritable(got.fileno())}
    except OSError as e:
        report = {"errno": e.errno}
    report["after"] = cpus_allowed(0)
    channel.send(json.dumps(report).encode())


@contextmanager
def started_caller(cpus: list[int] | None) -> Iterator[Caller]:
    """A child (with affinity ``cpus``, or ours) waiting in its socket() call on us; when
    done, its listener is closed (the pending call fails) and the child reaped."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            _child(theirs, cpus)
        finally:
            os._exit(0)
    theirs.close()
    try:
        _, fds, _, _ = ours.recvmsg(1, socket.CMSG_SPACE(struct.calcsize("i")))
        listener_fd = struct.unpack("i", fds[0][2][:4])[0]
    except BaseException:  # the child failed before it passed its listener
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        ours.close()
        raise
    child = Caller(pid, Listener(listener_fd), ours)
    try:
        yield child
    finally:
        os.close(listener_fd)  # a pending call fails: the child goes on and exits
        ours.close()
        if not child.reaped:
            os.waitpid(pid, 0)
