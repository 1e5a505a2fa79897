"""What every test directory shares: fixtures for uniquely named namespaces that are always
removed, and the plain helpers the test modules import — one way to run a program (``run``,
``mstack``, ``probe``), one namespace-cookie reader (``cookie``, and ``COOKIE_SOURCE`` for
programs run inside a target), one ``cpus_allowed``, and the supervisor finders.

Fixtures of one directory only live in that directory's ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
HELPERS = HERE / "helpers"
BIN = HERE / "bin"
PROBE = str(HELPERS / "probe.py")
PYTHON = sys.executable
#: where ``make install`` put mstack: ``make test`` passes its PREFIX and BINDIR on, so that
#: a second install (another PREFIX) can be tested beside the default one
PREFIX = os.environ.get("MSTACK_PREFIX", "/opt/mstack")
BINDIR = os.environ.get("MSTACK_BINDIR", "/usr/local/bin")
#: the installed interpreter: what a target run as another user executes
VENV_PYTHON = f"{PREFIX}/bin/python"
MSTACK = shutil.which("mstack", path=BINDIR) or "mstack"
MSTACK_STACK = shutil.which("mstack-stack", path=BINDIR) or "mstack-stack"
#: PATH for programs run as another user: the install first, no user-writable directory
USER_PATH = f"{BINDIR}:/usr/bin:/bin"
SAFE_PATH = f"{USER_PATH}:/usr/sbin:/sbin"
NOBODY = 65534
#: prefix that runs a command as ``nobody`` with no supplementary groups
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")

#: a JSON report a probe printed: the tests index it freely, a wrong shape fails there
Report = Any

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


def _pidfd_info_missing() -> str | None:
    """Why this kernel cannot describe a thread through its pidfd (None: it can)."""
    import errno
    import threading

    from mstack_bpf.linux import pidfd as _pidfd

    try:
        fd = _pidfd.open_thread(threading.get_native_id())
    except OSError as e:
        return f"the kernel has no PIDFD_THREAD (Linux 6.9): pidfd_open: {e.strerror}"
    try:
        _pidfd.task_ids(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTTY, errno.ENOSYS):
            raise
        return f"the kernel has no PIDFD_GET_INFO (Linux 6.13): {e.strerror}"
    finally:
        os.close(fd)
    return None


PIDFD_INFO_MISSING = _pidfd_info_missing()
needs_pidfd_info = pytest.mark.skipif(PIDFD_INFO_MISSING is not None,
                                      reason=str(PIDFD_INFO_MISSING))


# --- running programs ---------------------------------------------------------------------


def run(args: Sequence[str], *, timeout: float = 30, check: bool = False,
        cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``args`` to its end, stdout and stderr captured as text."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=check, cwd=cwd, env=env, pass_fds=pass_fds)


def mstack(*args: str, timeout: float = 30, cwd: str | Path | None = None,
           env: Mapping[str, str] | None = None,
           pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[str]:
    """``mstack ARGS...`` (the installed one), run to its end."""
    return run([MSTACK, *args], timeout=timeout, cwd=cwd, env=env, pass_fds=pass_fds)


def report(cp: subprocess.CompletedProcess[str]) -> Report:
    """The JSON report on the last line of a program that succeeded."""
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout.splitlines()[-1])


def probe(*mstack_args: str, command: tuple[str, ...]) -> Report:
    """Run the probe under ``mstack *mstack_args`` and return its JSON report."""
    return report(mstack(*mstack_args, PYTHON, PROBE, *command))


def readable_copy(source: str | Path, directory: Path) -> str:
    """A copy of ``source`` that anyone may read, in ``directory`` (a target run as another
    user cannot read this checkout where it sits in a 0700 directory)."""
    copy = directory / Path(source).name
    shutil.copy(source, copy)
    copy.chmod(0o644)
    return str(copy)


# --- facts: the namespace a socket lives in, the CPUs a task may use ----------------------


def cookie(sock: socket.socket) -> int:
    """The cookie of the network namespace ``sock`` lives in (SO_NETNS_COOKIE, socket(7))."""
    value: int = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, 71, 8))[0]
    return value  # 71: SO_NETNS_COOKIE (asm-generic/socket.h), unnamed in Python's socket


#: ``cookie`` as source, for the programs run inside a target: they cannot import this
#: module (they run as another user, from a copy, or under another interpreter)
COOKIE_SOURCE = f"import socket, struct\n\n\n{inspect.getsource(cookie)}"


def cookie_code(family: str = "AF_INET", kind: str = "SOCK_STREAM") -> str:
    """A program for ``python -c``: prints the cookie of a new ``socket.FAMILY`` socket."""
    return f"{COOKIE_SOURCE}\nprint(cookie(socket.socket(socket.{family}, socket.{kind})))\n"


def cookie_of_netns(name: str | None) -> int:
    """A namespace's cookie, from a socket made inside it (``None``: this process's)."""
    if name is None:
        with socket.socket(socket.AF_UNIX) as sock:
            return cookie(sock)
    return int(run(["ip", "netns", "exec", name, PYTHON, "-c", cookie_code("AF_UNIX")],
                   check=True).stdout)


def cpus_allowed(pid: int) -> list[int]:
    """The CPUs task ``pid`` may run on (sched_getaffinity(2); a thread id works too)."""
    return sorted(os.sched_getaffinity(pid))


# --- namespaces ---------------------------------------------------------------------------


class Netns:
    """A network namespace a test made (``ip netns add``) and the cookie it has."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        self.cookie = cookie_of_netns(name)

    def exec(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """``ARGS...`` run inside the namespace."""
        return run(["ip", "netns", "exec", self.name, *args], check=check)


#: the ``make_netns`` fixture: each call makes one more namespace
MakeNetns = Callable[[], Netns]


def _remove_netns(name: str) -> None:
    pids = run(["ip", "netns", "pids", name]).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    run(["ip", "netns", "del", name])


@pytest.fixture
def make_netns() -> Iterator[MakeNetns]:
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
def netns(make_netns: MakeNetns) -> Netns:
    return make_netns()


@pytest.fixture(scope="session")
def host_cookie() -> int:
    """The cookie of the namespace the tests run in (the host's)."""
    return cookie_of_netns(None)


# --- programs in C and their files -------------------------------------------------------


def build_c(name: str, *flags: str) -> str:
    """Compile tests/helpers/NAME.c into tests/bin/NAME (once a session) and return it."""
    BIN.mkdir(exist_ok=True)
    out = BIN / name
    if name not in _BUILT:
        run(["cc", "-O2", "-Wall", *flags, "-I", str(HERE.parent / "include"), "-o", str(out),
             str(HELPERS / f"{name}.c")], check=True)
        _BUILT.add(name)
    return str(out)


_BUILT: set[str] = set()


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


# --- supervisors and processes -------------------------------------------------------------


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


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               step: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
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


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


# --- cgroups (v2) ----------------------------------------------------------------------------


def write_to(path: str, value: str) -> None:
    """Write ``value`` to the (cgroup, proc) file ``path``."""
    with open(path, "w") as f:
        f.write(value)


def cgroup_members(path: str) -> list[int]:
    """The pids in the cgroup at ``path``."""
    with open(f"{path}/cgroup.procs") as f:
        return [int(pid) for pid in f.read().split()]


@contextlib.contextmanager
def new_cgroup(prefix: str) -> Iterator[str]:
    """A cgroup v2 of its own under the hierarchy's root (its path); after, thawed, what is
    left in it killed, and removed. Skips where that hierarchy is not mounted."""
    from mstack_bpf.linux import cgroup

    found = cgroup.v2_mount()
    if found is None or found[1] != "/":
        pytest.skip("needs the cgroup v2 hierarchy mounted (its root)")
    path = f"{found[0]}/{prefix}{uuid.uuid4().hex[:8]}"
    os.mkdir(path)
    try:
        yield path
    finally:
        write_to(f"{path}/cgroup.freeze", "0")
        kill_all(cgroup_members(path))
        assert wait_until(lambda: not cgroup_members(path), timeout=10)
        os.rmdir(path)


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

    def next(self) -> Report:
        """The report of the step the probe is waiting after."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"probe ended early (status {self.proc.poll()})"
        return json.loads(line)

    def go(self) -> Report:
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
