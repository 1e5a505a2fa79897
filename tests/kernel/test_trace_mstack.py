"""eBPF sees where every socket of a workload under mstack really landed — native,
redirected, injected by msocket, refused — and agrees with the workload's own view."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import (
    AS_NOBODY,
    HELPERS,
    MSTACK,
    PYTHON,
    USER_PATH,
    MakeNetns,
    Netns,
    Report,
    mstack,
    needs_ebpf,
    needs_root,
    run,
    stop_process,
    stop_tree,
    supervisors_of,
    wait_until,
)

pytestmark = needs_root
PROBE = str(HELPERS / "trace_probe.py")


def run_traced(mstack_args: list[str], specs: list[str],
               *trace_args: str) -> tuple[Report, list[Report], list[Report]]:
    """The probe's own report, the traced socket calls of its process, and every event."""
    cp = run(["mstack-trace", "--json", *trace_args, "--", "mstack", *mstack_args, PYTHON,
              PROBE, *specs], timeout=60)
    assert cp.returncode == 0, cp.stderr
    report = json.loads(cp.stdout)  # the events went to stderr, apart from the probe's
    events = [json.loads(line) for line in cp.stderr.splitlines()]
    mine = [e for e in events if e["pid"] == report["pid"]
            and e["call"] in ("socket", "msocket") and e["family"] in (1, 2, 10)]
    return report, mine, events


@needs_ebpf
def test_traced_stacks_equal_what_the_target_sees(make_netns: MakeNetns) -> None:
    a, b = make_netns(), make_netns()
    specs = ["2", "1", "10", f"{b.path}:2", "null:2", "/nonexistent:2"]
    report, events, _ = run_traced(["-o", "4", a.name], specs)
    sockets = report["sockets"]
    assert isinstance(sockets, list)
    assert [s.get("errno") for s in sockets] == [None, None, None, None, "EAFNOSUPPORT",
                                                 "ENOENT"]
    host = os.stat("/proc/self/ns/net").st_ino
    a_ino, b_ino = (os.stat(n.path).st_ino for n in (a, b))
    assert [s.get("inode") for s in sockets[:4]] == [a_ino, host, host, b_ino]
    # the events, in order: each created socket's traced namespace is the one seen inside
    created = [e for e in events if e["errno"] is None and e["family"] != 0]
    assert [(e["fds"][0], e["sock_netns"]) for e in created] == [
        (s["fd"], s["inode"]) for s in sockets[:4]]
    assert [e["call"] for e in created] == ["socket", "socket", "socket", "msocket"]
    refused = [e for e in events if e["errno"] is not None and e["call"] == "msocket"
               and e["family"] == 2]
    assert [e["errno"] for e in refused] == ["EAFNOSUPPORT", "ENOENT"]


@needs_ebpf
def test_verbose_table_counts_sockets_per_family_and_stack(netns: Netns) -> None:
    cp = mstack("-v", "-o", "4", netns.name, PYTHON, PROBE, "2", "2", "1", "null:2")
    table = [line.removeprefix("mstack: ").split() for line in cp.stderr.splitlines()
             if line.startswith("mstack: ") and not line.startswith("mstack: FAMILY")]
    assert ["ipv4", netns.name, "2", "-"] in table
    assert ["unix", "native", "1", "-"] in table
    assert ["ipv4", "-", "0", "EAFNOSUPPORT×1"] in table  # msocket("null"): no socket


@needs_ebpf
def test_verbose_under_lock_without_supervisor_still_reports() -> None:
    cp = mstack("-v", "--lock", "-o", "4", "null", PYTHON, PROBE, "2", "1")
    assert "EAFNOSUPPORT×1" in cp.stderr
    assert any(line.split()[1:4] == ["unix", "native", "1"]
               for line in cp.stderr.splitlines() if line.startswith("mstack: unix"))


def test_verbose_without_ebpf_says_why_in_one_line(shared_dir: Path) -> None:
    cp = run([*AS_NOBODY, "env", f"PATH={USER_PATH}", "mstack", "-v", "native",
              "true"],
             cwd=str(shared_dir))
    assert cp.returncode == 0, cp.stderr
    missing = [line for line in cp.stderr.splitlines() if "no socket table" in line]
    assert len(missing) == 1


def _table(stderr: str) -> list[list[str]]:
    """The rows of every -v socket table in ``stderr`` (header lines left out)."""
    lines = [line.removeprefix("mstack: ") for line in stderr.splitlines()
             if line.startswith("mstack: ")]
    rows, inside = [], False
    for line in lines:
        if line.split()[:1] == ["FAMILY"]:
            inside = True
        elif inside and line.split()[0] in ("unix", "ipv4", "ipv6", "netlink", "packet",
                                             "unspec", "(no"):
            rows.append(line.split())
        else:
            inside = False
    return rows


@needs_ebpf
@pytest.mark.parametrize("keep", [False, True], ids=["home", "redirected"])
def test_trace_of_an_mstack_run_lists_only_the_commands_calls(netns: Netns, keep: bool) -> None:
    """mstack's launcher (its msocket probe, its socketpair) and supervisor (comm mstack-sv:
    the sockets it makes to inject, the probes of every stack) are not the command's: left
    out, so an injected socket counts once, in the caller; --show-mstack shows them."""
    args = [*(["--keep-namespace"] if keep else []), "-o", "ip", netns.name]
    report, mine, events = run_traced(args, ["2"])
    assert [(e["pid"], e["call"], e["family_name"], e["stack"]) for e in events] == [
        (report["pid"], "socket", "ipv4", netns.name)]
    _, _, shown = run_traced(args, ["2"], "--show-mstack")
    own = [e for e in shown if e["mstack"]]
    assert {e["comm"] for e in own} == {"mstack", "mstack-sv"}
    assert {"msocket", "socketpair"} <= {e["call"] for e in own if e["comm"] == "mstack"}
    assert [e for e in shown if not e["mstack"]][0]["comm"] != "mstack-sv"
    if keep:  # the supervisor made the probe's socket; the probe got it: one socket each
        made = [e for e in own if e["comm"] == "mstack-sv" and e["family"] == 2]
        assert made and all(e["stack"] == netns.name for e in made)


@needs_ebpf
def test_a_program_calling_itself_mstack_sv_is_still_traced(netns: Netns) -> None:
    """mstack's own processes are known by the mark the launcher sets, not by their name."""
    code = ("import ctypes, socket; ctypes.CDLL(None).prctl(15, b'mstack-sv', 0, 0, 0); "
            "socket.socket(); socket.socket(socket.AF_UNIX)")
    cp = run(["mstack-trace", "--json", "--", "mstack", "-o", "ip", netns.name, PYTHON, "-c",
              code], timeout=60)
    assert cp.returncode == 0, cp.stderr
    events = [json.loads(line) for line in cp.stderr.splitlines()]
    assert [(e["comm"], e["family_name"]) for e in events] == [
        ("mstack-sv", "ipv4"), ("mstack-sv", "unix")]
    table = _table(mstack("-v", "-o", "ip", netns.name, PYTHON, "-c", code).stderr)
    assert ["ipv4", netns.name, "1", "-"] in table and ["unix", "native", "1", "-"] in table


@needs_ebpf
def test_a_nested_mstack_leaves_no_row_in_the_outer_table(make_netns: MakeNetns) -> None:
    """Its probe of the outer supervisor (msocket, EINVAL) and its SOCK_DEFAULT calls are
    mstack's work, not the user's."""
    a, b = make_netns(), make_netns()
    cp = mstack("-v", "-o", "ip", a.name, "sh", "-c",
                f"mstack -o ip {b.name} {PYTHON} {PROBE} 2", timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert _table(cp.stderr) == [["ipv4", b.name, "1", "-"]]


@needs_ebpf
def test_a_nested_verbose_mstack_shows_its_own_subtree(make_netns: MakeNetns) -> None:
    """Nested -vv: the per-call lines under their header and the table, as at top level;
    its native sockets are named native although it started in the outer home."""
    a, b = make_netns(), make_netns()
    cp = mstack("-o", "ip", a.name, "sh", "-c",
                f"{PYTHON} {PROBE} 2; mstack -vv -o ip {b.name} {PYTHON} {PROBE} 2 1",
                timeout=60)
    assert cp.returncode == 0, cp.stderr
    lines = [line.removeprefix("mstack: ") for line in cp.stderr.splitlines()]
    header = next(i for i, line in enumerate(lines) if line.startswith("TIME"))
    assert lines[header].split() == ["TIME", "PID", "COMM", "CALL", "FAMILY", "FD/ERR",
                                     "STACK", "TYPE"]
    calls = [line.split() for line in lines[header + 1:] if " socket " in line]
    assert [(c[4], c[6]) for c in calls] == [("ipv4", b.name), ("unix", "native")]
    assert sorted(_table(cp.stderr)) == [["ipv4", b.name, "1", "-"], ["unix", "native", "1", "-"]]


def test_a_nested_verbose_mstack_without_ebpf_says_why(shared_dir: Path) -> None:
    cp = run([*AS_NOBODY, "env", f"PATH={USER_PATH}", "mstack", "native", "sh", "-c",
              "mstack -v native true"], cwd=str(shared_dir))
    assert cp.returncode == 0, cp.stderr
    missing = [line for line in cp.stderr.splitlines() if "no socket table" in line]
    assert len(missing) == 1, cp.stderr


ICMP_THEN_TCP = (
    "import socket\n"
    "try: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\n"
    "except PermissionError: pass\n"
    "socket.socket()\n"
)


@needs_ebpf
@pytest.mark.parametrize("keep", [False, True], ids=["home", "redirected"])
def test_a_stacks_own_refusal_shows_on_its_row(netns: Netns, keep: bool) -> None:
    """ICMP refused by the stack's own ping_group_range is that stack's: one ipv4 row."""
    run(["ip", "netns", "exec", netns.name, "sysctl", "-qw", "net.ipv4.ping_group_range=1 0"],
        check=True)
    cp = mstack("-v", *(["--keep-namespace"] if keep else []), "-o", "ip", netns.name,
                PYTHON, "-c", ICMP_THEN_TCP)
    assert cp.returncode == 0, cp.stderr
    assert _table(cp.stderr) == [["ipv4", netns.name, "1", "EACCES×1"]]


@needs_ebpf
def test_the_table_still_comes_after_a_sigkill(netns: Netns) -> None:
    """A command killed by a signal makes no exit_group for the table to hold: the table
    comes once the supervisor sees the pid gone (after the shell's "Killed", as documented),
    still complete."""
    code = "import os, socket; socket.socket(); os.kill(os.getpid(), 9)"
    cp = mstack("-v", "-o", "ip", netns.name, PYTHON, "-c", code)
    assert cp.returncode == -9
    assert _table(cp.stderr) == [["ipv4", netns.name, "1", "-"]]


WAIT_THEN_SOCKET = (
    "import sys, socket  # {marker}\n"
    "sys.stdin.readline(); socket.socket(); print('done', flush=True); sys.stdin.readline()\n"
)


@needs_ebpf
def test_a_trace_started_later_knows_running_supervisors(netns: Netns) -> None:
    """A supervisor that was running before mstack-trace started (no launcher mark seen) is
    known by its name *and* its seccomp listener: its injecting socket() is mstack's, the
    caller's own call the user's."""
    marker = f"trace-later-{uuid.uuid4().hex[:8]}"
    target = subprocess.Popen(
        [MSTACK, "--keep-namespace", "-o", "ip", netns.name, PYTHON, "-c",
         WAIT_THEN_SOCKET.format(marker=marker)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tracer: subprocess.Popen[str] | None = None
    try:
        assert target.stdin is not None and target.stdout is not None
        assert wait_until(lambda: supervisors_of(marker))
        sv = supervisors_of(marker)
        tracer = subprocess.Popen(["mstack-trace", "--show-mstack"], stdout=subprocess.PIPE,
                                  text=True)
        assert tracer.stdout is not None
        assert tracer.stdout.readline().startswith("TIME")  # attached
        target.stdin.write("\n")
        target.stdin.flush()
        assert target.stdout.readline() == "done\n"
        time.sleep(0.3)  # events come in batches
        tracer.send_signal(signal.SIGTERM)
        out, _ = tracer.communicate(timeout=10)
    finally:
        if tracer is not None:
            stop_process(tracer)
        stop_tree(target, marker)
    ours = [(int(w[1]), w[-1] == "[mstack]") for w in (line.split() for line in out.splitlines())
            if len(w) > 4 and w[1].isdigit() and int(w[1]) in {target.pid, *sv}
            and w[3] == "socket" and w[4] == "ipv4"]
    assert ours == [(*sv, True), (target.pid, False)]
