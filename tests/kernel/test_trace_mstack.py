"""eBPF sees where every socket of a workload under mstack really landed — native,
redirected, injected by msocket, refused — and agrees with the workload's own view."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import (
    AS_NOBODY,
    HELPERS,
    PYTHON,
    USER_PATH,
    MakeNetns,
    Netns,
    Report,
    mstack,
    needs_ebpf,
    needs_root,
    run,
)

pytestmark = needs_root
PROBE = str(HELPERS / "trace_probe.py")


def run_traced(mstack_args: list[str],
               specs: list[str]) -> tuple[Report, list[Report]]:
    """The probe's own report and the traced socket calls of its process."""
    cp = run(["mstack-trace", "--json", "--", "mstack", *mstack_args, PYTHON, PROBE, *specs],
             timeout=60)
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    report = json.loads(next(line for line in lines if line.startswith('{"pid"')))
    events = [json.loads(line) for line in lines if line.startswith('{"time"')]
    mine = [e for e in events if e["pid"] == report["pid"] and e["comm"] != "mstack"
            and e["call"] in ("socket", "msocket") and e["family"] in (1, 2, 10)]
    return report, mine


@needs_ebpf
def test_traced_stacks_equal_what_the_target_sees(make_netns: MakeNetns) -> None:
    a, b = make_netns(), make_netns()
    specs = ["2", "1", "10", f"{b.path}:2", "null:2", "/nonexistent:2"]
    report, events = run_traced(["-o", "4", a.name], specs)
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
