"""The supervisor loop: receive → still valid? → decide → inject or reply.

It does no policy work itself (:mod:`mstack_bpf.decide` does) and fails closed: an exception
while handling a call becomes an errno reply, never a CONTINUE. It serves until every task
under the filter has gone (the listener then reports POLLHUP), see seccomp_unotify(2).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import struct
from collections.abc import Callable

from mstack_bpf.calls import SOCK_CLOEXEC, decode, decode_socketcall
from mstack_bpf.decide import Continue, Create, Decision, Fail, Msocket, ReadSocketcall, decide
from mstack_bpf.factory import StackSockets, open_task_netns
from mstack_bpf.families import family_name
from mstack_bpf.linux import procmem
from mstack_bpf.linux._ffi import SyscallError
from mstack_bpf.linux.seccomp import Listener
from mstack_bpf.model import Mapping, StackKind
from mstack_bpf.resolve import OpenStack

log = logging.getLogger("mstack.supervisor")

_GONE = (errno.ENOENT, errno.ESRCH)


class Supervisor:
    def __init__(self, listener: Listener, table: Mapping, stacks: dict[str, OpenStack],
                 sockets: StackSockets) -> None:
        self.listener = listener
        self.table = table
        self.stacks = stacks  # by stack name
        self.sockets = sockets
        #: called with (tid, call, decision, result) after each call, for -vv and counters
        self.observers: list[Callable[[int, object, Decision, int], None]] = []

    def serve(self, extra: dict[int, Callable[[], None]] | None = None) -> None:
        """Serve until the listener hangs up; ``extra`` maps other fds to poll to handlers."""
        extra = dict(extra or {})
        poller = select.poll()
        poller.register(self.listener.fd, select.POLLIN)
        for fd in extra:
            poller.register(fd, select.POLLIN)
        while True:
            for fd, events in poller.poll():
                if fd != self.listener.fd:
                    extra[fd]()
                    poller.unregister(fd)
                elif events & select.POLLIN:
                    self.handle_one()
                elif events & (select.POLLHUP | select.POLLERR):
                    return

    def handle_one(self) -> None:
        try:
            notif = self.listener.recv()
        except SyscallError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):  # target gone before we looked
                return
            raise
        nid, tid, data = notif.id, notif.pid, notif.data
        call = decode(data.arch, data.nr, tuple(data.args))
        try:
            decision = decide(call, self.table)
            result = self._carry_out(nid, tid, decision)
        except Exception as e:  # fail closed: never CONTINUE on a surprise
            log.exception("tid %d: %s failed", tid, call)
            result = -(e.errno if isinstance(e, OSError) and e.errno else errno.EIO)
            self._reply(nid, error=result)
            decision = Fail(-result)
        for observer in self.observers:
            observer(tid, call, decision, result)

    def _carry_out(self, nid: int, tid: int, decision: Decision) -> int:
        match decision:
            case Continue():
                self._reply(nid, cont=True)
                return 0
            case Fail(errno=code):
                self._reply(nid, error=-code)
                return -code
            case Create():
                return self._create(nid, tid, decision)
            case ReadSocketcall(call=sub, argp=argp):
                words = struct.unpack("=3I", procmem.read(tid, argp, 12))
                inner = decode_socketcall(sub, words)
                if not self.listener.id_valid(nid):
                    return -errno.ENOENT
                return self._carry_out(nid, tid, decide(inner, self.table))
            case Msocket():
                self._reply(nid, error=-errno.ENOSYS)
                return -errno.ENOSYS
        raise AssertionError(decision)

    def _create(self, nid: int, tid: int, d: Create) -> int:
        try:
            target = self.sockets.target_creds(tid)
        except OSError as e:
            if e.errno in _GONE:
                return -errno.ENOENT
            raise
        # /proc was read by pid: make sure that pid is still the caller we were asked about.
        if not self.listener.id_valid(nid):
            return -errno.ENOENT
        if d.stack.kind is StackKind.NATIVE:
            ns_fd, ns_ino = open_task_netns(tid)
        else:
            opened = self.stacks[d.stack.name]
            ns_fd, ns_ino = opened.fd, opened.ino
        try:
            fd = self.sockets.make(ns_fd, ns_ino, d.family, d.type, d.protocol, target)
        except OSError as e:
            code = e.errno or errno.EIO
            self._reply(nid, error=-code)
            return -code
        finally:
            if d.stack.kind is StackKind.NATIVE:
                os.close(ns_fd)
        try:
            return self.listener.addfd(nid, fd, cloexec=bool(d.type & SOCK_CLOEXEC))
        except SyscallError as e:
            if e.errno == errno.ENOENT:  # the target died or was interrupted meanwhile
                return -errno.ENOENT
            self._reply(nid, error=-(e.errno or errno.EIO))  # e.g. EMFILE in the target
            return -(e.errno or errno.EIO)
        finally:
            os.close(fd)

    def _reply(self, nid: int, error: int = 0, cont: bool = False) -> None:
        try:
            self.listener.send(nid, error=error, cont=cont)
        except SyscallError as e:
            if e.errno != errno.ENOENT:
                raise


def describe(tid: int, call: object, decision: Decision, result: int) -> str:
    """One line for ``-vv``."""
    family = getattr(call, "family", None)
    fam = family_name(family) if isinstance(family, int) else "-"
    what = type(call).__name__.removesuffix("Call").lower()
    if isinstance(decision, Create):
        where = decision.stack.name
    else:
        where = type(decision).__name__.lower()
    outcome = f"fd {result}" if result >= 0 else errno.errorcode.get(-result, str(result))
    return f"tid {tid} {what} {fam} -> {where}: {outcome}"
