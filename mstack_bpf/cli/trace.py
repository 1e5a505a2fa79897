"""``mstack-trace``: trace socket calls and the stack (network namespace) each socket used.

The only place where tracing errors become messages and exit codes: 0 ok, 2 usage,
125 failure (eBPF unavailable included); with COMMAND, COMMAND's own status.

Where the events go, as strace(1) does it: ``-o FILE``; else stderr when tracing a
COMMAND (whose own stdout stays its own: ``mstack-trace -- CMD | grep`` filters CMD's
output), and stdout when tracing a PID or the whole machine (a filter's input).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TextIO

import click

from mstack_bpf.cli.common import run as run_cli
from mstack_bpf.core.errors import EXIT_FAILED
from mstack_bpf.trace.events import Event
from mstack_bpf.trace.names import StackNames
from mstack_bpf.trace.summary import (
    EVENT_HEADER,
    event_record,
    format_event,
    format_table,
    summarize,
)
from mstack_bpf.trace.tracer import Tracer, running_mstack

#: Events are delivered in batches; this bounds how late a line can appear.
POLL_MS = 100

EXAMPLES = """\b
Examples:
    mstack-trace                   # every socket call on the machine
    mstack-trace -p 181            # PID 181 and its descendants
    mstack-trace -- curl -s URL    # run COMMAND, trace its tree, exit with its status
    mstack-trace --json -p 181     # one JSON object per line
    mstack-trace -s -- make check  # also print a per-family table at the end
    mstack-trace --json -o t.json -- curl -s URL     # events to t.json, curl's output to stdout
    mstack-trace --json -o /dev/fd/3 -- CMD 3>&1 >&2 | jq .call   # events through jq
"""


@dataclass(frozen=True)
class Options:
    pid: int | None
    as_json: bool
    summary: bool
    command: tuple[str, ...]
    #: also mstack's own calls (its launcher, supervisor and helpers)
    show_mstack: bool = False


class _Stop:
    """Set by SIGINT/SIGTERM; the main loop checks it after every poll."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


class _Output:
    """Events (and the -s table) to ``stream``."""

    def __init__(self, opts: Options, stream: TextIO) -> None:
        self.opts = opts
        self.stream = stream
        self.names = StackNames()
        self.wall_offset_ns = time.time_ns() - time.monotonic_ns()
        self.events: list[Event] = []

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")

    def header(self) -> None:
        if not self.opts.as_json:
            self._line(EVENT_HEADER)
            self.stream.flush()

    def emit(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.mstack and not self.opts.show_mstack:
                continue
            if self.opts.summary:
                self.events.append(event)
            if self.opts.as_json:
                record = event_record(event, self.names, self.wall_offset_ns)
                self._line(json.dumps(record, separators=(",", ":")))
            else:
                own = "  [mstack]" if event.mstack else ""
                self._line(format_event(event, self.names, self.wall_offset_ns) + own)
        self.stream.flush()

    def finish(self, dropped: int) -> None:
        if self.opts.summary:
            self._line(format_table(summarize(self.events, self.names)))
            self.stream.flush()
        if dropped:
            print(f"mstack-trace: {dropped} events lost (ring buffer full)", file=sys.stderr)


def _trace_pid(opts: Options, out: _Output) -> int:
    stop = _Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with Tracer(opts.pid, own_pids=running_mstack()) as tracer:
        out.header()
        while not stop.requested:
            out.emit(tracer.poll(POLL_MS))
        out.emit(tracer.drain())
        out.finish(tracer.dropped())
    return 0


def _spawn_waiting(command: Sequence[str]) -> tuple[int, int, int]:
    """Fork a child that execs ``command`` once a byte is written to the returned go fd.

    Returns (pid, go_fd, err_fd); err_fd yields the exec errno (4 bytes) or EOF on exec.
    """
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: wait until the tracer follows this pid, then exec
        try:
            os.close(go_w)
            os.close(err_r)
            if os.read(go_r, 1) == b"g":
                os.close(go_r)
                os.execvp(command[0], list(command))
            os._exit(EXIT_FAILED)
        except OSError as exc:
            os.write(err_w, (exc.errno or 0).to_bytes(4, "little"))
        finally:
            os._exit(127)
    os.close(go_r)
    os.close(err_w)
    return pid, go_w, err_r


def _trace_command(opts: Options, out: _Output) -> int:
    pid, go, err = _spawn_waiting(opts.command)
    try:
        tracer = Tracer(pid)
    except BaseException:
        os.close(go)  # the child reads EOF and exits without exec'ing
        os.waitpid(pid, 0)
        raise
    with tracer:
        os.write(go, b"g")
        os.close(go)
        failed = os.read(err, 4)
        os.close(err)
        if failed:
            os.waitpid(pid, 0)
            code = int.from_bytes(failed, "little")
            click.echo(f"mstack-trace: {opts.command[0]}: {os.strerror(code)}", err=True)
            return 127 if code == 2 else 126
        # Ctrl-C reaches COMMAND from the terminal; the trace ends when COMMAND does.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signum))
        pidfd = os.pidfd_open(pid)
        out.header()
        poller = select.poll()
        poller.register(tracer.fileno(), select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        while True:
            try:
                ready = {fd for fd, _ in poller.poll(POLL_MS)}
            except InterruptedError:
                continue
            out.emit(tracer.poll(0))
            if pidfd in ready:
                break
        # Every event of COMMAND was queued before it exited: drain, then report.
        out.emit(tracer.drain())
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        out.finish(tracer.dropped())
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "allow_interspersed_args": False},
    epilog=EXAMPLES,
)
@click.option("-p", "--pid", type=click.IntRange(min=1), help="Trace PID and its descendants.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line.")
@click.option("-s", "--summary", is_flag=True, help="At the end, a per-family table too.")
@click.option("-o", "--output", "output", metavar="FILE",
              help="Write the events to FILE (default: stderr with COMMAND, else stdout).")
@click.option("--show-mstack", is_flag=True,
              help="Also show mstack's own calls (its launcher, supervisor and helpers).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def cli(pid: int | None, as_json: bool, summary: bool, output: str | None, show_mstack: bool,
        command: tuple[str, ...]) -> None:
    """Trace socket, socketpair, accept, accept4 and msocket calls, and show the stack
    (network namespace) each new socket lives in.

    Traces every process, or PID and its descendants, or COMMAND (run by mstack-trace)
    and its descendants. STACK is "native" for mstack-trace's own network namespace, the
    "ip netns" name of a namespace under /run/netns, else netns:[INODE]. mstack's own
    calls are left out. Events go to FILE, else to stderr when tracing COMMAND (as strace
    does: COMMAND's stdout stays its own), else to stdout. Needs root.
    """
    if pid is not None and command:
        raise click.UsageError("-p and COMMAND exclude each other")
    opts = Options(pid, as_json, summary, command, show_mstack)
    try:
        stream = _open_output(output, bool(command))
    except OSError as exc:
        click.echo(f"mstack-trace: cannot write {output}: {exc.strerror}", err=True)
        sys.exit(EXIT_FAILED)
    out = _Output(opts, stream)
    try:
        code = _trace_command(opts, out) if command else _trace_pid(opts, out)
    except BrokenPipeError:
        # The reader (head, less) went away: stop quietly, as a filter should.
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        code = 0
    except OSError as exc:
        click.echo(f"mstack-trace: {exc}", err=True)
        code = EXIT_FAILED
    sys.exit(code)


def _open_output(path: str | None, command: bool) -> TextIO:
    """Where events go: FILE (close-on-exec: COMMAND does not inherit it), or the default."""
    if path is None:
        return sys.stderr if command else sys.stdout
    return open(path, "w", encoding="utf-8")  # noqa: SIM115 - open until the process exits


def main() -> None:
    """Entry point of ``mstack-trace``."""
    run_cli(cli, "mstack-trace")
