"""``mstack-trace`` as a user runs it: output, stack names, exit codes, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import mstack_bpf
from tests.conftest import AS_NOBODY, needs_ebpf, run

pytestmark = needs_ebpf

PY = sys.executable
ROOT = str(Path(mstack_bpf.__file__).resolve().parent.parent)
TRACE = [PY, "-c", "from mstack_bpf.cli.trace import main; main()"]
ENV = {**os.environ, "PYTHONPATH": ROOT}
WORK = (
    "import socket\n"
    "socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
    "try: socket.socket(socket.AF_INET, 999)\n"
    "except OSError: pass\n"
    "raise SystemExit(3)\n"
)


def trace(*args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    """``mstack-trace ARGS...`` from this checkout (as ``nobody`` if asked)."""
    return run([*(AS_NOBODY if as_nobody else ()), *TRACE, *args], env=ENV)


def test_command_json_and_exit_status() -> None:
    proc = trace("--json", "--", PY, "-c", WORK)
    assert proc.returncode == 3, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    made = [r for r in records if r["call"] == "socket" and r["fds"]]
    assert [(r["family_name"], r["type_name"], r["stack"]) for r in made] == [
        ("ipv6", "dgram|cloexec", "native")
    ]
    refused = [r for r in records if r["errno"]]
    assert [(r["family_name"], r["errno"], r["stack"]) for r in refused] == [
        ("ipv4", "EINVAL", None)
    ]


def test_text_columns_and_summary_in_netns(netns_name: str) -> None:
    code = "import socket; socket.socket(socket.AF_INET)"
    proc = trace("-s", "--", "ip", "netns", "exec", netns_name, PY, "-c", code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].split() == ["TIME", "PID", "COMM", "CALL", "FAMILY", "FD/ERR", "STACK", "TYPE"]
    inet = [line.split() for line in lines[1:] if " ipv4 " in line]
    assert len(inet) == 1 and inet[0][-2] == netns_name and inet[0][3] == "socket"
    table = lines[lines.index(next(line for line in lines if line.startswith("FAMILY"))):]
    assert table[0].split() == ["FAMILY", "STACK", "SOCKETS", "REFUSED"]
    assert ["ipv4", netns_name, "1", "-"] in [row.split() for row in table[1:]]


PRINTS = "import socket\nprint('{\"hello\"')\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"


def test_events_stay_apart_from_the_commands_output(tmp_path: Path) -> None:
    """As strace: the events go to stderr (or -o FILE), COMMAND's stdout stays its own, so
    a pipe after mstack-trace gets COMMAND's output and the events parse as JSON lines."""
    proc = trace("--json", "--", PY, "-c", PRINTS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '{"hello"\n'
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [r["family_name"] for r in records if r["fds"]] == ["ipv6"]
    out = tmp_path / "events.json"
    proc = trace("--json", "-s", "-o", str(out), "--", PY, "-c", PRINTS)
    assert proc.returncode == 0 and proc.stdout == '{"hello"\n' and proc.stderr == ""
    lines = out.read_text().splitlines()
    assert [json.loads(line)["family_name"] for line in lines[:-2]] == ["ipv6"]
    assert [line.split() for line in lines[-2:]] == [  # -s: there too
        ["FAMILY", "STACK", "SOCKETS", "REFUSED"], ["ipv6", "native", "1", "-"]]


def test_output_to_a_file_that_cannot_be_written_exits_125(tmp_path: Path) -> None:
    proc = trace("-o", str(tmp_path / "missing" / "x"), "--", "true")
    assert proc.returncode == 125
    assert proc.stderr.startswith("mstack-trace: cannot write ")


def test_pid_mode_stops_cleanly_on_sigterm() -> None:
    target = subprocess.Popen([PY, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    tracer = subprocess.Popen(
        [*TRACE, "-p", str(target.pid)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert tracer.stdout is not None
        assert tracer.stdout.readline().startswith("TIME")  # attached
        tracer.send_signal(signal.SIGTERM)
        assert tracer.wait(timeout=10) == 0
    finally:
        tracer.kill()
        target.kill()
        target.wait()


@pytest.mark.parametrize(
    "args",
    [("-p", "1", "--", "true"), ("--bogus",), ("-p", "0")],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    assert trace(*args).returncode == 2


def test_command_not_found_exits_127() -> None:
    proc = trace("--", "/nonexistent/mstack-test-cmd")
    assert proc.returncode == 127
    assert "No such file" in proc.stderr


def test_signal_death_is_128_plus_signal() -> None:
    proc = trace("--", "sh", "-c", "kill -TERM $$")
    assert proc.returncode == 128 + signal.SIGTERM


def test_unavailable_exits_125_with_reason() -> None:
    proc = trace("--", "true", as_nobody=True)
    assert proc.returncode == 125, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "needs root" in proc.stderr
