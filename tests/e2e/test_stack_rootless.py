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
import random
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_stack_root import host_http  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
PY = "/opt/mstack/bin/python"
SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody"),
    pytest.mark.skipif(not os.path.exists(PY), reason=f"{PY} missing (install layout)"),
]


class Nobody:
    """Runs commands as nobody with a private XDG_RUNTIME_DIR under a temp dir."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.xdg = home / "xdg"
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(self.xdg),
            "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SETPRIV, "env", "-i", *(f"{k}={v}" for k, v in self.env.items()), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(PY, "-m", "mstack_bpf.cli.stack", *args)

    def ok(self, *args: str) -> str:
        res = self.cli(*args)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def info(self, name: str) -> dict[str, Any]:
        for entry in json.loads(self.ok("list", "--json")):
            if entry["name"] == name:
                return dict(entry)
        raise AssertionError(f"{name} not listed")


@pytest.fixture
def nobody() -> Iterator[Nobody]:
    home = Path(tempfile.mkdtemp(prefix="mstack-rootless-"))
    home.chmod(0o755)
    xdg = home / "xdg"
    xdg.mkdir(mode=0o700)
    os.chown(xdg, 65534, 65534)
    user = Nobody(home)
    try:
        yield user
    finally:
        base = xdg / "mstack"
        for entry in base.iterdir() if base.is_dir() else []:
            user.cli("del", entry.name)
            _kill_recorded(entry / "state.json")
        shutil.rmtree(home, ignore_errors=True)


def _kill_recorded(state: Path) -> None:
    """Root's last resort when ``del`` as nobody failed: kill what the record names."""
    try:
        procs = json.loads(state.read_text())["procs"]
    except (OSError, ValueError, KeyError):
        return
    for p in procs:
        try:
            with open(f"/proc/{p['pid']}/stat", "rb") as f:
                raw = f.read()
            if int(raw[raw.rindex(b")") + 2 :].split()[19]) == p["start"]:
                os.kill(p["pid"], signal.SIGKILL)
        except (OSError, ValueError):
            continue


@pytest.fixture
def tun_usable() -> Iterator[None]:
    st = os.stat("/dev/net/tun")
    mode = st.st_mode & 0o7777
    if mode & 0o006 != 0o006:
        os.chmod("/dev/net/tun", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/net/tun", mode)


def unique() -> str:
    return f"rl{os.getpid() % 10000}{random.randrange(16**4):04x}"


def _in_stack(user: Nobody, holder: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return user.run("nsenter", "--preserve-credentials", "-U", "-n", "-t", str(holder), *argv)


@pytest.mark.parametrize("backend", ["pasta", "slirp4netns"])
def test_rootless_user_net(
    nobody: Nobody,
    tun_usable: None,
    host_http: int,  # noqa: F811
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
    curl = _in_stack(nobody, holder, "curl", "-s", "-m", "10", "-o", "/dev/null", "-w",
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


_HELPER_PROBE = """
import json, os, socket, sys, time
from mstack_bpf.linux.netns import current_netns_cookie, netns_cookie
from mstack_bpf.supervisor.helper import NetnsSocketHelper
from mstack_bpf.stacks.paths import resolve_user_stack
path = resolve_user_stack(sys.argv[1])
with NetnsSocketHelper(path) as h:
    fd = h.make_socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0)
    cookie = netns_cookie(fd)
    os.close(fd)
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
print(json.dumps({"cookie": cookie, "own": current_netns_cookie(), "err": err, "rt_us": rt}))
"""

_COOKIE = (
    "import socket; from mstack_bpf.linux.netns import netns_cookie; "
    "s = socket.socket(); print(netns_cookie(s.fileno()))"
)


def test_helper_makes_sockets_in_rootless_stack(nobody: Nobody) -> None:
    name = unique()
    nobody.ok("add", name)  # loopback only: no /dev/net/tun needed
    st = nobody.info(name)
    assert st["type"] == "loopback" and st["live"]
    res = nobody.run(PY, "-c", _HELPER_PROBE, name)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    inside = _in_stack(nobody, st["holder_pid"], PY, "-c", _COOKIE)
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
