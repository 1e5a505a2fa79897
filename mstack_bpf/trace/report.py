"""``mstack -v``: which stack every socket of the command's tree really used, seen by eBPF.

The tracer is loaded by the supervisor (or, when a lock leaves nothing to supervise, by a
small watcher) before the command is exec'd, and follows the command's process tree. When
the command's pid exits the table goes to stderr; with ``-vv`` every event also does, as it
happens. Without eBPF (not root, no BTF, libbpf missing, a refused program type) one line
says why the table is missing, and everything else runs as usual.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable

from mstack_bpf.core.families import ALL_FAMILIES
from mstack_bpf.core.model import Mapping
from mstack_bpf.stacks.resolve import OpenStack

TICK_MS = 100  # the tracer batches wake-ups: read it at least this often


class SocketReport:
    """The socket table of the tree of ``root_pid`` (the launcher, which execs COMMAND next:
    its own calls until then are mstack's, not the command's). ``native``: the inode of the
    namespace ``native`` names, if not this process's own (a nested mstack's watcher)."""

    def __init__(self, root_pid: int, mapping: Mapping, stacks: Iterable[OpenStack],
                 verbose: int, native: int | None = None) -> None:
        self.verbose = verbose
        self.root_pid = root_pid
        self.pidfd = os.pidfd_open(root_pid)
        self.events: list[object] = []
        self.reason: str | None = None
        self.tracer = None
        self.done = False
        self._header = verbose >= 2
        self._stacks = {s.ino: s.stack.name for s in stacks}
        # a call that made no socket is shown under the stack its family was mapped to: null,
        # or the stack whose kernel refused it (ICMP under its ping_group_range)
        self._family_stacks = {f: mapping.stack_of(f).name for f in ALL_FAMILIES}
        try:
            from mstack_bpf.trace.tracer import Tracer, TraceUnavailable
        except ImportError as e:  # pragma: no cover - tracing not installed
            self.reason = f"eBPF tracing is not installed ({e})"
            return
        try:
            self.tracer = Tracer(root_pid, wakeup_bytes=0 if verbose >= 2 else 4096,
                                 own_pids=(root_pid,))
        except (TraceUnavailable, OSError) as e:
            self.reason = str(e)
            return
        from mstack_bpf.trace.names import StackNames

        self._names = StackNames(extra=self._stacks, native=native)
        self._offset = time.time_ns() - time.monotonic_ns()

    def handlers(self) -> dict[int, Callable[[], bool]]:
        """fds to poll → handler (False: stop polling that fd)."""
        out: dict[int, Callable[[], bool]] = {self.pidfd: self.finish}
        if self.tracer is not None:
            out[self.tracer.fileno()] = self.read
        return out

    def read(self) -> bool:
        if self.tracer is None:
            return False
        from mstack_bpf.trace.summary import EVENT_HEADER, format_event

        for event in self.tracer.poll(0):
            if event.mstack:  # mstack's own work (a nested mstack's launcher), not the user's
                continue
            self.events.append(event)
            if self.verbose >= 2:
                if self._header:
                    _say(EVENT_HEADER)
                    self._header = False
                _say(format_event(event, self._names, self._offset))
        return True

    def finish(self) -> bool:
        """The command's pid exited: print the table, stop tracing, let go of stderr."""
        if self.done:
            return False
        self.done = True
        if self.tracer is None:
            _say(f"no socket table: {self.reason}")
        else:
            from mstack_bpf.trace.summary import format_table, summarize

            self.read()  # everything still queued (polled without waiting)
            self.tracer.close()
            self.tracer = None
            rows = summarize(self.events, self._names, self._family_stacks)  # type: ignore[arg-type]
            for line in format_table(rows).splitlines():
                _say(line)
        os.close(self.pidfd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # hold no terminal or pipe once the command is gone
        os.close(devnull)
        return False

    def before_exit(self, tid: int) -> None:
        """The command calls exit_group: print the table now, before its parent goes on."""
        if tid == self.root_pid:
            self.finish()

    def tick(self) -> None:
        if self.tracer is not None:
            self.read()


def _say(line: str) -> None:
    try:
        sys.stderr.write(f"mstack: {line}\n")
        sys.stderr.flush()
    except OSError:
        pass


def watch(report: SocketReport) -> None:
    """The watcher's loop when there is no supervisor: until the command exits."""
    import select

    poller = select.poll()
    handlers = report.handlers()
    for fd in handlers:
        poller.register(fd, select.POLLIN)
    while report.pidfd in handlers:
        ready = poller.poll(TICK_MS)
        if not ready:
            report.tick()
        for fd, _ in ready:
            if not handlers[fd]():
                poller.unregister(fd)
                del handlers[fd]
