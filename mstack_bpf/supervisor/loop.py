"""The supervisor loop: receive → still valid? → decide → inject or reply.

It does no policy work itself (:mod:`mstack_bpf.core.decide` does) and fails closed: an exception
while handling a call becomes an errno reply, never a CONTINUE. It serves until every task
under the filter has gone (the listener then reports POLLHUP), see seccomp_unotify(2).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mstack_bpf.core.abi import MARKER_FD, SOCK_CLOEXEC
from mstack_bpf.core.calls import (
    Call,
    ExitGroupCall,
    SocketCall,
    SocketPairCall,
    decode,
    decode_socketcall,
    socketcall_words,
)
from mstack_bpf.core.decide import (
    Continue,
    Create,
    CreatePair,
    Decision,
    Fail,
    InterfaceIoctl,
    Msocket,
    ReadSocketcall,
    SetDefault,
    decide,
    decide_msocket,
)
from mstack_bpf.core.families import ALL_FAMILIES, family_name
from mstack_bpf.core.model import Mapping, Stack, StackKind
from mstack_bpf.linux import creds, procmem
from mstack_bpf.linux import pidfd as pidfd_mod
from mstack_bpf.linux.creds import FsIds
from mstack_bpf.linux.ffi import SyscallError
from mstack_bpf.linux.seccomp import (
    NO_CALLER,
    Answers,
    Caller,
    Listener,
    SeccompData,
    SeccompNotif,
    Served,
)
from mstack_bpf.stacks.resolve import OpenStack
from mstack_bpf.supervisor import ifioctl
from mstack_bpf.supervisor.colocate import Colocator
from mstack_bpf.supervisor.factory import StackSockets, Target, open_task_netns
from mstack_bpf.supervisor.registry import Located, StackRegistry
from mstack_bpf.supervisor.slowlane import SlowLane
from mstack_bpf.supervisor.tables import Tables, TableUnknown

log = logging.getLogger("mstack.supervisor")

_GONE = (errno.ENOENT, errno.ESRCH)
_DECIDED_MAX = 1024  # remembered decisions (the keys are the caller's: bound them)
Outcome = Decision | SetDefault
Observer = Callable[[int, object, Outcome, int], None]


@dataclass(frozen=True)
class Later:
    """Work that may block on the caller (its memory, its paths): ``job`` runs in the slow
    lane, ``then`` gets its value back on the loop and says what comes next."""

    job: Callable[[], object]
    then: Callable[[Any], Step]


@dataclass(frozen=True)
class Reply:
    """What completes a call (``struct seccomp_notif_resp``): a value, an errno (negative),
    or CONTINUE. The loop sends it; handlers only return it."""

    val: int = 0
    error: int = 0
    cont: bool = False


@dataclass(frozen=True)
class Done:
    """A call carried out: the ``reply`` the loop sends (None: nothing to send — ADDFD
    with SEND completed it, or the caller has gone), and for the observers the outcome and
    the result the caller sees (an fd, a value, or a negative errno)."""

    outcome: Outcome
    result: int
    reply: Reply | None

    @staticmethod
    def failed(outcome: Outcome, code: int) -> Done:
        return Done(outcome, -code, Reply(error=-code))

    @staticmethod
    def value(outcome: Outcome, value: int) -> Done:
        return Done(outcome, value, Reply(val=value))

    @staticmethod
    def gone(outcome: Outcome) -> Done:
        return Done(outcome, -errno.ENOENT, None)


Step = Outcome | Later | Done


class Supervisor:
    def __init__(self, listener: Listener, tables: Tables, registry: StackRegistry,
                 sockets: StackSockets, colocate: bool = False,
                 home: OpenStack | None = None, refuse: int = 0) -> None:
        self.listener = listener
        #: an errno every call gets, for a tree whose mapping could not be decided
        #: (mstack-agent: a container that names what it may not): never a CONTINUE
        self.refuse = refuse
        #: the stack the command lives in (core/home.py)
        self.home = home
        self.tables = tables
        self.registry = registry
        self.sockets = sockets
        #: injects sockets; on the caller's CPU when ``colocate`` (needs synchronous wake-ups)
        self.injector = Colocator(listener, colocate)
        #: work that may block on one caller, off this loop
        self.slow = SlowLane()
        self._decided: dict[tuple[int, ...], tuple[Call, Decision]] = {}
        #: of those, the ones of the root table the C loop may answer itself
        self.answers = Answers()
        #: the caller whose sockets the C loop may make: the last one Python made one for,
        #: and a pidfd of it (-1: none)
        self._fast_tid, self._fast_pidfd = 0, -1
        #: called with (tid, call, decision, result) after each call, for -vvv
        self.observers: list[Observer] = []
        #: called with the caller's tid before its exit_group goes on (only sent under -v)
        self.before_exit: Callable[[int], None] | None = None

    def serve(self, extra: dict[int, Callable[[], bool]] | None = None,
              tick: Callable[[], None] | None = None, tick_ms: int = 100) -> None:
        """Serve until the listener hangs up. ``extra`` maps other fds to poll to handlers
        (a handler returning False is not polled again); ``tick`` runs when nothing came
        for ``tick_ms``.

        The waiting is done in C (:meth:`Listener.serve`), which also answers the calls whose
        answer is known from their registers alone (:attr:`answers`), without coming back
        here. It polls before each RECV: a blocking RECV returns once every task is gone
        only since Linux 6.11; before, the supervisor would wait there for good."""
        handlers = dict(extra or {})
        handlers[self.slow.fd] = self.slow.drain
        poller = select.poll()  # the other fds, once the C loop says one is ready
        for fd in handlers:
            poller.register(fd, select.POLLIN)
        while True:
            fast = self._fast()
            served, restore_err = self.listener.serve(
                tuple(handlers), tick_ms if tick else -1, self.answers.packed if fast else b"",
                self._caller() if fast else NO_CALLER)
            if restore_err:
                self.injector.restore_failed(self._fast_tid, restore_err)
            if served in (Served.NOTIFICATION, Served.BOTH):
                self._handle(self.listener.notif)
            elif served is Served.TIMED_OUT and tick:
                tick()
            elif served is Served.HUNG_UP:
                return
            others = served in (Served.OTHER_READY, Served.BOTH)
            for fd, _events in poller.poll(0) if others else ():
                if not _safely(handlers[fd]):
                    poller.unregister(fd)
                    del handlers[fd]
                    if not handlers:
                        tick = None

    def _fast(self) -> bool:
        """Whether a call's registers alone decide it: every process has the root table,
        and no observer wants to see each call."""
        return not self.observers and not self.tables.nested()

    def _caller(self) -> Caller:
        """Whose sockets the C loop may make itself, and how it injects them."""
        tid, injector = self._fast_tid, self.injector
        narrow = injector.narrowed_for(tid)
        if narrow is None:  # co-location would first pin us to meet this caller: Python's
            return NO_CALLER
        sockets = self.sockets
        return Caller(sockets.current_ns or 0, tid, self._fast_pidfd, sockets.privileged,
                      sockets.own.uids[3], sockets.own.gids[3], sockets.cgroups.home or 0,
                      *narrow)

    def _made_for(self, tid: int) -> None:
        """Python made a socket for ``tid``: the C loop may make its next ones."""
        if tid == self._fast_tid and (self._fast_pidfd < 0 or _alive(self._fast_pidfd)):
            return  # (a pidfd of a task gone names no other: the tid reused gets a new one)
        if self._fast_pidfd >= 0:
            os.close(self._fast_pidfd)
        self._fast_tid = tid
        try:
            self._fast_pidfd = pidfd_mod.open_thread(tid)
        except OSError:  # gone, or a kernel without PIDFD_THREAD (6.9): Python makes them
            self._fast_pidfd = -1

    def close(self) -> None:
        """Release what serving held (the listener first: calls still to come fail closed)
        once :meth:`serve` has returned; the command's supervisor simply exits instead."""
        os.close(self.listener.fd)
        if self._fast_pidfd >= 0:
            os.close(self._fast_pidfd)
        self.slow.close()
        self.tables.close()
        self.registry.close()
        self.sockets.close()

    def handle_one(self) -> bool:
        """Receive and answer one call; False if there was none to receive."""
        try:
            notif = self.listener.recv()
        except SyscallError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):  # target gone before we looked
                return False
            raise
        self._handle(notif)
        return True

    def _handle(self, notif: SeccompNotif) -> None:
        nid, tid = notif.id, notif.pid
        call, decision = self._decide(tid, notif.data)
        if isinstance(call, ExitGroupCall) and self.before_exit is not None:
            _safely(self.before_exit, tid)
        self._drive(nid, tid, call, lambda: self._final(nid, tid, decision))

    def _drive(self, nid: int, tid: int, call: Call, step: Callable[[], Step]) -> None:
        """Carry a call on from ``step`` until it is done, or handed to the slow lane (which
        brings it back here when its work is over)."""
        try:
            result = step()
            while not isinstance(result, Done):
                if isinstance(result, Later):
                    self.slow.submit(result.job,
                                     functools.partial(self._resume, nid, tid, call, result.then),
                                     owner=_process_of(tid))
                    return
                result = self._carry_out(nid, tid, result)
        except Exception as e:  # fail closed: never CONTINUE on a surprise
            code = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
            if not isinstance(e, OSError):
                log.error("tid %d: %s failed", tid, call, exc_info=e)
            result = Done.failed(Fail(code), code)
        if result.reply is not None:
            self._send(nid, result.reply)
        for observer in self.observers:
            observer(tid, call, result.outcome, result.result)

    def _resume(self, nid: int, tid: int, call: Call, then: Callable[[Any], Step],
                value: object) -> None:
        def step() -> Step:
            if isinstance(value, Exception):
                raise value
            if isinstance(value, BaseException):
                raise OSError(errno.EIO, f"slow lane: {value!r}")
            return then(value)
        self._drive(nid, tid, call, step)

    def _decide(self, tid: int, data: SeccompData) -> tuple[Call, Decision]:
        """decode + decide. The answer to a socket call read from registers depends only on
        them and the caller's table, so it is remembered per table (tables live as long as
        the supervisor: their ids stay theirs)."""
        if self.refuse:
            return decode(data.arch, data.nr, tuple(data.args)), Fail(self.refuse)
        try:
            table = self.tables.table_for(tid)
        except TableUnknown:
            call = decode(data.arch, data.nr, tuple(data.args))
            return call, self._decide_blind(call)
        args = data.args
        key = (id(table), data.arch, data.nr, args[0], args[1], args[2])
        known = self._decided.get(key)
        if known is None:
            call = decode(data.arch, data.nr, tuple(args))
            known = call, decide(call, table)
            if isinstance(call, SocketCall | SocketPairCall) and not call.from_memory and not (
                    isinstance(known[1], CreatePair)):  # its answer goes to the caller's memory
                if len(self._decided) >= _DECIDED_MAX:
                    self._decided.clear()
                self._decided[key] = known
            else:
                return known
        if table is self.tables.root:  # also when met again: the C loop keeps the newest few
            self._answer(data, known[1])
        return known

    def _answer(self, data: SeccompData, decision: Decision) -> None:
        """Hand a decision of the root table to the C loop, where it may carry it out."""
        regs = data.arch, data.nr, (data.args[0], data.args[1], data.args[2])
        if isinstance(decision, Continue):
            self.answers.cont(*regs)
        elif isinstance(decision, Fail):
            self.answers.fail(*regs, decision.errno)
        elif (isinstance(decision, Create) and decision.stack.kind is not StackKind.NATIVE
              and not self.sockets.switches(decision.family, decision.type,
                                            decision.protocol)):
            ns = self.registry.get(decision.stack).ino  # the table's stacks are all open
            self.answers.create(*regs, ns, (decision.family, decision.type, decision.protocol))

    def _decide_blind(self, call: Call) -> Decision:
        """The decision for a caller whose table cannot be read: what every table of the
        tree decides alike, else EACCES (never a table the caller may not have)."""
        decisions = {decide(call, table) for table in self.tables.candidates()}
        return decisions.pop() if len(decisions) == 1 else Fail(errno.EACCES)

    def _final(self, nid: int, tid: int, decision: Outcome) -> Outcome | Later:
        """Follow a decision that needs the target's memory to the decision proper."""
        if isinstance(decision, ReadSocketcall):
            size = 4 * socketcall_words(decision.call)
            return Later(lambda: procmem.read(tid, decision.argp, size),
                         lambda block: self._socketcall(nid, tid, decision.call, block))
        if isinstance(decision, Msocket):
            call = decision.call
            if not call.path_ptr:
                return decide_msocket(call, self.tables.table_for(tid), None)
            ids = self.registry.opening_ids(tid, self.sockets)
            return Later(lambda: self._locate(nid, tid, call.path_ptr, ids),
                         lambda found: decide_msocket(call, self.tables.table_for(tid),
                                                      self.registry.admit(
                                                          found, tid, self._valid(nid))))
        return decision

    def _socketcall(self, nid: int, tid: int, sub: int, block: bytes) -> Outcome:
        count = socketcall_words(sub)
        if len(block) != 4 * count:
            raise OSError(errno.EFAULT, "socketcall arguments")
        if not self.listener.id_valid(nid):
            raise OSError(errno.ENOENT, "caller gone")
        call = decode_socketcall(sub, struct.unpack(f"={count}I", block))
        try:
            return decide(call, self.tables.table_for(tid))
        except TableUnknown:
            return self._decide_blind(call)

    def _locate(self, nid: int, tid: int, path_ptr: int,
                ids: FsIds | None) -> Stack | Located:
        """(slow lane) Read msocket's path once and find what it names, only if the caller
        is still there."""
        raw = procmem.read_string(tid, path_ptr)
        if not self.listener.id_valid(nid):
            raise OSError(errno.ENOENT, "caller gone")
        return StackRegistry.locate(raw, tid, ids)

    def _valid(self, nid: int) -> Callable[[], bool]:
        return lambda: self.listener.id_valid(nid)

    def _carry_out(self, nid: int, tid: int, decision: Outcome) -> Done | Later:
        match decision:
            case Continue():
                return Done(decision, 0, Reply(cont=True))
            case Fail(errno=code):
                return Done.failed(decision, code)
            case Create():
                return self._create(nid, tid, decision)
            case CreatePair():
                return self._create_pair(nid, tid, decision)
            case SetDefault():
                return self._set_default(nid, tid, decision)
            case InterfaceIoctl():
                return self._interface_ioctl(nid, tid, decision)
        raise AssertionError(decision)

    def _interface_ioctl(self, nid: int, tid: int, d: InterfaceIoctl) -> Later:
        # What the descriptor is may take asking its filesystem: the slow lane finds out.
        return Later(lambda: ifioctl.socket_family(tid, d.call.fd),
                     lambda family: self._ioctl_on(nid, tid, d, family))

    def _ioctl_on(self, nid: int, tid: int, d: InterfaceIoctl, family: int) -> Done | Later:
        rights, reopened = self.sockets.caller_rights(tid)
        if reopened and not self.listener.id_valid(nid):
            return Done.gone(d)  # the credentials read may be another task's
        ns_fd, ns_ino, temporary = self._namespace(tid, d.stack)
        try:
            sock = self.sockets.ioctl_socket(ns_fd, ns_ino, ifioctl.carrier_family(family))
        finally:
            if temporary:
                os.close(ns_fd)
        memory = self._pin(nid, tid)
        if memory is None:
            return Done.gone(d)
        # Copying in and out of the caller's memory may wait on it: the slow lane does it,
        # and the request itself (the worker thread takes the caller's credentials).
        return Later(_closing(memory, lambda: ifioctl.answer(
                         tid, sock, d.call.request, d.call.argp, memory, rights, d.call.compat)),
                     lambda value: Done.value(d, value))

    def _pin(self, nid: int, tid: int) -> procmem.Pinned | None:
        """The caller's address space to write an answer to, held before the caller is
        confirmed (None: it has gone): a later write cannot reach a process that got its
        pid since."""
        memory = procmem.Pinned(tid)
        if self.listener.id_valid(nid):
            return memory
        memory.close()
        return None

    def _set_default(self, nid: int, tid: int, d: SetDefault) -> Done:
        if self.tables.has_foreign_fd(tid):
            return Done.failed(d, errno.EBUSY)  # never close a descriptor of the target's
        table = self._pin_home(tid, self.tables.table_for(tid).with_families(d.families,
                                                                             d.stack))
        marker = self.tables.marker_for(table)
        try:
            self.listener.addfd(nid, marker, cloexec=False, newfd=MARKER_FD, send=False)
        except SyscallError as e:
            return Done.failed(d, errno.EMFILE if e.errno == errno.EBADF else (
                e.errno or errno.EIO))
        self.tables.carry(tid, table)
        return Done.value(d, 0)

    def _pin_home(self, tid: int, table: Mapping) -> Mapping:
        """A caller that left the home (a nested mstack entering a home of its own) keeps
        the families it did not move in the home: the home's families are the caller's own
        namespace, which would otherwise take them along."""
        if self.home is None or _lives_in(tid, self.home.ino):
            return table
        here = self.home.stack.path
        left = [f for f in ALL_FAMILIES
                if table.stack_of(f).kind is StackKind.NATIVE and table.stack_of(f).path == here]
        return table.with_families(left, self.home.stack) if left else table

    def _namespace(self, tid: int, stack: Stack) -> tuple[int, int, bool]:
        """fd and inode of the namespace to make a socket in; True if the fd is ours to close."""
        if stack.kind is StackKind.NATIVE:
            fd, ino = open_task_netns(tid)
            return fd, ino, True
        opened = self.registry.get(stack)
        return opened.fd, opened.ino, False

    def _create(self, nid: int, tid: int, d: Create) -> Done | Later:
        try:
            target = self.sockets.target(tid, d.family, d.type, d.protocol)
        except OSError as e:
            if e.errno in _GONE and not self.listener.id_valid(nid):
                return Done.gone(d)
            raise  # a caller still waiting gets the errno: never left unanswered
        ns_fd, ns_ino, temporary = self._namespace(tid, d.stack)
        # Whatever was just opened through /proc by tid must be the caller's: the tid may
        # have been reused since RECV. (A status file opened earlier that still reads comes
        # from the task that has held the tid all along.)
        if (target.reopened or temporary) and not (
                self.listener.id_valid(nid)):
            if temporary:
                os.close(ns_fd)
            return Done.gone(d)
        try:
            if self.sockets.elsewhere(target):  # a child in its cgroup makes it
                return self._visit(ns_fd, d, target, False,
                                   lambda fds: self._inject(nid, tid, d, fds[0]))
            fd = self.sockets.make(ns_fd, ns_ino, d.family, d.type, d.protocol, target)
        except OSError as e:
            return Done.failed(d, e.errno or errno.EIO)
        finally:
            if temporary:
                os.close(ns_fd)
        return self._inject(nid, tid, d, fd)

    def _inject(self, nid: int, tid: int, d: Create, fd: int) -> Done:
        """Install ``fd`` (ours to close) as the call's result."""
        # before the call completes: the caller then goes on, and the pidfd is kept for it
        self._made_for(tid)
        try:  # ADDFD with SEND installs the socket and completes the call: nothing to send
            installed = self.injector.inject(nid, tid, fd, cloexec=bool(d.type & SOCK_CLOEXEC))
            return Done(d, installed, None)
        except SyscallError as e:
            if e.errno == errno.ENOENT:  # the target died or was interrupted meanwhile
                return Done.gone(d)
            return Done.failed(d, e.errno or errno.EIO)  # e.g. EMFILE in the target
        finally:
            os.close(fd)

    def _visit(self, ns_fd: int, d: Create | CreatePair, target: Target, pair: bool,
               then: Callable[[list[int]], Done | Later]) -> Done | Later:
        """The socket(s) made in the caller's cgroup by a child; ``then`` gets them on the
        loop. A child that shares our memory and answers at once is waited for here; else
        (a fork, a cgroup that may be frozen, any failure) the slow lane tries again and
        reports. ``ns_fd`` stays the caller's."""
        made = self.sockets.visit_quickly(ns_fd, d.family, d.type, d.protocol, target, pair)
        if made is not None:
            return then(made)
        ours = os.dup(ns_fd)

        def job() -> list[int]:
            try:
                return self.sockets.visit(ours, d.family, d.type, d.protocol, target, pair)
            finally:
                os.close(ours)
        return Later(job, then)

    def _create_pair(self, nid: int, tid: int, d: CreatePair) -> Done | Later:
        """socketpair(2) in the stack: both ends installed in the caller (ADDFD), their
        numbers written to its ``int[2]``, then the call completed with 0."""
        target = self.sockets.target(tid, d.family, d.type, d.protocol)
        ns_fd, ns_ino, temporary = self._namespace(tid, d.stack)
        try:
            if not self.listener.id_valid(nid):
                return Done.gone(d)  # what was read through /proc may be another task's
            if self.sockets.elsewhere(target):  # a child in its cgroup makes it
                return self._visit(ns_fd, d, target, True,
                                   lambda fds: self._install_pair(nid, tid, d, fds))
            pair = self.sockets.make_pair(ns_fd, ns_ino, d.family, d.type, d.protocol, target)
        finally:
            if temporary:
                os.close(ns_fd)
        return self._install_pair(nid, tid, d, list(pair))

    def _install_pair(self, nid: int, tid: int, d: CreatePair, pair: list[int]) -> Done | Later:
        """Both ends (ours to close) installed, their numbers then written to the caller."""
        try:
            memory = self._pin(nid, tid)
            if memory is None:
                return Done.gone(d)
            try:
                # Both installed before the numbers are written: the kernel itself writes
                # them before installing, but we learn them only from ADDFD. A caller whose
                # int[2] is not writable gets EFAULT with both ends left open.
                cloexec = bool(d.type & SOCK_CLOEXEC)
                ends = struct.pack("=2i", *(self.listener.addfd(nid, fd, cloexec, send=False)
                                            for fd in pair))
            except BaseException:
                memory.close()
                raise
        finally:
            for fd in pair:
                os.close(fd)
        return Later(_closing(memory, lambda: memory.write(d.sv, ends)),
                     lambda _: Done.value(d, 0))

    def _send(self, nid: int, reply: Reply) -> None:
        """Complete call ``nid`` (a caller gone meanwhile needs no answer)."""
        try:
            self.listener.send(nid, val=reply.val, error=reply.error, cont=reply.cont)
        except SyscallError as e:
            if e.errno != errno.ENOENT:
                raise


def _alive(pidfd: int) -> bool:
    """Whether the task behind ``pidfd`` has not exited (signal 0 sends nothing)."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except OSError as e:
        return e.errno != errno.ESRCH  # EPERM: there, but not ours to signal
    return True


def _lives_in(tid: int, ino: int) -> bool:
    try:
        return os.stat(f"/proc/{tid}/ns/net").st_ino == ino
    except OSError:
        return False


def _process_of(tid: int) -> int:
    """The process (thread group) of thread ``tid``, which the slow lane bounds per caller."""
    try:
        return creds.thread_group(tid)
    except (OSError, ValueError):
        return tid


def _closing(memory: procmem.Pinned, job: Callable[[], object]) -> Callable[[], object]:
    """``job``, then ``memory`` closed whatever happened (in the slow lane)."""
    def run() -> object:
        try:
            return job()
        finally:
            memory.close()
    return run


def _safely(handler: Callable[..., object], *args: object) -> bool:
    """Run an optional side job (the -v report): its failure must not stop the serving.
    True unless the handler failed or returned False (not to be called again)."""
    try:
        return handler(*args) is not False
    except Exception:
        log.exception("supervisor: a reporting handler failed; going on without it")
        return False


def describe(tid: int, call: object, decision: Outcome, result: int) -> str:
    """One line for ``-vv``."""
    family = getattr(call, "family", None)
    fam = family_name(family) if isinstance(family, int) and family > 0 else "-"
    what = type(call).__name__.removesuffix("Call").lower()
    if isinstance(decision, Create | CreatePair | SetDefault):
        where = decision.stack.name
    else:
        where = type(decision).__name__.lower()
    if isinstance(decision, Continue):
        outcome = "the kernel's own"
    elif result < 0:
        outcome = errno.errorcode.get(-result, str(result))
    else:
        outcome = f"fd {result}" if isinstance(decision, Create) else str(result)
    return f"tid {tid} {what} {fam} -> {where}: {outcome}"
