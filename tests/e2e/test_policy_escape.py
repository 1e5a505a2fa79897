"""The escape suite (issue 4): every known bypass, run inside the target of each example policy.

For each policy in ``policy/`` (``ip-only-through-build.toml`` with its ``build`` stack
replaced by a namespace the test makes) every bypass is tried *inside* the target, and the
facts it reports (SO_NETNS_COOKIE of each socket it got, or the errno) must show that **no
socket of a locked family exists anywhere but in that family's stack**; for a null family
the call fails. The other side of each escape is a namespace the test made (``other``) with
a process outside every policy in it (the holder), holding an AF_INET and an AF_PACKET
socket and listening on an AF_UNIX socket. No traffic is sent: making sockets is enough.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    HELPERS,
    MSTACK,
    PYTHON,
    Netns,
    build_c,
    mstack,
    needs_root,
    run,
    stop_process,
    supervisors,
)

pytestmark = needs_root

ESCAPE_PROBE = str(HELPERS / "escape_probe.py")
POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"
KINDS = ("unix", "inet", "inet6", "netlink", "packet", "sock_packet", "sock_packet_flags")
#: (family, type, protocol) per kind, as the C helper takes them
KIND_ARGS = {"unix": (1, 1, 0), "inet": (2, 1, 0), "inet6": (10, 1, 0), "netlink": (16, 3, 0),
             "packet": (17, 2, 0), "sock_packet": (2, 10, 768),
             "sock_packet_flags": (2, 10 | 0o4000 | 0o2000000, 768)}  # NONBLOCK|CLOEXEC
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
NOBODY_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/"}


@dataclass(frozen=True)
class Case:
    """An example policy as run here, and where each kind of socket may live under it."""

    name: str
    file: str
    #: kind → the cookie of its stack, or None: the call must fail (kinds not listed are
    #: unlocked under this policy, and may live anywhere)
    where: dict[str, int | None]
    lock_native: bool  # a locked family is native: new namespaces are refused

    def check(self, facts: object, context: str) -> None:
        """Every socket of a locked kind in ``facts`` (kind → fact) lives in its stack."""
        assert isinstance(facts, dict), f"{context}: {facts!r}"
        for kind, expected in self.where.items():
            if kind not in facts:
                continue
            got = facts[kind]
            assert isinstance(got, dict) and ("errno" in got or "cookie" in got), (
                f"{context} {kind}: {got!r}")
            if expected is None:
                assert "errno" in got, f"{self.name}: {context}: {kind} socket made: {got}"
            else:
                assert "errno" in got or got["cookie"] == expected, (
                    f"{self.name}: {context}: {kind} socket outside its stack: {got}, "
                    f"stack cookie {expected}")


@dataclass(frozen=True)
class Outside:
    """The namespace ``ns`` and a process in it outside every policy (the holder)."""

    ns: Netns
    pid: int
    inet_fd: int
    packet_fd: int
    buf: int
    sock_path: str
    proc: subprocess.Popen[str]

    def finish(self) -> dict[str, object]:
        """Let the holder print its buffer and exit; its report."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        self.proc.wait(timeout=10)
        result = json.loads(line)
        assert isinstance(result, dict)
        return result


def lines(cp: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """Every JSON object the target printed, in order."""
    return [json.loads(line) for line in cp.stdout.splitlines() if line.startswith("{")]


def under(case: Case, *command: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return mstack("--policy", case.file, *command, **kw)  # type: ignore[arg-type]


def probe(case: Case, *args: str, **kw: object) -> dict[str, Any]:
    cp = under(case, PYTHON, ESCAPE_PROBE, *args, **kw)
    assert cp.returncode == 0, cp.stderr
    out = lines(cp)
    assert out, cp.stdout + cp.stderr
    return out[-1]


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def escape_bin() -> str:
    return build_c("escape")


@pytest.fixture
def workdir(shared_dir: Path) -> Path:
    """A temporary directory anyone can read (also the ``nobody`` target)."""
    return shared_dir


@pytest.fixture(params=["lockdown", "ip-only-through-build", "no-raw-packet"])
def case(request: pytest.FixtureRequest, make_netns: object, host_cookie: int,
         workdir: Path) -> Case:
    name = request.param
    source = POLICY_DIR / f"{name}.toml"
    if name == "lockdown":
        where: dict[str, int | None] = {k: None for k in KINDS}
        where["unix"] = host_cookie
        return Case(name, str(source), where, lock_native=True)
    if name == "no-raw-packet":
        return Case(name, str(source), {"packet": None, "sock_packet": None,
                                         "sock_packet_flags": None}, lock_native=False)
    build = make_netns()  # type: ignore[operator]
    text = source.read_text()
    assert 'build = "build"' in text
    copy = workdir / f"{name}.toml"
    copy.write_text(text.replace('build = "build"', f'build = "{build.path}"'))
    copy.chmod(0o644)
    where = {k: build.cookie for k in KINDS}
    where["unix"] = host_cookie
    return Case(name, str(copy), where, lock_native=True)


@pytest.fixture
def outside(make_netns: object, workdir: Path) -> Iterator[Outside]:
    ns = make_netns()  # type: ignore[operator]
    sock_path = str(workdir / "holder.sock")
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, PYTHON, ESCAPE_PROBE, "hold",
                             sock_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        facts = json.loads(proc.stdout.readline())
        yield Outside(ns, facts["pid"], facts["inet"], facts["packet"], facts["buf"], sock_path,
                      proc)
    finally:
        stop_process(proc)


# --- every ABI, io_uring, SOCK_PACKET -----------------------------------------------------


def test_every_abi_and_io_uring(case: Case, escape_bin: str, vectors: str) -> None:
    """x86_64, high-32-bit family, i386 socket and socketcall for every kind (SOCK_PACKET
    included); x32 and io_uring_setup from the vectors program."""
    script = "; ".join([f"{vectors} 2", f"{vectors} 17"] + [
        f"{escape_bin} sock {' '.join(map(str, KIND_ARGS[k]))}" for k in KINDS])
    cp = under(case, "/bin/sh", "-c", script)
    assert cp.returncode == 0, cp.stderr
    out = lines(cp)
    assert len(out) == 2 + len(KINDS), cp.stdout
    for vec in out[:2]:
        assert "errno" in vec["x32"], vec  # no x32 ABI: never a socket
        assert vec["io_uring_setup"] == {"ret": -1, "errno": "ENOSYS"}
        assert vec["i386_io_uring_setup"] == {"ret": -1, "errno": "ENOSYS"}
    for kind, by_abi in zip(KINDS, out[2:], strict=True):
        for abi, fact in by_abi.items():
            case.check({kind: fact}, f"{abi} socket")
    for kind, expected in case.where.items():  # the control: the plain call does its job
        if expected is not None:
            assert out[2 + KINDS.index(kind)]["x86_64"] == {"cookie": expected}, out


# --- msocket and SOCK_DEFAULT -------------------------------------------------------------


@pytest.fixture
def ns_paths(outside: Outside, workdir: Path) -> Iterator[list[str]]:
    """Every kind of msocket path to the other namespace and to the host's."""
    mount = workdir / "bound-ns"
    mount.touch()
    run(["mount", "--bind", outside.ns.path, str(mount)], check=True)
    try:
        yield ["-", "native", "/dev/net/native", "null", outside.ns.path, outside.ns.name,
               f"../netns/{outside.ns.name}", f"./{outside.ns.name}", "/proc/1/ns/net",
               "/proc/self/ns/net", "/proc/thread-self/ns/net", f"/proc/{outside.pid}/ns/net",
               str(mount), f"fd:{outside.ns.path}", "fd:/proc/self/ns/net"]
    finally:
        run(["umount", "-l", str(mount)])


def test_msocket_with_every_path(case: Case, ns_paths: list[str]) -> None:
    """msocket(path, family, type, proto) for NULL, native, another namespace by path, name,
    relative path, /proc/PID/ns/net, /proc/self, a bind mount, /proc/self/fd/N..."""
    out = probe(case, "msocket", *ns_paths, cwd="/run/netns")
    assert set(out) == set(ns_paths)
    for path, facts in out.items():
        case.check(facts, f"msocket({path!r})")
        if case.name == "lockdown":  # no supervisor: the filter refuses msocket itself
            assert all(f == {"errno": "EPERM"} for f in facts.values()), facts


def test_sock_default_with_every_path(case: Case, ns_paths: list[str]) -> None:
    """msocket(path, family, SOCK_DEFAULT) for every path and family: a locked family's
    default never moves, so the plain sockets made afterwards are still in their stacks."""
    out = probe(case, "sockdefault", *ns_paths, cwd="/run/netns")
    case.check(out["after"], "socket() after every SOCK_DEFAULT")
    locked = [k for k in ("unspec", "unix", "inet", "inet6", "netlink", "packet")
              if k == "unspec" or k in case.where]
    for path, results in out["set"].items():
        for kind in locked:
            assert results[kind] != "ok", f"SOCK_DEFAULT({path!r}, {kind}) accepted"


# --- nested mstack ------------------------------------------------------------------------


def permissive_policy(workdir: Path, other: Netns) -> str:
    path = workdir / "permissive.toml"
    path.write_text(f'[stacks]\nother = "{other.path}"\n\n[families]\nip = "other"\n'
                    f'all = "native"\n\n[msocket]\nallow = ["other"]\n')
    path.chmod(0o644)
    return str(path)


@pytest.mark.parametrize("inner", ["all-native", "ip-other", "packet-native", "policy",
                                   "policy-shadowed", "ipv4-native"])
def test_nested_mstack(case: Case, outside: Outside, workdir: Path, inner: str) -> None:
    """A nested mstack, with or without a more permissive policy of its own, and once after
    the target shadowed msocket with a filter of its own (ENOSYS: "no mstack above")."""
    permissive = permissive_policy(workdir, outside.ns)
    nested = {
        "all-native": ["native"],
        "ip-other": ["-o", "ip", outside.ns.path],
        "packet-native": ["-o", "packet", "native"],
        "policy": ["--policy", permissive],
        "policy-shadowed": ["--policy", permissive],
        "ipv4-native": ["-o", "ipv4", "native"],
    }[inner]
    shadow = [PYTHON, ESCAPE_PROBE, "shadow"] if inner == "policy-shadowed" else []
    cp = under(case, *shadow, MSTACK, *nested, PYTHON, ESCAPE_PROBE, "plain")
    out = lines(cp)
    if cp.returncode == 0:
        assert out, cp.stderr
        case.check(out[-1], f"under nested mstack {' '.join(nested)}")
    else:
        assert cp.returncode == 125, cp.stderr
        assert not out, f"the command ran: {cp.stdout}"
    if case.name != "no-raw-packet" or inner != "ipv4-native":  # ipv4 is not locked there
        assert cp.returncode == 125, cp.stdout + cp.stderr
    if cp.returncode == 125 and not shadow:
        assert "lock" in cp.stderr or "refused" in cp.stderr, cp.stderr


# --- other network namespaces -------------------------------------------------------------


@pytest.mark.parametrize("tool", ["unshare -n", "unshare -Urn", "nsenter", "ip netns exec"])
def test_new_namespace_tools(case: Case, outside: Outside, tool: str) -> None:
    """The root target enters a new or another network namespace with the usual tools."""
    prefix = {"unshare -n": ["unshare", "-n"], "unshare -Urn": ["unshare", "-Urn"],
              "nsenter": ["nsenter", "-n", "-t", str(outside.pid)],
              "ip netns exec": ["ip", "netns", "exec", outside.ns.name]}[tool]
    cp = under(case, *prefix, PYTHON, ESCAPE_PROBE, "plain")
    out = lines(cp)
    if case.lock_native:
        assert cp.returncode != 0 and not out, cp.stdout
        # ip netns exec may fail earlier, at its netlink socket (null under lockdown)
        assert ("Operation not permitted" in cp.stderr
                or "Address family not supported" in cp.stderr), cp.stderr
    else:
        assert cp.returncode == 0, cp.stderr
        case.check(out[-1], f"after {tool}")


def test_setns_unshare_clone_syscalls(case: Case, outside: Outside, escape_bin: str) -> None:
    """setns by file and by pidfd (nstype CLONE_NEWNET, 0, NEWUSER|NEWNET), unshare,
    clone(CLONE_NEWNET) and clone3(CLONE_NEWNET); any child that got a new namespace makes
    sockets of every kind there."""
    script = "; ".join([
        f"{PYTHON} {ESCAPE_PROBE} setns {outside.ns.path} {outside.pid}",
        f"{PYTHON} {ESCAPE_PROBE} unshare",
        *(f"{escape_bin} clone {' '.join(map(str, KIND_ARGS[k]))}" for k in case.where)])
    cp = under(case, "/bin/sh", "-c", script)
    assert cp.returncode == 0, cp.stderr
    setns, unshare, *clones = lines(cp)
    for what, fact in {**setns, **unshare}.items():
        if "ok" in fact:
            case.check(fact["sockets"], f"after {what}")
        if case.lock_native:
            assert fact == {"errno": "EPERM"}, (what, fact)
    for kind, fact in zip(case.where, clones, strict=True):
        for call in ("clone", "clone3"):
            if fact[call]["child"] is not None:
                case.check({kind: fact[call]["child"]}, f"child of {call}(CLONE_NEWNET)")
        if case.lock_native:
            assert fact["clone"]["errno"] == "EPERM", fact
            assert fact["clone3"]["errno"] == "ENOSYS", fact


# --- other processes ----------------------------------------------------------------------


def _supervisor_item() -> list[str]:
    """``sv:PID:FD`` for a live supervisor and one of its descriptors, if one runs."""
    for pid in sorted(supervisors()):
        with contextlib.suppress(OSError):
            fds = sorted(int(f) for f in os.listdir(f"/proc/{pid}/fd") if int(f) > 2)
            if fds:
                return [f"sv:{pid}:{fds[0]}"]
    return []


def test_pidfd_getfd_ptrace_process_vm_writev(case: Case, outside: Outside) -> None:
    """The root target can reach any process: the holder outside the policy (its AF_INET and
    AF_PACKET sockets), the policy's supervisor, and a child of its own. pidfd_getfd, ptrace
    (ATTACH, SEIZE) and process_vm_writev are all refused."""
    items = [f"holder_inet:{outside.pid}:{outside.inet_fd}",
             f"holder_packet:{outside.pid}:{outside.packet_fd}"]
    with_sv = case.name != "lockdown"
    cmd = [PYTHON, ESCAPE_PROBE, "reach", *items]
    if with_sv:  # the target's own supervisor is found from inside, while it serves
        script = ("sv=$(for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = mstack-sv ]"
                  " && echo ${p#/proc/} && break; done); "
                  f"exec {' '.join(cmd)} \"sv:$sv:3\"")
        cp = under(case, "/bin/sh", "-c", script)
    else:
        cp = under(case, *cmd, *_supervisor_item())
    assert cp.returncode == 0, cp.stderr
    out = lines(cp)[-1]
    assert "child" in out and "holder_inet" in out and (not with_sv or "sv" in out), out
    for who, facts in out.items():
        got = facts["pidfd_getfd"]
        assert got.get("errno") == "EPERM", (who, got)
        for call in ("ptrace_attach", "ptrace_seize", "process_vm_writev"):
            assert facts[call] == "EPERM", (who, call, facts)


def test_traceme_child_gives_its_tracer_nothing(case: Case) -> None:
    """A child may PTRACE_TRACEME and exec (so that we are its tracer), but the tracer under
    the policy gets EPERM for every request: it cannot steer the child's calls."""
    out = probe(case, "traceme", PYTHON, ESCAPE_PROBE, "plain")
    assert out == {"stopped": True, "peekuser": "EPERM", "setoptions": "EPERM",
                   "cont": "EPERM"}


def test_a_second_seccomp_listener_is_refused(case: Case) -> None:
    """A NEW_LISTENER filter of the target's own would win over the policy's ALLOW verdicts."""
    assert probe(case, "seccomp") == {"ret": -1, "errno": "EPERM"}


# --- documented limits: what the kernel offers no way to close -----------------------------


def test_socket_passed_in_over_af_unix_from_outside_is_received(case: Case,
                                                                outside: Outside) -> None:
    """DOCUMENTED LIMIT (README threat model), allowed to succeed: a process outside the
    policy may hand the target any socket over AF_UNIX (SCM_RIGHTS); the socket lives in the
    outsider's namespace. No seccomp filter sees a descriptor arrive with recvmsg(2), and
    AF_UNIX cannot be refused without breaking local IPC. This test pins the behaviour so
    that the README stays true."""
    out = probe(case, "scm", outside.sock_path)
    assert out == {"received": [{"cookie": outside.ns.cookie, "family": 2},
                                {"cookie": outside.ns.cookie, "family": 17}]}


def test_root_target_writes_another_process_memory_through_proc(case: Case,
                                                                outside: Outside) -> None:
    """DOCUMENTED LIMIT (README threat model), allowed to succeed: a root target (it has
    CAP_SYS_PTRACE) can write the memory of any process through /proc/PID/mem, also of
    processes outside the policy (here the holder; the supervisor too). The path is in
    memory, out of a filter's reach; only dropping CAP_SYS_PTRACE (or running the command as
    another user) closes it."""
    out = probe(case, "memwrite", str(outside.pid), str(outside.buf), "mstack")
    assert out == {"written": 6}
    assert outside.finish() == {"buf": "mstackhed"}


def test_unprivileged_target_cannot_reach_its_supervisor(workdir: Path) -> None:
    """As ``nobody`` under no-raw-packet (a supervised policy), the target finds its own
    supervisor (same uid, comm ``mstack-sv``) and opens its /proc/PID/mem for writing. The
    ptrace family of calls is refused by the filter, but /proc/PID/mem takes a path: only the
    supervisor itself can shut this door."""
    policy = workdir / "policy.toml"
    shutil.copy(POLICY_DIR / "no-raw-packet.toml", policy)
    policy.chmod(0o644)
    escape_probe = workdir / "escape_probe.py"  # nobody may not read a clone in a 0700 dir
    shutil.copy(ESCAPE_PROBE, escape_probe)
    escape_probe.chmod(0o644)
    token = f"svmem-{uuid.uuid4().hex}"
    cp = run([*NOBODY, "env", "-i", *(f"{k}={v}" for k, v in NOBODY_ENV.items()), MSTACK,
              "--policy", str(policy), PYTHON, str(escape_probe), "svmem", token],
             cwd=str(workdir))
    out = lines(cp)
    assert cp.returncode == 0 and out, cp.stderr
    assert out[-1]["found"], out
    assert out[-1]["mem"] in ("EACCES", "EPERM"), out
