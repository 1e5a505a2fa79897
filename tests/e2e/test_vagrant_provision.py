"""The Vagrant test VM's provisioning script, run on this host (its Vagrantfile is checked
in tests/unit/test_vagrantfile.py).

The VM itself cannot run here, so the script runs on this (plain Debian 12) host the way the
VM runs it, with ``SKIP_TESTS=1`` so that ``make test`` does not run itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BINDIR, MSTACK, PREFIX, SAFE_PATH, needs_root, run

pytestmark = needs_root

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
# namespaces provision.sh and the demo it runs create (their names end in the creating pid)
OURS = re.compile(r"^(mstack-prov|mstack-demo)-\d+$")


def netns_names() -> set[str]:
    return {line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines()
            if line.strip()}


def remove_netns(name: str) -> None:
    for pid in run(["ip", "netns", "pids", name]).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    run(["ip", "netns", "del", name])


def provision() -> tuple[int, str, set[str]]:
    """Run provision.sh; return its status, output and the namespaces it left."""
    before = netns_names()
    env = {"PATH": SAFE_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "SKIP_TESTS": "1", "MSTACK_PREFIX": PREFIX, "MSTACK_BINDIR": BINDIR}
    proc = subprocess.Popen(["bash", str(VAGRANT / "provision.sh"), str(REPO)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=270)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the script's trap removes what it made
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        out += "\n(provision.sh timed out)"
    finally:
        left = {name for name in netns_names() - before if OURS.match(name)}
        for name in left:  # whatever happened, leave nothing behind
            remove_netns(name)
    return proc.returncode, out, left


@pytest.mark.timeout(300)
def test_provision_installs_and_traces_the_demo() -> None:
    rc, out, left = provision()
    tail = out[-6000:]
    assert rc == 0, tail
    assert out.rstrip().splitlines()[-1] == "provision: OK", tail
    assert "make test skipped (SKIP_TESTS=1)" in out
    assert "demo done;" in out, tail  # make demo ran to its end

    created = re.findall(r"^provision: created namespace (\S+)$", out, re.M)
    assert len(created) == 1, tail
    ns = created[0]
    # mstack -v's eBPF socket table: ipv4 sockets came from the throwaway stack, unix stayed
    rows = [line.split()[1:] for line in out.splitlines() if line.startswith("mstack: ")]
    assert any(r[:2] == ["ipv4", ns] and r[2].isdigit() and int(r[2]) >= 1 for r in rows), tail
    assert any(r[:2] == ["unix", "native"] for r in rows), tail
    assert re.search(rf"^  curl .* socket +ipv4 .* stack {re.escape(ns)}$", out, re.M), tail
    assert "HTTP 200" in out

    assert not left, f"provision.sh left namespaces {left}"
    assert ns not in netns_names()
    assert not Path(f"/run/netns/{ns}").exists()

    version = run([MSTACK, "--version"], check=True).stdout
    assert version.startswith("mstack ") and "not View-OS" in version

