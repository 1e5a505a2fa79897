"""Stacks that are safe to remove, and ``list``/``dns`` telling what is really there: ``del``
refuses while a process lives in a stack or holds a socket in it (a server under ``mstack
-o ip NAME`` that lives elsewhere), ``list`` names those processes, owners by name and what
an ``ip netns add`` namespace holds, ``dns`` answers for such a namespace.

Servers listen only on the loopback of the test's own namespace (or an address of the
test's own veth, to which nothing is sent); every namespace, file and process is removed
afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mstack_bpf.stacks import usernet
from tests.conftest import MSTACK, needs_root, run, stop_process
from tests.e2e.conftest import info, netns_exec, ok, stack_cli

pytestmark = needs_root

#: a TCP server on the loopback of whatever stack its AF_INET sockets come from; it prints
#: its port, then serves until killed
SERVER = ("import socket, time\n"
          "s = socket.create_server(('127.0.0.1', 0))\n"
          "print(s.getsockname()[1], flush=True)\n"
          "while True: s.accept()[0].close()\n")


def _start(argv: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"server did not start (status {proc.poll()})"
    return proc, int(line)


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _refusal(name: str, pid: int) -> subprocess.CompletedProcess[str]:
    res = stack_cli("del", name)
    assert res.returncode == 125, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("mstack-stack: hint:"), res.stderr
    assert f"pid {pid} ({_comm(pid)}, " in lines[0], res.stderr
    assert f"del --force {name}" in lines[1]
    assert os.path.lexists(f"/run/netns/{name}")
    return res


def test_del_refuses_a_stack_a_process_lives_in(new_name: Callable[[], str]) -> None:
    name = new_name()
    ok("add", name)
    proc, _ = _start(["ip", "netns", "exec", name, sys.executable, "-c", SERVER])
    try:
        assert "lives in it" in _refusal(name, proc.pid).stderr
    finally:
        stop_process(proc)
    ok("del", name)
    assert not os.path.lexists(f"/run/netns/{name}")


def test_del_refuses_while_a_server_elsewhere_listens_in_the_stack(
        new_name: Callable[[], str]) -> None:
    """The issue's case: the server lives in the host's namespace (--keep-namespace), its
    listening socket in the stack; del used to remove the name silently."""
    name = new_name()
    ok("add", name)
    stack_ino = os.stat(f"/run/netns/{name}").st_ino
    proc, port = _start([MSTACK, "--keep-namespace", "-o", "ip", name,
                         sys.executable, "-c", SERVER])
    try:
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != f"net:[{stack_ino}]"
        reach = netns_exec(name, "curl", "-s", "-m", "3", "-o", "/dev/null", "-w",
                           "%{http_code}", f"http://127.0.0.1:{port}/")
        assert reach.stdout == "000" and reach.returncode in (52, 56), reach  # accepted, closed
        users = {u["pid"]: u["how"] for u in info(name)["users"]}
        assert users.get(proc.pid) == "socket", users
        assert f"{_comm(proc.pid)}:{proc.pid}" in ok("list")
        assert "has a socket in it" in _refusal(name, proc.pid).stderr
        forced = stack_cli("del", "--force", name)
        assert forced.returncode == 0, forced.stderr
        assert f"pid {proc.pid}" in forced.stderr and "keep the namespace alive" in forced.stderr
        assert not os.path.lexists(f"/run/netns/{name}")
        # the name is gone; the namespace lives on in the server's socket
        assert proc.poll() is None and name not in ok("list")
    finally:
        stop_process(proc)


@pytest.fixture
def etc_netns() -> Iterator[Callable[[str, str], None]]:
    """Writes /etc/netns/NAME/resolv.conf (what ip netns exec binds); removes every file and
    directory it made afterwards."""
    made_base = not os.path.exists("/etc/netns")
    dirs: list[Path] = []

    def write(name: str, text: str) -> None:
        d = Path("/etc/netns") / name
        d.mkdir(parents=True, exist_ok=True)
        dirs.append(d)
        (d / "resolv.conf").write_text(text)

    try:
        yield write
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        if made_base:
            with_files = os.path.isdir("/etc/netns") and os.listdir("/etc/netns")
            if not with_files:
                shutil.rmtree("/etc/netns", ignore_errors=True)


UDP53 = ("import socket\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "s.bind(('127.0.0.1', 53)); print(53, flush=True)\n"
         "while True: s.recv(512)\n")


def test_dns_of_an_ip_netns_namespace(new_name: Callable[[], str],
                                      etc_netns: Callable[[str, str], None]) -> None:
    name = new_name()
    run(["ip", "netns", "add", name], check=True)
    run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    # no /etc/netns/NAME: the host's resolv.conf, which a loopback-only namespace cannot use
    host = usernet.host_resolver("/etc/resolv.conf")
    res = stack_cli("dns", name)
    assert res.returncode == 125 and "was not made by" not in res.stderr, res.stderr
    if host is not None:
        assert f"{host} (from /etc/resolv.conf)" in res.stderr
    assert f"/etc/netns/{name}/resolv.conf" in res.stderr.splitlines()[-1]
    # a resolver on its loopback, named where ip netns exec looks
    etc_netns(name, "nameserver 127.0.0.1\n")
    res = stack_cli("dns", name)
    assert res.returncode == 125 and "nothing in it listens on port 53" in res.stderr
    proc, _ = _start(["ip", "netns", "exec", name, sys.executable, "-c", UDP53])
    try:
        assert ok("dns", name).strip() == "127.0.0.1"
    finally:
        stop_process(proc)
    # an address it routes to, on its own veth (nothing is sent)
    run(["ip", "-n", name, "link", "add", "mstk0", "type", "veth", "peer", "name", "mstk1"],
        check=True)
    run(["ip", "-n", name, "addr", "add", "10.252.7.1/30", "dev", "mstk0"], check=True)
    run(["ip", "-n", name, "link", "set", "mstk0", "up"], check=True)
    etc_netns(name, "nameserver 10.252.7.2\n")
    assert ok("dns", name).strip() == "10.252.7.2"
    etc_netns(name, "nameserver 10.253.0.1\n")
    res = stack_cli("dns", name)
    assert res.returncode == 125 and "no route to 10.253.0.1" in res.stderr


def test_list_shows_what_an_external_namespace_holds(new_name: Callable[[], str]) -> None:
    name = new_name()
    run(["ip", "netns", "add", name], check=True)
    st = info(name)
    assert st["net"] == "loopback" and st["addresses"] == [] and st["owner_name"] == "root"
    run(["ip", "-n", name, "link", "add", "mstk0", "type", "veth", "peer", "name", "mstk1"],
        check=True)
    run(["ip", "-n", name, "addr", "add", "10.252.9.1/30", "dev", "mstk0"], check=True)
    run(["ip", "-n", name, "addr", "add", "fd00:6d73::1/64", "dev", "mstk0", "nodad"],
        check=True)
    st = info(name)
    assert st["type"] == "external" and st["net"] == "veth"
    assert st["addresses"] == ["10.252.9.1/30", "fd00:6d73::1/64"], st["addresses"]
    row = next(line.split() for line in ok("list").splitlines() if line.startswith(name + " "))
    assert row[1:4] == ["external", "root", "10.252.9.1/30,fd00:6d73::1/64"], row
    doc = json.loads(ok("list", "--json"))
    assert all(e["net"] != "unknown" for e in doc if e["type"] == "external"), doc


#: makes a socket in the stack, leaves ``sleep SECONDS`` behind under the run's filter, and
#: prints its pid
LEAVE_CHILD = ("import socket, subprocess, sys\n"
               "socket.socket()\n"
               "quiet = {'stdout': subprocess.DEVNULL, 'stderr': subprocess.DEVNULL}\n"
               "print(subprocess.Popen(['sleep', sys.argv[1]], **quiet).pid)\n")


def test_del_waits_a_moment_for_a_runs_supervisor(new_name: Callable[[], str]) -> None:
    """A run's supervisor stays until the last process of its tree is gone, which can be a
    moment after COMMAND itself (here: a child COMMAND left behind): del waits up to 2 s
    for supervisors, then refuses naming them."""
    name = new_name()
    ok("add", name)
    for linger, removed in (("60", False), ("0.5", True)):
        done = run([MSTACK, "--keep-namespace", "-o", "ip", name,
                    sys.executable, "-c", LEAVE_CHILD, linger])
        assert done.returncode == 0, done.stderr
        child = int(done.stdout)
        try:
            res = stack_cli("del", name)
            assert (res.returncode == 0) is removed, res.stderr
            assert os.path.lexists(f"/run/netns/{name}") is not removed
            assert removed or "(mstack-sv, " in res.stderr, res.stderr
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
