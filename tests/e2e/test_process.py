"""The process model: exec in place, exit status, daemons, and the supervisor's life."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import (
    MSTACK,
    PROBE,
    PYTHON,
    Netns,
    Stepper,
    fd_links,
    gone,
    kill_all,
    mstack,
    needs_root,
    run,
    supervisors_of,
    wait_until,
)

pytestmark = needs_root

# Ctrl-C, Ctrl-\, Ctrl-Z, hang-up and background tty signals must not reach the supervisor.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGHUP,
                    signal.SIGTTOU, signal.SIGTTIN)


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat fields after the command name: [state, ppid, pgrp, session, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def ignored_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigIgn line")


def the_supervisor(target: Stepper) -> int:
    assert wait_until(lambda: len(target.supervisors()) == 1, timeout=5), target.supervisors()
    (pid,) = target.supervisors()
    return pid


def test_exec_keeps_the_shell_s_pid() -> None:
    cp = run(["bash", "-c", f'echo $$; exec {MSTACK} null bash -c "echo \\$\\$"'])
    assert cp.returncode == 0, cp.stderr
    outer, inner = cp.stdout.split()
    assert outer == inner


def test_command_runs_as_mstack_s_own_process(netns: Netns) -> None:
    proc = subprocess.Popen([MSTACK, netns.name, PYTHON, PROBE, "self"], stdout=subprocess.PIPE,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert json.loads(out)["pid"] == proc.pid


@pytest.mark.parametrize("status", [0, 1, 42, 125, 255])
def test_command_s_exit_status_is_mstack_s(netns: Netns, status: int) -> None:
    assert mstack(netns.name, "sh", "-c", f"exit {status}").returncode == status


DEFAULT_SIGNALS = ("env", "--default-signal")  # coreutils ≥ 8.31; execs in place


@pytest.mark.parametrize(("sig", "name"), [(signal.SIGTERM, "TERM"), (signal.SIGKILL, "KILL"),
                                           (signal.SIGINT, "INT")])
def test_signal_death_is_reported_like_a_shell_does(netns: Netns, sig: int, name: str) -> None:
    # A shell started with a signal ignored (make test run as a background job inherits
    # SIGINT ignored) cannot take it back: start from the default dispositions.
    inner = f'{MSTACK} {netns.name} sh -c "kill -{name} \\$\\$"; echo $?'
    cp = run([*DEFAULT_SIGNALS, "bash", "-c", inner])
    assert cp.stdout.split() == [str(128 + sig)], cp.stderr
    # mstack is the command: its own parent sees the signal itself, not an exit code
    cp = run([*DEFAULT_SIGNALS, MSTACK, netns.name, "sh", "-c", f"kill -{name} $$"])
    assert cp.returncode == -sig


def test_daemon_outliving_the_command_keeps_the_mapping(netns: Netns) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp, "daemon.json")
        cp = mstack(netns.name, PYTHON, PROBE, "daemon", str(result), "0.3")
        assert cp.returncode == 0, cp.stderr
        assert wait_until(result.exists, timeout=20)
        seen = json.loads(result.read_text())
    assert seen["inet"] == {"cookie": netns.cookie, "uid": 0}


def test_supervisor_serves_until_the_last_process_exits(netns: Netns) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result, go = Path(tmp, "daemon.json"), Path(tmp, "go")
        try:
            cp = mstack(netns.name, PYTHON, PROBE, "daemon_wait", str(result), str(go))
            assert cp.returncode == 0, cp.stderr
            # the command has exited; its daemon, waiting for "go", has not
            assert wait_until(lambda: len(supervisors_of(str(go))) == 1, timeout=5)
            (sv,) = supervisors_of(str(go))
            go.touch()
            assert wait_until(result.exists, timeout=20)
            seen = json.loads(result.read_text())
            assert seen["inet"] == {"cookie": netns.cookie, "uid": 0}
            # the daemon was the last process under the filter: the supervisor exits by itself
            assert wait_until(lambda: gone(sv), timeout=20), f"supervisor {sv} still serving"
        finally:
            go.touch()
            kill_all(supervisors_of(str(go)))


def test_supervisor_exits_after_the_command(netns: Netns) -> None:
    with Stepper(netns.name, steps=("families,2",)) as target:
        sv = the_supervisor(target)
        assert target.go()["2"]["cookie"] == netns.cookie
        assert target.go() == {"done": True}
        assert target.proc.wait(timeout=10) == 0
        assert wait_until(lambda: gone(sv), timeout=20)


def test_supervisor_ignores_terminal_signals_in_its_own_session(netns: Netns) -> None:
    with Stepper(netns.name, steps=("families,2", "families,2")) as target:
        sv = the_supervisor(target)
        assert target.go()["2"]["cookie"] == netns.cookie
        ignored = ignored_signals(sv)
        for sig in TERMINAL_SIGNALS:
            assert ignored & (1 << (sig - 1)), f"supervisor does not ignore {sig.name}"
        sv_stat, cmd_stat = stat_fields(sv), stat_fields(target.proc.pid)
        assert sv_stat[3] != cmd_stat[3], "supervisor shares the command's session"
        assert sv_stat[2] != cmd_stat[2], "supervisor is in the command's process group"
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTSTP):
            os.kill(sv, sig)
        # still there and still serving
        assert target.go()["2"]["cookie"] == netns.cookie
        assert not gone(sv) and stat_fields(sv)[0] != "T"


def test_supervisor_holds_nothing_of_the_command_s_and_the_command_no_listener(
        netns: Netns) -> None:
    with Stepper(netns.name, steps=("families,2",)) as target:
        sv = the_supervisor(target)
        target.go()
        mine = fd_links(target.proc.pid)
        pipes = {mine[fd] for fd in (0, 1, 2) if mine[fd].startswith("pipe:")}
        assert len(pipes) == 2  # stdin and stdout of the Stepper
        theirs = set(fd_links(sv).values())
        assert not pipes & theirs, "the supervisor holds the command's stdin/stdout pipe"
        assert not any("seccomp" in link for link in mine.values()), mine
        assert any("seccomp" in link for link in theirs), theirs


def test_command_substitution_returns_with_the_command(netns: Netns) -> None:
    """A reader of the command's output sees EOF when the command's tree is done."""
    cp = run(["bash", "-c", f'x=$({MSTACK} {netns.name} {PYTHON} {PROBE} families 2); echo "$x"'],
             timeout=30)
    assert json.loads(cp.stdout)["2"]["cookie"] == netns.cookie



def test_command_keeps_environment_cwd_and_has_no_children(netns: Netns) -> None:
    code = ("import os,json\n"
            "try: os.waitpid(-1, os.WNOHANG); kids = 'some'\n"
            "except ChildProcessError: kids = 'none'\n"
            "print(json.dumps([os.getcwd(), os.environ.get('MSTACK_TEST'), kids]))")
    with tempfile.TemporaryDirectory() as tmp:
        cp = mstack(netns.name, PYTHON, "-c", code, cwd=tmp,
                    env={**os.environ, "MSTACK_TEST": "kept"})
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout) == [os.path.realpath(tmp), "kept", "none"]


#: runs argv[1:] with signals 32 and 33 ignored, as some environments start jobs (glibc
#: keeps them for itself and would take them over in a process that makes a thread)
IGNORING_32_33 = """
import ctypes, os, signal, sys
for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python's own, not the environment's
    signal.signal(sig, signal.SIG_DFL)
class Action(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("flags", ctypes.c_ulong),
                ("restorer", ctypes.c_void_p), ("mask", ctypes.c_ulong)]
for sig in (32, 33):  # rt_sigaction(sig, SIG_IGN): Python's signal module refuses these
    assert ctypes.CDLL(None).syscall(13, sig, ctypes.byref(Action(1, 0, None, 0)), None, 8) == 0
os.execvp(sys.argv[1], sys.argv[1:])
"""


def test_command_starts_with_the_signal_dispositions_it_would_have_natively(
        netns: Netns) -> None:
    # SigIgn only: the blocked mask is the caller's (subprocess leaves it as the test runner's)
    show = ("sh", "-c", "grep -E '^SigIgn' /proc/$$/status")
    native = run([PYTHON, "-c", IGNORING_32_33, *show])
    ignored = int(native.stdout.split()[1], 16)
    assert ignored & (3 << 31) == 3 << 31  # 32 and 33 ignored, on top of the runner's
    under = run([PYTHON, "-c", IGNORING_32_33, MSTACK, netns.name, *show])
    assert under.stdout == native.stdout


@pytest.mark.parametrize(("closed", "script", "stream"),
                         [(">&-", "echo ok >&2", "stderr"), ("2>&-", "echo ok", "stdout")],
                         ids=["stdout", "stderr"])
def test_closed_stdout_or_stderr_does_not_stop_the_command(netns: Netns, closed: str,
                                                           script: str, stream: str) -> None:
    cp = run(["bash", "-c", f"{MSTACK} {netns.name} sh -c '{script}' {closed}"])
    assert cp.returncode == 0, cp.stderr
    assert getattr(cp, stream) == "ok\n"
