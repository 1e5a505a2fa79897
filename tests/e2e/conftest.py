"""Fixtures of the end-to-end tests, and the helpers for running things as ``nobody``
with stacks of its own (rootless ``mstack-stack``)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BINDIR, HELPERS, USER_PATH, VENV_PYTHON, build_c, run, wait_until

ROOT = Path(__file__).resolve().parents[2]
#: as ``nobody`` by name, as a user would type it (AS_NOBODY in tests/conftest.py by number)
SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture(scope="session")
def vectors() -> str:
    """The C program that tries every path to a socket."""
    return build_c("vectors")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def host_http() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 (what user-net aliases reach); yields its port."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


# --- root stacks: mstack-stack from this checkout ------------------------------------------

CLI = [sys.executable, "-m", "mstack_bpf.cli.stack"]


def stack_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``mstack-stack ARGS...`` from this checkout; ``env`` adds to ours."""
    return run([*CLI, *args], env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def ok(*args: str) -> str:
    res = stack_cli(*args)
    assert res.returncode == 0, res.stderr
    return res.stdout


def info(name: str) -> dict[str, Any]:
    for entry in json.loads(ok("list", "--json")):
        if entry["name"] == name:
            return dict(entry)
    raise AssertionError(f"{name} not listed")


def netns_exec(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return run(["ip", "netns", "exec", name, *argv], timeout=15)


@pytest.fixture
def new_name() -> Iterator[Callable[[], str]]:
    """Unique stack names; every one is deleted afterwards, whatever happened."""
    made: list[str] = []

    def make() -> str:
        name = f"tst{os.getpid() % 10000}{random.randrange(16**4):04x}"
        made.append(name)
        return name

    yield make
    for name in made:
        stack_cli("del", "--force", name)
        if os.path.lexists(f"/run/netns/{name}"):  # e.g. an external one a test made
            run(["ip", "netns", "del", name])


# --- nobody and its rootless stacks ----------------------------------------------------------


class Nobody:
    """Runs commands as nobody with a private XDG_RUNTIME_DIR under a temp dir."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.xdg = home / "xdg"
        self.env = {
            "PATH": USER_PATH,
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(self.xdg),
            "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run([*SETPRIV, "env", "-i", *(f"{k}={v}" for k, v in self.env.items()), *argv],
                   timeout=timeout, cwd=self.home)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(VENV_PYTHON, "-m", "mstack_bpf.cli.stack", *args)

    def ok(self, *args: str) -> str:
        res = self.cli(*args)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def info(self, name: str) -> dict[str, Any]:
        for entry in json.loads(self.ok("list", "--json")):
            if entry["name"] == name:
                return dict(entry)
        raise AssertionError(f"{name} not listed")


def unique() -> str:
    """A fresh name for a rootless stack."""
    return f"rl{os.getpid() % 10000}{random.randrange(16**4):04x}"


def in_stack(user: Nobody, holder: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run by ``user`` inside the rootless stack that ``holder`` keeps."""
    return user.run("nsenter", "--preserve-credentials", "-U", "-n", "-t", str(holder), *argv)


@pytest.fixture
def nobody() -> Iterator[Nobody]:
    """nobody, with a home anyone may enter; every stack it made is deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    if not os.path.exists(VENV_PYTHON):
        pytest.skip(f"{VENV_PYTHON} missing (make install)")
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
            user.cli("del", "--force", entry.name)
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
    """/dev/net/tun usable by nobody (0666) for the test; its mode restored afterwards."""
    st = os.stat("/dev/net/tun")
    mode = st.st_mode & 0o7777
    if mode & 0o006 != 0o006:
        os.chmod("/dev/net/tun", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/net/tun", mode)


# --- mstack-agent ------------------------------------------------------------------------

AGENT = shutil.which("mstack-agent", path=BINDIR) or "mstack-agent"


class Agent:
    """``mstack-agent serve`` on a socket of its own, and the profile that names it."""

    def __init__(self, base: Path, config: str = "") -> None:
        self.socket = base / f"agent-{uuid.uuid4().hex[:8]}.sock"
        self.config = self.socket.with_suffix(".toml")
        self.config.write_text(config)
        self.log = self.socket.with_suffix(".log")
        self.profile = self.socket.with_suffix(".json")
        self.profile.write_text(run([AGENT, "profile", "--socket", str(self.socket)],
                                    check=True).stdout)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([AGENT, "serve", "-v", "--socket", str(self.socket),
                                          "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        assert wait_until(self.socket.exists), self.text()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@contextlib.contextmanager
def agents(base: Path) -> Iterator[Callable[..., Agent]]:
    """A factory of agents in ``base`` (started unless ``start=False``), all killed after."""
    made: list[Agent] = []

    def make(config: str = "", start: bool = True) -> Agent:
        agent = Agent(base, config)
        made.append(agent)
        return agent.start() if start else agent
    try:
        yield make
    finally:
        for agent in made:
            agent.kill()


#: busybox applets the containers' shell scripts use
APPLETS = ("sh", "sleep", "cat", "touch", "test", "[", "echo", "mkdir", "nc")


def probe_rootfs(root: Path) -> None:
    """A container image's files: busybox-static with its applets, and the probe
    (tests/helpers/escape.c) compiled static."""
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "ctl").mkdir()
    for lib in ("lib", "lib64"):  # for the host's /usr, mounted in to run a nested mstack
        (root / lib).symlink_to(f"usr/{lib}")
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    run(["cc", "-O2", "-static", "-I", str(HELPERS), "-o", str(root / "bin" / "escape"),
         str(HELPERS / "escape.c")], check=True)
