"""Rootless stacks, run as ``nobody`` (setpriv): create, reach the host's loopback through
user-mode networking, make sockets inside with NetnsSocketHelper, list and delete.

The test process (root) only prepares a world-readable temp dir, serves HTTP on the host's
127.0.0.1 and cleans up: every stack is deleted as nobody and, should that fail, its
recorded processes are killed by root. Rootless user-net needs /dev/net/tun usable by the
user; where the machine leaves it 0600 (containers without udev) the fixture makes it 0666
for the test and restores the mode afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import COOKIE_SOURCE, MSTACK, VENV_PYTHON, cookie_code, stop_process
from tests.e2e.conftest import SETPRIV, Nobody, in_stack, unique
from tests.e2e.test_stack_usage import SERVER

PY = VENV_PYTHON


@pytest.mark.parametrize("backend", ["pasta", "slirp4netns"])
def test_rootless_user_net(
    nobody: Nobody,
    tun_usable: None,
    host_http: int,
    backend: str,
) -> None:
    name = unique()
    nobody.ok("add", name, "--user-net", "--backend", backend, "--host-loopback")
    st = nobody.info(name)
    assert st["owner"] == "user" and st["live"] and st["uid"] == 65534
    state_dir = nobody.xdg / "mstack" / name
    assert (state_dir.stat().st_mode & 0o777) == 0o700 and state_dir.stat().st_uid == 65534
    holder = st["holder_pid"]
    assert os.readlink(state_dir / "net") == f"/proc/{holder}/ns/net"
    # The core's lookup, as the user: bare NAME → /proc/HOLDER/ns/net.
    res = nobody.run(
        PY, "-c", f"from mstack_bpf.stacks.paths import resolve_user_stack as r; print(r({name!r}))"
    )
    assert res.stdout.strip() == f"/proc/{holder}/ns/net", res.stderr
    assert nobody.ok("path", name).strip() == f"/proc/{holder}/ns/net"
    curl = in_stack(nobody, holder, "curl", "-s", "-m", "10", "-o", "/dev/null", "-w",
                     "%{http_code}", f"http://{st['host_alias']}:{host_http}/")  # fmt: skip
    assert curl.stdout == "200", curl.stderr
    procs = st["procs"]
    assert [p["role"] for p in procs] == [backend, "holder"]
    nobody.ok("del", name)
    assert not state_dir.exists()
    for p in procs:
        assert not os.path.exists(f"/proc/{p['pid']}") or _zombie(p["pid"])
    assert nobody.cli("del", name).returncode == 0


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return raw[raw.rindex(b")") + 2 :].startswith(b"Z")


_HELPER_PROBE = COOKIE_SOURCE + """
import json, os, sys, time
from mstack_bpf.supervisor.helper import NetnsSocketHelper
from mstack_bpf.stacks.paths import resolve_user_stack
path = resolve_user_stack(sys.argv[1])
with NetnsSocketHelper(path) as h:
    made = socket.socket(fileno=h.make_socket(socket.AF_INET,
                                              socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0))
    inside = cookie(made)
    made.close()
    try:
        h.make_socket(4242, socket.SOCK_STREAM, 0)
        err = 0
    except OSError as e:
        err = e.errno
    n = 500
    t = time.perf_counter()
    for _ in range(n):
        os.close(h.make_socket(socket.AF_INET, socket.SOCK_DGRAM, 0))
    rt = (time.perf_counter() - t) / n * 1e6
own = cookie(socket.socket(socket.AF_UNIX))
print(json.dumps({"cookie": inside, "own": own, "err": err, "rt_us": rt}))
"""

def test_helper_makes_sockets_in_rootless_stack(nobody: Nobody) -> None:
    name = unique()
    nobody.ok("add", name)  # loopback only: no /dev/net/tun needed
    st = nobody.info(name)
    assert st["type"] == "loopback" and st["live"]
    res = nobody.run(PY, "-c", _HELPER_PROBE, name)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    inside = in_stack(nobody, st["holder_pid"], PY, "-c", cookie_code())
    assert inside.returncode == 0, inside.stderr
    assert got["cookie"] == int(inside.stdout) != got["own"]
    assert got["err"] == 97  # EAFNOSUPPORT comes back as the errno
    print(f"NetnsSocketHelper round trip as nobody: {got['rt_us']:.1f} us")


def test_rootless_errors(nobody: Nobody, tmp_path: Path) -> None:
    name = unique()
    veth = nobody.cli("add", name, "--veth")
    assert veth.returncode == 125 and "needs root" in veth.stderr
    assert nobody.cli("del", name).returncode == 0
    nobody.ok("add", name)
    again = nobody.cli("add", name)
    assert again.returncode == 125 and "already exists" in again.stderr
    # Another user's (here root's) lookup never sees nobody's stack.
    from mstack_bpf.stacks.paths import resolve_user_stack

    assert resolve_user_stack(name, environ={"XDG_RUNTIME_DIR": str(nobody.xdg)}) is None


def test_rootless_tun_unusable(nobody: Nobody) -> None:
    mode = os.stat("/dev/net/tun").st_mode & 0o7777
    os.chmod("/dev/net/tun", 0o600)
    try:
        name = unique()
        res = nobody.cli("add", name, "--user-net")
        assert res.returncode == 125 and "/dev/net/tun" in res.stderr
        assert not (nobody.xdg / "mstack" / name).exists()
    finally:
        os.chmod("/dev/net/tun", mode)


def test_rootless_del_refuses_while_a_server_listens_in_the_stack(nobody: Nobody) -> None:
    """nobody's server under ``mstack -o ip NAME`` lives where nobody is (mstack may not
    enter a rootless stack), its listening socket in the stack: del names it and refuses;
    list shows the owner by name."""
    name = unique()
    nobody.ok("add", name)
    row = next(ln.split() for ln in nobody.ok("list").splitlines() if ln.startswith(name + " "))
    assert row[2] == "nobody", row
    assert nobody.info(name)["owner_name"] == "nobody"
    env = [f"{k}={v}" for k, v in nobody.env.items()]
    server = subprocess.Popen(
        [*SETPRIV, "env", "-i", *env, MSTACK, "-o", "ip", name, PY, "-c", SERVER],
        stdout=subprocess.PIPE, text=True, cwd=nobody.home)
    try:
        assert server.stdout is not None and server.stdout.readline()
        users = {u["pid"]: u["how"] for u in nobody.info(name)["users"]}
        assert users.get(server.pid) == "socket", users
        res = nobody.cli("del", name)
        assert res.returncode == 125, res.stderr
        assert f"pid {server.pid} (python" in res.stderr and "has a socket in it" in res.stderr
        assert nobody.info(name)["live"]
    finally:
        stop_process(server)
    nobody.ok("del", name)
    assert not (nobody.xdg / "mstack" / name).exists()
