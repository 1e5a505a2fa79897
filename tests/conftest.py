"""Shared fixtures: uniquely named namespaces that are always removed, the probe, mstack."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
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


def _ebpf_missing() -> str | None:
    if os.geteuid() != 0:
        return "eBPF tracing needs root (kernel.unprivileged_bpf_disabled)"
    from mstack_bpf.trace.tracer import unavailable_reason

    reason = unavailable_reason(load=False)
    return f"eBPF tracing unavailable: {reason}" if reason else None


_EBPF_MISSING = _ebpf_missing()
needs_ebpf = pytest.mark.skipif(_EBPF_MISSING is not None, reason=str(_EBPF_MISSING))


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
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
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


@pytest.fixture
def netns_name(netns: Netns) -> str:
    """Just the name of a fresh namespace (loopback up; always removed)."""
    return netns.name


@pytest.fixture(scope="session")
def host_cookie() -> int:
    return cookie_of_netns(None)


def build_c(name: str) -> str:
    """Compile tests/helpers/NAME.c into tests/bin/NAME (once a session) and return it."""
    BIN.mkdir(exist_ok=True)
    out = BIN / name
    if name not in _BUILT:
        run(["cc", "-O2", "-Wall", "-I", str(HERE.parent / "include"), "-o", str(out),
             str(HELPERS / f"{name}.c")], check=True)
        _BUILT.add(name)
    return str(out)


_BUILT: set[str] = set()


@pytest.fixture(scope="session")
def vectors() -> str:
    """The C program that tries every path to a socket."""
    return build_c("vectors")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temporary directory anyone can read (unprivileged targets read files from it;
    /root and pytest's own temporary directories are closed to them)."""
    path = Path(tempfile.mkdtemp(prefix="mstack-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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


# --- helpers for process, credential and robustness tests ---------------------------------


def supervisors_of(marker: str) -> set[int]:
    """Live supervisors whose command line (mstack's own, as forked) contains ``marker``."""
    found = set()
    for pid in supervisors():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.add(pid)
    return found


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: its files are already closed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_until(predicate: object, timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds have passed."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        if predicate():  # type: ignore[operator]
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def fd_links(pid: int) -> dict[int, str]:
    """fd → what it points at (``readlink /proc/PID/fd/N``)."""
    out = {}
    for entry in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out[int(entry)] = os.readlink(f"/proc/{pid}/fd/{entry}")
    return out


def kill_all(pids: object) -> None:
    for pid in pids:  # type: ignore[attr-defined]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` (if alive), reap it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def stop_tree(proc: subprocess.Popen[str], marker: str) -> None:
    """Kill a target started under mstack (if alive), close its pipes, and make sure the
    supervisor tagged ``marker`` is gone too."""
    stop_process(proc)
    if not wait_until(lambda: not supervisors_of(marker), timeout=5):
        kill_all(supervisors_of(marker))


class Stepper:
    """A probe ``steps`` run under mstack: read one report per step, then let it go on."""

    def __init__(self, *mstack_args: str, steps: tuple[str, ...], python: str = PYTHON,
                 probe_path: str = PROBE, prefix: tuple[str, ...] = ()) -> None:
        self.marker = f"tag,{uuid.uuid4().hex}"
        self.proc = subprocess.Popen(
            [*prefix, MSTACK, *mstack_args, python, probe_path, "steps", self.marker, *steps],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.next()
        assert isinstance(first, dict) and "tag" in first, first

    def next(self) -> object:
        """The report of the step the probe is waiting after."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"probe ended early (status {self.proc.poll()})"
        return json.loads(line)

    def go(self) -> object:
        """Let the probe run its next step and return that step's report."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.next()

    def supervisors(self) -> set[int]:
        return supervisors_of(self.marker)

    def close(self) -> None:
        """Kill the target (if alive) and whatever supervisor served it."""
        stop_tree(self.proc, self.marker)

    def __enter__(self) -> Stepper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
