"""Shared fixtures: uniquely named namespaces that are always removed, the probe, mstack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
HELPERS = HERE / "helpers"
BIN = HERE / "bin"
PROBE = str(HELPERS / "probe.py")
PYTHON = sys.executable
MSTACK = shutil.which("mstack", path="/usr/local/bin") or "mstack"
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (CAP_SYS_ADMIN for namespaces and seccomp)")


def run(args: list[str], timeout: float = 30, check: bool = False,
        **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check,
                          **kw)  # type: ignore[call-overload]


def mstack(*args: str, timeout: float = 30, **kw: object) -> subprocess.CompletedProcess[str]:
    return run([MSTACK, *args], timeout=timeout, **kw)


def probe(*mstack_args: str, command: tuple[str, ...], **kw: object) -> object:
    """Run the probe under ``mstack *mstack_args`` and return its JSON report."""
    cp = mstack(*mstack_args, PYTHON, PROBE, *command, **kw)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout.splitlines()[-1])


def cookie_of_netns(name: str | None) -> int:
    """A namespace's cookie, from a socket made inside it (``None``: this process's)."""
    prefix = ["ip", "netns", "exec", name] if name else []
    code = ("import socket,struct;s=socket.socket(socket.AF_UNIX);"
            "print(struct.unpack('=Q',s.getsockopt(1,71,8))[0])")
    return int(run([*prefix, PYTHON, "-c", code], check=True).stdout)


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        self.cookie = cookie_of_netns(name)

    def exec(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.name, *args], **kw)  # type: ignore[arg-type]


def _remove_netns(name: str) -> None:
    pids = run(["ip", "netns", "pids", name]).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    run(["ip", "netns", "del", name])


@pytest.fixture
def make_netns() -> Iterator[object]:
    """Factory of fresh namespaces (loopback up, interfaces ``mstk0``/``mstk1``)."""
    made: list[str] = []

    def make() -> Netns:
        name = f"mstk-{uuid.uuid4().hex[:8]}"
        run(["ip", "netns", "add", name], check=True)
        made.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        # no dummy driver on these kernels: a veth pair with both ends inside
        run(["ip", "-n", name, "link", "add", "mstk0", "type", "veth", "peer", "name", "mstk1"],
            check=True)
        return Netns(name)

    yield make
    for name in made:
        _remove_netns(name)


@pytest.fixture
def netns(make_netns: object) -> Netns:
    return make_netns()  # type: ignore[operator, no-any-return]


@pytest.fixture(scope="session")
def host_cookie() -> int:
    return cookie_of_netns(None)


@pytest.fixture(scope="session")
def vectors() -> str:
    """The C program that tries every path to a socket."""
    BIN.mkdir(exist_ok=True)
    out = BIN / "vectors"
    run(["cc", "-O2", "-Wall", "-o", str(out), str(HELPERS / "vectors.c")], check=True)
    return str(out)


def supervisors() -> set[int]:
    """Pids of running mstack supervisors (their comm is ``mstack-sv``)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "mstack-sv":
                    found.add(int(entry))
            except OSError:
                pass
    return found


def report(cp: subprocess.CompletedProcess[str]) -> object:
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout.splitlines()[-1])
